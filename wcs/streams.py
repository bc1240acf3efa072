"""The stream registry: live streams by name, their codec parameters, GOP cache and consumers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wcs.media.gop import MAX_GOP_BYTES, MAX_GOP_UNITS, Gop, GopCache
from wcs.media.units import MAX_PICTURE_PIXELS, MediaUnit, VideoParams

log = Logger(namespace="wcs.streams")

MAX_NAME_BYTES = 255

PROVIDER_RTMP = "Flash"
PROVIDER_RTSP = "RTSP"
PROVIDER_WEBRTC = "WebRTC"

# End reasons (WebSDK STREAM_STATUS_INFO texts). A publisher that stops sending media ends the
# way WCS ends it when its media activity check fires.
END_PUBLISHER_STOP = "Stopped by publisher stop"
END_SERVER = "Stopped by server"
END_IDLE = "Failed by RTP activity"


class StreamError(Exception):
    """Base of the errors the registry raises; `info` is the WebSDK STREAM_STATUS_INFO text."""

    info = "Stream error"


class NameInUse(StreamError):
    info = "Stream name is already in use"


class InvalidName(StreamError):
    info = "Invalid stream name"


class StreamNotFound(StreamError):
    info = "Stream not found"


def check_stream_name(name: str) -> str:
    """Return `name` if it is safe to use as a key and as a folder name, else raise InvalidName."""
    if not name:
        raise InvalidName("empty stream name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidName(f"stream name longer than {MAX_NAME_BYTES} bytes")
    if name in (".", ".."):
        raise InvalidName(f"stream name {name!r} is reserved")
    for ch in name:
        if ch in "/\\" or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise InvalidName(f"stream name contains forbidden character {ch!r}")
    return name


class StreamSink(Protocol):
    """A consumer of one stream's media (snapshot decoder, auto-snapshotter, player)."""

    def unit_received(self, stream: Stream, unit: MediaUnit) -> None: ...

    def stream_ended(self, stream: Stream) -> None: ...


