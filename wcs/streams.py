"""The hub: this process's live streams, their codec parameters, GOP cache and readers."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wcs.directory import (
    InvalidName,
    LocalDirectory,
    NameInUse,
    StreamDirectory,
    check_stream_name,
)
from wcs.guard import describe
from wcs.media.gop import MAX_GOP_BYTES, MAX_GOP_UNITS, Gop, GopCache
from wcs.media.units import MAX_PICTURE_PIXELS, MediaUnit, VideoParams

log = Logger(namespace="wcs.streams")

PROVIDER_RTMP = "Flash"
PROVIDER_RTSP = "RTSP"
PROVIDER_WEBRTC = "WebRTC"

# End reasons (WebSDK STREAM_STATUS_INFO texts). A publisher that stops sending media ends the
# way WCS ends it when its media activity check fires.
END_PUBLISHER_STOP = "Stopped by publisher stop"
END_SERVER = "Stopped by server"
END_IDLE = "Failed by RTP activity"


# A paused reader holds at most this many units by default before it skips to a keyframe.
MAX_READER_QUEUE = 256


class Reader:
    """One consumer's attachment to a stream (a player, a snapshot decoder).

    The stream calls `on_unit(unit)` for each unit, guarded: a reader that raises is logged,
    detached and counted, and the publisher and every other reader carry on. A paused reader
    queues up to `max_queue` units; past that it skips to the next keyframe (the one
    slow-consumer policy of the server), counting what it skipped in `discarded`, and
    `on_overflow(reader)` is called (a player asks the publisher for a keyframe there).
    """

    def __init__(
        self,
        stream: Stream,
        on_unit: Callable[[MediaUnit], object],
        *,
        from_keyframe: bool,
        max_queue: int,
        on_overflow: Callable[[Reader], object] | None,
        on_end: Callable[[Stream], object] | None,
        on_error: Callable[[Reader], object] | None,
        kind: str | None,
    ) -> None:
        self.stream: Stream | None = stream
        self.kind = kind
        self.name = stream.name
        self.delivered = 0
        self.discarded = 0
        self.errors = 0
        self.error = ""  # why it was detached, when a callback raised
        self.paused = False
        self.max_queue = max_queue
        self._on_unit: Callable[[MediaUnit], object] | None = on_unit
        self._on_overflow = on_overflow
        self._on_end = on_end
        self._on_error = on_error
        self._queue: deque[MediaUnit] = deque()
        # Video before the first keyframe cannot be decoded: not delivered, not counted.
        self._wait_key = from_keyframe
        self._skipping = False  # after an overflow, until the next keyframe (counted)

    def __repr__(self) -> str:
        return f"<Reader of {self.name!r} delivered={self.delivered} discarded={self.discarded}>"

    @property
    def closed(self) -> bool:
        return self._on_unit is None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def pause(self) -> None:
        """Queue units instead of delivering them (the consumer's buffer is full)."""
        self.paused = True

    def resume(self) -> None:
        """Deliver what was queued, then live units again."""
        self.paused = False
        queue = self._queue
        while queue and not self.paused and not self.closed:
            self._deliver(queue.popleft())

    def replay_gop(self) -> None:
        """Offer the stream's cached GOP now, as if it were arriving (a pause taken meanwhile
        applies). For a consumer that must hold its Reader before the first unit comes."""
        stream = self.stream
        gop = stream.gop if stream is not None else None
        if gop is None:
            return
        for unit in list(gop.units):
            if self.closed:
                break
            self._offer(unit)

    def close(self) -> None:
        """Detach from the stream and let go of the consumer's callbacks."""
        stream, self.stream = self.stream, None
        self._on_unit = self._on_overflow = self._on_end = self._on_error = None
        self._queue.clear()
        if stream is not None:
            stream._detach(self)

    # -- the stream's side ----------------------------------------------------------------------
    def _offer(self, unit: MediaUnit) -> None:
        if self._on_unit is None or (self.kind is not None and unit.kind != self.kind):
            return  # closed (perhaps by another reader's callback in this push), or not its kind
        if self._skipping or self._wait_key:
            if unit.kind == "video" and unit.keyframe:
                self._skipping = self._wait_key = False
            elif self._skipping and (unit.kind == "video" or self._keyframe_coming()):
                self.discarded += 1
                return
            elif self._wait_key and unit.kind == "video":
                return
            else:
                self._skipping = False  # audio of a stream without video: nothing to wait for
        queue = self._queue
        if not self.paused and not queue:
            self._deliver(unit)
        elif len(queue) < self.max_queue:
            queue.append(unit)
        else:
            self._overflow()
            if unit.keyframe if unit.kind == "video" else not self._keyframe_coming():
                self._skipping = False  # the unit to start again from
                if not self.paused:  # on_overflow may have resumed
                    self._deliver(unit)
                    return
                if self.max_queue > 0:
                    queue.append(unit)
                    return
            self.discarded += 1

    def skip_to_keyframe(self) -> None:
        """Drop what is queued and the video up to the next keyframe (counted as discarded)."""
        self.discarded += len(self._queue)
        self._queue.clear()
        self._skipping = True

    def _keyframe_coming(self) -> bool:
        """Whether skipping to a keyframe can end: the reader takes video, and the stream has
        video going (not audio only, nor a camera whose video dropped)."""
        stream = self.stream
        return (
            self.kind in (None, "video")
            and stream is not None
            and stream.has_video
            and stream.gop is not None
        )

    def _overflow(self) -> None:
        self.skip_to_keyframe()
        on_overflow = self._on_overflow
        if on_overflow is not None:
            self._guarded(on_overflow, self)

    def _deliver(self, unit: MediaUnit) -> None:
        on_unit = self._on_unit
        if on_unit is not None and self._guarded(on_unit, unit):
            self.delivered += 1

    def _ended(self, stream: Stream) -> None:
        # What a paused reader still holds are the stream's last units: delivered, not lost.
        queue = self._queue
        while queue and not self.closed:
            self._deliver(queue.popleft())
        on_end = self._on_end
        if on_end is not None:
            self._guarded(on_end, stream)
        self.close()

    def _guarded(self, callback: Callable[[Any], object], arg: object) -> bool:
        try:
            callback(arg)
        except Exception as err:
            self.errors += 1
            self.error = describe(err)
            log.failure(
                "stream {stream_name}: a reader failed and is detached ({reason}); "
                "the publisher and other readers carry on",
                stream_name=self.name,
                reason=self.error,
            )
            on_error = self._on_error
            self.close()
            if on_error is not None:
                try:
                    on_error(self)
                except Exception:
                    log.failure("stream {stream_name}: on_error failed", stream_name=self.name)
            return False
        return True


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
        self._clock_ms = clock_ms
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
        self._readers: list[Reader] = []
        # What readers detached so far delivered, discarded and failed (the metrics' totals).
        self.past_readers = [0, 0, 0]
        # Why the current video parameters are refused (too large a picture), else None.
        self.video_refused: str | None = None
        self._on_terminate = on_terminate
        self._on_end: list[Callable[[Stream], object]] = []
        # Set by a front-end that can ask its publisher for a keyframe (WebRTC: RTCP PLI).
        self.keyframe_requester: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Stream {self.name!r} {self.media_session_id} {self.provider}>"

    def now_ms(self) -> int:
        """The wall clock the stream's times are on (created_ms, Gop.arrived_ms)."""
        return self._clock_ms()

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
        """Hand one media unit to the stream: cache video for snapshots, then pass it to readers."""
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
        for reader in list(self._readers):
            reader._offer(unit)

    def _cache_video(self, unit: MediaUnit) -> None:
        params = self.video
        if params is None or params.codec != unit.codec:
            params = self.video = VideoParams(codec=unit.codec)
            self.video_refused = None
        if self.video_refused is not None:
            return
        now_ms = self._clock_ms() if unit.keyframe else 0
        if not self._gops.add(unit, params, now_ms) and not self._gop_overflow_logged:
            self._gop_overflow_logged = True
            log.warn(
                "stream {stream_name}: GOP longer than {units} units / {size} bytes; "
                "snapshots wait for the next keyframe",
                stream_name=self.name,
                units=MAX_GOP_UNITS,
                size=MAX_GOP_BYTES,
            )

    def end(self, reason: str = END_PUBLISHER_STOP) -> None:
        """The publish is over: readers are told once (and see the last GOP while told), then
        the cache is dropped and the hub forgets the name.

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
        readers, self._readers = self._readers, []
        for reader in readers:
            reader._ended(self)  # may still read the last GOP (to drain the decoder)
        self._gops.clear()
        callbacks, self._on_end = self._on_end, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:  # a consumer's bug must not stop the others, nor the publisher
                log.failure(
                    "stream {stream_name}: a callback of its end failed", stream_name=self.name
                )

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
    def add_reader(
        self,
        on_unit: Callable[[MediaUnit], object],
        *,
        replay_gop: bool = False,
        from_keyframe: bool | None = None,
        max_queue: int = MAX_READER_QUEUE,
        on_overflow: Callable[[Reader], object] | None = None,
        on_end: Callable[[Stream], object] | None = None,
        on_error: Callable[[Reader], object] | None = None,
        kind: str | None = None,
    ) -> Reader:
        """Attach a consumer: `on_unit(unit)` for every unit from now on.

        `replay_gop` first delivers the cached GOP (a player shows a picture at once).
        `from_keyframe` (default: as `replay_gop`) holds back video until a keyframe.
        `kind` ("video", "audio") offers only units of that kind.
        `on_end(stream)` runs once when the stream ends (it may still read the last GOP);
        `on_error(reader)` after the reader was detached for raising. A reader added to an
        ended stream gets `on_end` at once and is closed.
        """
        reader = Reader(
            self,
            on_unit,
            from_keyframe=replay_gop if from_keyframe is None else from_keyframe,
            max_queue=max_queue,
            on_overflow=on_overflow,
            on_end=on_end,
            on_error=on_error,
            kind=kind,
        )
        if self.ended:
            reader._ended(self)
            return reader
        self._readers.append(reader)
        if replay_gop:
            reader.replay_gop()
        return reader

    def _detach(self, reader: Reader) -> None:
        if reader in self._readers:
            self._readers.remove(reader)
        past = self.past_readers
        past[0] += reader.delivered
        past[1] += reader.discarded
        past[2] += reader.errors

    def reader_counts(self) -> tuple[int, int, int]:
        """Units delivered to and discarded by this stream's readers, and reader failures,
        over its whole life (readers detached since included)."""
        delivered, discarded, errors = self.past_readers
        for reader in self._readers:
            delivered += reader.delivered
            discarded += reader.discarded
            errors += reader.errors
        return delivered, discarded, errors

    @property
    def readers(self) -> list[Reader]:
        return list(self._readers)

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


class StreamHub:
    """This process's live streams by name. A name is held by one publisher at a time: the
    directory (shared by every hub of a cluster, or this process's own) decides who."""

    def __init__(
        self,
        clock_ms: Callable[[], int] | None = None,
        *,
        max_picture_pixels: int = MAX_PICTURE_PIXELS,
        directory: StreamDirectory | None = None,
        node: str = "local",
    ) -> None:
        self.max_picture_pixels = max_picture_pixels
        self.directory: StreamDirectory = directory or LocalDirectory()
        self.node = node
        self._streams: dict[str, Stream] = {}
        self._claiming: set[str] = set()
        self._observers: list[Callable[[Stream], None]] = []
        self._clock_ms = clock_ms
        self.directory.on_lost(self._lost)

    def _lost(self, name: str, owner: str) -> None:
        """The directory gave `name` to another publish (after an outage the older one keeps
        it): end ours, as a second publisher of a taken name would have been refused."""
        stream = self._streams.get(name)
        if stream is None or self.owner(stream.media_session_id) != owner:
            return
        log.warn(
            "stream {stream_name}: the name went to another node's older publish while the "
            "directory was unreachable; ending this one: {info}",
            stream_name=name,
            info=NameInUse.info,
        )
        stream.terminate(NameInUse.info)

    def owner(self, media_session_id: str) -> str:
        """The directory's owner string of one publish on this hub."""
        return f"{self.node}/{media_session_id}"

    def publish(
        self,
        name: str,
        provider: str,
        *,
        media_session_id: str | None = None,
        on_terminate: Callable[[], None] | None = None,
        watch_idle: bool = True,
    ) -> Deferred[Stream]:
        """A new live stream, once the directory gave this hub its name; fails with InvalidName
        or NameInUse.

        `watch_idle=False` exempts it from the publish idle timeout (a camera pull reconnects).
        The caller checks, when this fires, that its publisher is still there; if not, it ends
        the stream at once.
        """
        try:
            check_stream_name(name)
        except InvalidName as err:
            return fail(err)
        if name in self._streams or name in self._claiming:
            return fail(NameInUse(name))
        msid = media_session_id or str(uuid.uuid4())
        owner = self.owner(msid)
        self._claiming.add(name)

        def claimed(_: object) -> Stream:
            self._claiming.discard(name)
            kwargs = {} if self._clock_ms is None else {"clock_ms": self._clock_ms}
            stream = Stream(
                name,
                provider,
                media_session_id=msid,
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
                msid=msid,
            )
            for observer in list(self._observers):
                try:
                    observer(stream)
                except Exception:  # a consumer's bug must not refuse the publish
                    log.failure("stream {stream_name}: an observer failed", stream_name=name)
            return stream

        def refused(failure: Failure) -> Failure:
            self._claiming.discard(name)
            return failure

        return self.directory.claim(name, owner).addCallbacks(claimed, refused)

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
            log.info(
                "stream {stream_name} ended: {reason}",
                stream_name=stream.name,
                reason=stream.end_reason,
            )
        self.directory.release(stream.name, self.owner(stream.media_session_id)).addErrback(
            lambda f: log.warn(
                "stream {stream_name}: the directory did not release the name: {reason}",
                stream_name=stream.name,
                reason=f.getErrorMessage(),
            )
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
        hub: StreamHub,
        clock: IReactorTime,
        timeout_ms: int,
        *,
        interval: float = 1.0,
    ) -> None:
        self.hub = hub
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
        for stream in self.hub.all():
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