class Stream:
    """One live publish of a name. A new publish of the same name is a new Stream object."""

    def __init__(
        self,
        name: str,
        provider: str,
        *,
        media_session_id: str | None = None,
        on_terminate: Callable[[], None] | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        max_picture_pixels: int = MAX_PICTURE_PIXELS,
        watch_idle: bool = True,
    ) -> None:
        self.name = name
        # Front-ends pass this to their SPS/frame-header parsers: larger pictures are refused.
        self.max_picture_pixels = max_picture_pixels
        # Whether the publish idle timeout applies (not to camera pulls, which reconnect).
        self.watch_idle = watch_idle
        self.provider = provider
        self.media_session_id = media_session_id or str(uuid.uuid4())
        self.created_ms = clock_ms()
        self.status = "PUBLISHING"
        self.video: VideoParams | None = None
        self.audio_codec: str | None = None
        self.has_video = False
        self.has_audio = False
        self._gops = GopCache()
        self.ended = False
        self.end_reason = ""
        self.video_units = 0
        self.audio_units = 0
        self.bytes_in = 0
        # Units (or sequence headers) a front-end dropped as malformed; see reject_unit.
        self.rejected_units = 0
        self._gop_overflow_logged = False
        self._video_refusal_logged = False
        self._sinks: list[StreamSink] = []
        # Why the current video parameters are refused (too large a picture), else None.
        self.video_refused: str | None = None
        self._on_terminate = on_terminate
        self._on_end: list[Callable[[Stream], object]] = []
        # Set by a front-end that can ask its publisher for a keyframe (WebRTC: RTCP PLI).
        self.keyframe_requester: Callable[[], None] | None = None
        # Extra fields of the REST stream object, filled by consumers (e.g. "autoSnapshot").
        self.json_extras: dict[str, Callable[[], object]] = {}
        self._final_extras: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"<Stream {self.name!r} {self.media_session_id} {self.provider}>"

    # -- the publishing side ------------------------------------------------------------------
    def set_video_params(self, params: VideoParams) -> None:
        """New decoder parameters (an H.264 sequence header); used from the next keyframe on.

        A picture larger than max_picture_pixels is refused, whatever the front-end checked:
        no GOP is cached (so nothing is decoded; snapshots answer as for a stream without
        video) until parameters within the limit arrive. Logged once per stream.
        """
        self.has_video = True
        self.video = params
        pixels = params.width * params.height
        if pixels <= self.max_picture_pixels:
            self.video_refused = None
            return
        self._gops.clear()
        self.video_refused = (
            f"{params.width}x{params.height} is over max_picture_pixels ({self.max_picture_pixels})"
        )
        if not self._video_refusal_logged:
            self._video_refusal_logged = True
            log.warn(
                "stream {stream_name}: video refused: {reason}; no snapshots of it",
                stream_name=self.name,
                reason=self.video_refused,
            )

    def set_audio_codec(self, codec: str) -> None:
        self.has_audio = True
        self.audio_codec = codec

    def reject_unit(self, reason: str) -> None:
        """A front-end dropped a malformed unit or sequence header of this stream and carries
        on: counted, and logged once per stream (a broken encoder repeats its fault)."""
        self.rejected_units += 1
        if self.rejected_units == 1:
            log.warn(
                "stream {stream_name}: dropping malformed media: {reason} "
                "(logged once per stream; counted in rejected units)",
                stream_name=self.name,
                reason=reason,
            )

    @property
    def gop(self) -> Gop | None:
        """Every video unit since the newest keyframe (None: nothing decodable cached)."""
        return self._gops.gop

    def clear_video(self) -> None:
        """Forget the cached GOP (the source dropped): no snapshot of a picture from before it."""
        self._gops.clear()

    def request_keyframe(self) -> bool:
        """Ask the publisher for a keyframe now; False when its protocol cannot (RTMP, RTSP)."""
        requester = self.keyframe_requester
        if requester is None or self.ended:
            return False
        requester()
        return True

    def push(self, unit: MediaUnit) -> None:
        """Hand one media unit to the stream: cache video for snapshots, then fan out to sinks."""
        if self.ended:
            return
        self.bytes_in += len(unit.data)
        if unit.kind == "video":
            self.video_units += 1
            self.has_video = True
            self._cache_video(unit)
        else:
            self.audio_units += 1
            self.has_audio = True
        for sink in list(self._sinks):
            sink.unit_received(self, unit)

    def _cache_video(self, unit: MediaUnit) -> None:
        params = self.video
        if params is None or params.codec != unit.codec:
            params = self.video = VideoParams(codec=unit.codec)
            self.video_refused = None
        if self.video_refused is not None:
            return
        if not self._gops.add(unit, params) and not self._gop_overflow_logged:
            self._gop_overflow_logged = True
            log.warn(
                "stream {stream_name}: GOP longer than {units} units / {size} bytes; "
                "snapshots wait for the next keyframe",
                stream_name=self.name,
                units=MAX_GOP_UNITS,
                size=MAX_GOP_BYTES,
            )

    def end(self, reason: str = END_PUBLISHER_STOP) -> None:
        """The publish is over: sinks are told once (and see the last GOP while told), then
        the cache is dropped and the registry forgets the name.

        Everything the stream holds of its front-end and consumers is dropped here, so an ended
        stream and its decoders are freed by reference counting alone (cycles through these
        callbacks kept codec contexts and frames alive until a full garbage collection).
        """
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.status = "UNPUBLISHED"
        self._on_terminate = None
        self.keyframe_requester = None
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.stream_ended(self)  # may still read the last GOP (to drain the decoder)
        self._gops.clear()
        callbacks, self._on_end = self._on_end, []
        for cb in callbacks:
            cb(self)
        # The REST object of an ended stream keeps its extra fields as they were at the end.
        extras, self.json_extras = self.json_extras, {}
        self._final_extras = {key: describe() for key, describe in extras.items()}

    def terminate(self, reason: str = END_SERVER) -> None:
        """Ask the publisher's front-end to disconnect (REST /stream/terminate, shutdown, the
        publish idle watchdog), and end the stream with `reason`."""
        on_terminate = self._on_terminate
        if on_terminate is not None and not self.ended:
            self.end_reason = reason  # the front-end logs why it closes its connection
            on_terminate()
        self.end(reason)

    @property
    def units_in(self) -> int:
        """Media units received so far, malformed ones included (the idle watchdog's measure)."""
        return self.video_units + self.audio_units + self.rejected_units

    # -- consumers ----------------------------------------------------------------------------
    def add_sink(self, sink: StreamSink) -> None:
        if not self.ended and sink not in self._sinks:
            self._sinks.append(sink)

    def remove_sink(self, sink: StreamSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def on_end(self, callback: Callable[[Stream], object]) -> None:
        if self.ended:
            callback(self)
        else:
            self._on_end.append(callback)

    def remove_on_end(self, callback: Callable[[Stream], object]) -> None:
        """Forget `callback` (a player that leaves before the stream ends: otherwise a
        long-lived stream keeps every past player alive through its callback)."""
        if callback in self._on_end:
            self._on_end.remove(callback)

    def to_json(self) -> dict[str, object]:
        """The stream object of the WCS REST API."""
        video = self.video
        return {
            "mediaSessionId": self.media_session_id,
            "name": self.name,
            "published": not self.ended,
            "hasVideo": self.has_video,
            "hasAudio": self.has_audio,
            "status": self.status,
            "videoCodec": video.codec if video else None,
            "audioCodec": self.audio_codec,
            "width": video.width if video else 0,
            "height": video.height if video else 0,
            "createDate": self.created_ms,
            "mediaProvider": self.provider,
            "record": False,
            **self._final_extras,
            **{key: describe() for key, describe in self.json_extras.items()},
        }


class StreamRegistry:
    """Live streams by name. A name is held by one publisher at a time."""

    def __init__(
        self,
        clock_ms: Callable[[], int] | None = None,
        *,
        max_picture_pixels: int = MAX_PICTURE_PIXELS,
    ) -> None:
        self.max_picture_pixels = max_picture_pixels
        self._streams: dict[str, Stream] = {}
        self._observers: list[Callable[[Stream], None]] = []
        self._clock_ms = clock_ms

    def publish(
        self,
        name: str,
        provider: str,
        *,
        media_session_id: str | None = None,
        on_terminate: Callable[[], None] | None = None,
        watch_idle: bool = True,
    ) -> Stream:
        """Register a new live stream; raises InvalidName or NameInUse.

        `watch_idle=False` exempts it from the publish idle timeout (a camera pull reconnects).
        """
        check_stream_name(name)
        if name in self._streams:
            raise NameInUse(name)
        kwargs = {} if self._clock_ms is None else {"clock_ms": self._clock_ms}
        stream = Stream(
            name,
            provider,
            media_session_id=media_session_id,
            on_terminate=on_terminate,
            max_picture_pixels=self.max_picture_pixels,
            watch_idle=watch_idle,
            **kwargs,
        )
        self._streams[name] = stream
        stream.on_end(self._forget)
        log.info(
            "stream {stream_name} published ({provider}, mediaSessionId {msid})",
            stream_name=name,
            provider=provider,
            msid=stream.media_session_id,
        )
        for observer in list(self._observers):
            observer(stream)
        return stream

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
            log.info(
                "stream {stream_name} ended: {reason}",
                stream_name=stream.name,
                reason=stream.end_reason,
            )

    def add_observer(self, callback: Callable[[Stream], None]) -> None:
        """Call `callback(stream)` for every stream published from now on."""
        self._observers.append(callback)

    def get(self, name: str) -> Stream | None:
        return self._streams.get(name)

    def by_media_session_id(self, media_session_id: str) -> Stream | None:
        for stream in self._streams.values():
            if stream.media_session_id == media_session_id:
                return stream
        return None

    def all(self) -> list[Stream]:
        return list(self._streams.values())

    def __len__(self) -> int:
        return len(self._streams)

    def terminate_all(self) -> None:
        for stream in self.all():
            stream.terminate()


class PublishIdleWatchdog:
    """Ends every watched stream that has received no media for `timeout_ms` (a publisher whose
    connection went half-open would otherwise hold its name until TCP gives up).

    Checks once per `interval` seconds on the injected clock; a stream counts as active when its
    unit counter moved since the previous check, so pushing a unit costs no clock read. A stream
    is idle from its publish on if it never sends anything.
    """

    def __init__(
        self,
        registry: StreamRegistry,
        clock: IReactorTime,
        timeout_ms: int,
        *,
        interval: float = 1.0,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.timeout = timeout_ms / 1000.0
        self.interval = interval
        self._seen: dict[Stream, tuple[int, float]] = {}  # units_in, when it last changed
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        if self.timeout <= 0 or self._loop is not None:
            return  # publish_idle_timeout_ms=0: never
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self._seen = {}

    def check(self) -> None:
        now = self.clock.seconds()
        seen: dict[Stream, tuple[int, float]] = {}
        idle: list[Stream] = []
        for stream in self.registry.all():
            if not stream.watch_idle or stream.ended:
                continue
            count = stream.units_in
            previous = self._seen.get(stream)
            if previous is None or previous[0] != count:
                seen[stream] = (count, now)
            else:
                seen[stream] = previous
                if now - previous[1] >= self.timeout:
                    idle.append(stream)
        self._seen = seen
        for stream in idle:
            self._seen.pop(stream, None)
            log.warn(
                "stream {stream_name}: no media for {timeout_ms} ms "
                "(publish_idle_timeout_ms); dropping the publisher",
                stream_name=stream.name,
                provider=stream.provider,
                timeout_ms=round(self.timeout * 1000),
            )
            stream.terminate(END_IDLE)
