"""aiortc peer connections: a publisher's encoded frames into a Stream, a Stream out to a player.

Publish never decodes: the receiver's depayloaded frames (Annex B H.264 access units, VP8
frames) are taken before aiortc's decoder and pushed as MediaUnits. Play relays the stream's
encoded units when the browser accepts the codec, and decodes and re-encodes only when it
does not (e.g. a VP8 publisher watched by an H.264-only browser).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import av.error
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from aiortc.sdp import SessionDescription
from av.video.frame import VideoFrame
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wcs.guard import describe
from wcs.media import h264
from wcs.media.decoder import can_decode, open_codec
from wcs.media.pool import PoolRunner
from wcs.media.units import MAX_PICTURE_PIXELS, MediaUnit, VideoParams
from wcs.streams import Reader, Stream

log = Logger(namespace="wcs.webrtc.peer")

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
AUDIO_TIME_BASE = Fraction(1, AUDIO_CLOCK)
# The SDK never trickles: the browser's candidates arrive as connectivity checks, and aioice
# waits for them indefinitely, so the peer gives up on its own after this long.
ICE_TIMEOUT = 20.0
# Browsers send a keyframe only when asked. Asking every few seconds keeps the GOP cache (and
# so the work of a cold snapshot) short; PLIs are spaced so a lossy link cannot flood them.
KEYFRAME_INTERVAL = 3.0
PLI_MIN_GAP = 1.0
# One encoded frame larger than this (a 4K keyframe is a few MB) is dropped, not buffered.
MAX_FRAME_BYTES = 8 * 1024 * 1024
# Units queued for a player that is not keeping up; beyond it the player skips to a keyframe.
MAX_PLAY_QUEUE = 120
RELAY_CODECS = ("H264", "VP8")
# How long a player of a just-published stream waits for its first video frame (to learn the
# codec) before answering with the browser's preferred codec.
SOURCE_CODEC_WAIT = 5.0
_NO_PIXEL_LIMIT = 1 << 62

INFO_ICE_TIMEOUT = "Failed by ICE timeout"
INFO_ICE_ERROR = "Failed by ICE error"
INFO_KEEP_ALIVE = "Failed by ICE keep alive"
INFO_NO_COMMON_CODECS = "No common codecs"
INFO_BAD_OFFER = "Unusable SDP offer"
INFO_ERROR = "Failed by error"


class PictureTooLarge(ValueError):
    """A picture above the stream's max_picture_pixels: its video is refused, not decoded."""


class PeerError(Exception):
    """A peer could not be set up; `info` is the WebSDK STREAM_STATUS_INFO text."""

    def __init__(self, info: str, detail: str = "") -> None:
        super().__init__(detail or info)
        self.info = info


# -- pure helpers ---------------------------------------------------------------------------------
def vp8_frame_info(data: bytes, max_pixels: int = MAX_PICTURE_PIXELS) -> tuple[bool, int, int]:
    """(keyframe, width, height) of a VP8 frame (RFC 6386 9.1); sizes are 0 for inter frames.

    A keyframe of more than `max_pixels` is refused (ValueError), as parse_sps refuses an SPS.
    """
    if len(data) < 3:
        raise ValueError("VP8 frame shorter than its 3-byte tag")
    if data[0] & 1:
        return False, 0, 0
    if len(data) < 10 or data[3:6] != b"\x9d\x01\x2a":
        raise ValueError("VP8 keyframe without its start code")
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    if not width or not height:
        raise ValueError("VP8 keyframe with a zero dimension")
    if width * height > max_pixels:
        raise PictureTooLarge(f"VP8 picture {width}x{height} is larger than {max_pixels} pixels")
    return True, width, height


def offered_video_codecs(offer_sdp: str) -> list[str]:
    """Video codec names the offer lists, upper-case, in its order of preference."""
    description = SessionDescription.parse(offer_sdp)
    names: list[str] = []
    for media in description.media:
        if media.kind != "video":
            continue
        for codec in media.rtp.codecs:
            name = codec.name.upper()
            if name not in names:
                names.append(name)
    return names


def choose_play_codec(offered: list[str], source: str | None) -> str | None:
    """The codec to send a player: the source's if the browser takes it (relay), else the first
    one both sides support (transcode); None when there is none."""
    if source in RELAY_CODECS and source in offered:
        return source
    for name in offered:
        if name in RELAY_CODECS:
            return name
    return None


def _has_codec(stream: Stream, codec: str) -> bool:
    return stream.video is not None and stream.video.codec == codec


class EncodedIngest:
    """Turns a publisher's depayloaded frames into MediaUnits on its Stream.

    Reactor thread only. Also decides when to ask the publisher for a keyframe: at the start,
    after an undecodable frame, and when the current GOP grows past KEYFRAME_INTERVAL.

    A malformed frame is dropped (`Stream.reject_unit`: counted, logged once per stream) and the
    publish goes on. A picture larger than the stream's max_picture_pixels is refused the same
    way, and so is every frame after it until parameters of an acceptable size arrive: nothing
    of it reaches the stream, so no decoder is ever opened for it.
    """

    def __init__(
        self, stream: Stream, send_pli: Callable[[], None], clock: Callable[[], float]
    ) -> None:
        self.stream = stream
        self._send_pli = send_pli
        self._clock = clock
        self._last_pli = float("-inf")
        self._last_key_ts: int | None = None
        self._refused: str | None = None  # why the current video is refused, if it is
        self.frames = 0
        self.dropped = 0
        self.plis = 0

    def request_keyframe(self) -> None:
        now = self._clock()
        if now - self._last_pli < PLI_MIN_GAP:
            return
        self._last_pli = now
        self.plis += 1
        self._send_pli()

    def _reject(self, reason: str) -> None:
        self.dropped += 1
        self.stream.reject_unit(reason)

    def video(self, codec: str, data: bytes, timestamp: int) -> None:
        """One depayloaded video frame; `timestamp` in 90 kHz units from the first frame."""
        if len(data) > MAX_FRAME_BYTES:
            self._reject(f"{codec} frame of {len(data)} bytes (at most {MAX_FRAME_BYTES})")
            self.request_keyframe()
            return
        try:
            if codec == "H264":
                unit = self._h264(data, timestamp)
            elif codec == "VP8":
                unit = self._vp8(data, timestamp)
            else:
                if self.stream.video is None or self.stream.video.codec != codec:
                    self.stream.set_video_params(VideoParams(codec=codec))
                return
        except PictureTooLarge as err:
            self._refuse_video(str(err))
            return
        except ValueError as err:  # H264Error is a ValueError
            self._reject(f"undecodable {codec} frame: {err}")
            self.request_keyframe()
            return
        if unit is None:
            if self._refused is not None:
                self._reject(f"video refused: {self._refused}")
            else:
                self.dropped += 1  # nothing decodable yet (no parameters, no keyframe)
                self.request_keyframe()
            return
        self.frames += 1
        if unit.keyframe:
            self._last_key_ts = timestamp
        elif (
            self._last_key_ts is None
            or timestamp - self._last_key_ts > KEYFRAME_INTERVAL * VIDEO_CLOCK
        ):
            self.request_keyframe()
        self.stream.push(unit)

    def _refuse_video(self, reason: str) -> None:
        """Parameters of a picture too large: drop them and every frame until new ones; forget
        any picture from before (what follows would not decode with its parameters)."""
        if self._refused is None:
            self.stream.clear_video()
        self._refused = reason
        self._reject(f"video refused: {reason}")

    def _h264(self, data: bytes, ts: int) -> MediaUnit | None:
        nals = h264.split_annexb(data)
        if not nals:
            return None
        types = [h264.nal_type(nal) for nal in nals]
        sps = [nal for nal, t in zip(nals, types, strict=True) if t == h264.NAL_SPS]
        pps = [nal for nal, t in zip(nals, types, strict=True) if t == h264.NAL_PPS]
        extradata = h264.to_annexb([*sps, *pps]) if sps and pps else b""
        video = self.stream.video
        # Browsers repeat SPS/PPS before every keyframe: parse them only when they change.
        if extradata and (
            self._refused is not None
            or video is None
            or video.codec != "H264"
            or video.extradata != extradata
        ):
            try:
                info = h264.parse_sps(sps[0], max_pixels=self.stream.max_picture_pixels)
            except h264.H264Error as err:
                # Too large, or malformed? Only a well-formed SPS parses without the limit.
                try:
                    h264.parse_sps(sps[0], max_pixels=_NO_PIXEL_LIMIT)
                except h264.H264Error:
                    raise err from None
                raise PictureTooLarge(str(err)) from None
            self._refused = None
            video = h264.h264_video_params_of(info, sps, pps)
            self.stream.set_video_params(video)
            log.info(
                "WebRTC {stream_name}: video H.264 {width}x{height} {profile}",
                stream_name=self.stream.name,
                msid=self.stream.media_session_id,
                width=info.width,
                height=info.height,
                profile=video.profile,
            )
        if self._refused is not None or video is None or video.codec != "H264":
            return None  # refused, or no SPS/PPS yet: nothing here can be decoded
        if not video.extradata:
            return None
        keyframe = h264.NAL_IDR in types
        return MediaUnit("video", "H264", ts, ts, keyframe, data, VIDEO_TIME_BASE)

    def _vp8(self, data: bytes, ts: int) -> MediaUnit | None:
        keyframe, width, height = vp8_frame_info(data, self.stream.max_picture_pixels)
        if keyframe:
            self._refused = None
            params = VideoParams(codec="VP8", width=width, height=height)
            if self.stream.video != params:
                self.stream.set_video_params(params)
                log.info(
                    "WebRTC {stream_name}: video VP8 {width}x{height}",
                    stream_name=self.stream.name,
                    msid=self.stream.media_session_id,
                    width=width,
                    height=height,
                )
        elif self._refused is not None or not _has_codec(self.stream, "VP8"):
            return None
        return MediaUnit("video", "VP8", ts, ts, keyframe, data, VIDEO_TIME_BASE)

    def audio(self, codec: str, data: bytes, timestamp: int) -> None:
        if not data or len(data) > MAX_FRAME_BYTES:
            return
        name = codec.upper()
        if self.stream.audio_codec != name:
            self.stream.set_audio_codec(name)
        self.stream.push(
            MediaUnit("audio", name, timestamp, timestamp, True, data, AUDIO_TIME_BASE)
        )


class EncodedFrameTap:
    """Stands in for an RTCRtpReceiver's decoder queue, so frames reach us encoded.

    aiortc's receiver puts (codec, JitterFrame) here from the event loop, and None when it stops;
    its decoder thread, started with this object, just waits in get() until then.
    """

    def __init__(self, deliver: Callable[[str, bytes, int], None]) -> None:
        self._deliver = deliver
        self._stopped: queue.SimpleQueue[None] = queue.SimpleQueue()

    def put(self, item: tuple[Any, Any] | None) -> None:
        if item is None:
            self._stopped.put(None)
            return
        codec, frame = item
        try:
            self._deliver(str(codec.name).upper(), bytes(frame.data), int(frame.timestamp))
        except Exception:
            # A bug in ingest must not break aiortc's RTP handling for the whole connection.
            log.failure("WebRTC ingest failed on one frame")

    def get(self) -> None:
        return self._stopped.get()


_RECEIVER_QUEUE = "_RTCRtpReceiver__decoder_queue"


def tap_receiver(receiver: RTCRtpReceiver, deliver: Callable[[str, bytes, int], None]) -> None:
    """Route a receiver's encoded frames to `deliver` instead of its decoder thread.

    Must run before the receiver starts (i.e. before ICE completes). aiortc has no public hook
    for encoded frames; this relies on its private decoder queue, checked here so an aiortc
    upgrade that changes it fails loudly instead of silently decoding.
    """
    if not isinstance(getattr(receiver, _RECEIVER_QUEUE, None), queue.Queue):
        raise PeerError(INFO_ERROR, "aiortc RTCRtpReceiver has no decoder queue to tap")
    setattr(receiver, _RECEIVER_QUEUE, EncodedFrameTap(deliver))


# -- peers ----------------------------------------------------------------------------------------
def _future(coro: Any) -> Deferred[Any]:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


class _Peer:
    """One RTCPeerConnection answering a WebSDK offer; reports connected, then failed, once each."""

    role = "peer"

    def __init__(
        self,
        stream: Stream,
        clock: IReactorTime,
        on_connected: Callable[[], None],
        on_failed: Callable[[str], None],
        *,
        ice_timeout: float = ICE_TIMEOUT,
        run_in_pool: PoolRunner | None = None,
    ) -> None:
        self.stream = stream
        self._clock = clock
        self.run_in_pool = run_in_pool  # blocking work (a player's transcoding decode)
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._ice_timeout = ice_timeout
        self._timer: IDelayedCall | None = None
        self.connected = False
        self.closed = False
        self._failed = False
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.on("connectionstatechange", self._state_changed)

    def answer(self, offer_sdp: str) -> Deferred[str]:
        """The answer SDP (with the server's candidates) to the browser's offer."""
        self._timer = self._clock.callLater(self._ice_timeout, self._timed_out)
        return _future(self._answer(offer_sdp))

    async def _answer(self, offer_sdp: str) -> str:
        try:
            await self._before_offer(offer_sdp)
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await self._after_offer()
            answer = await self.pc.createAnswer()
            # aiortc gathers all host candidates here, so the answer carries them (no trickle).
            await self.pc.setLocalDescription(answer)
        except PeerError:
            raise
        except OperationError as err:
            raise PeerError(INFO_NO_COMMON_CODECS, str(err)) from err
        except Exception as err:
            # The offer is the browser's input, and aiortc meets a malformed one with whatever
            # it trips on (AssertionError for an m-line without codecs or a bad c= line,
            # IndexError for a short a=rtpmap, AttributeError without a=setup, KeyError...):
            # an unusable offer, for the client and the log alike.
            if not isinstance(err, ValueError | InternalError | InvalidStateError):
                log.debug(
                    "WebRTC {role} {stream_name}: offer rejected by aiortc",
                    role=self.role,
                    stream_name=self.stream.name,
                    log_failure=Failure(),
                )
            raise PeerError(INFO_BAD_OFFER, describe(err)) from err
        description = self.pc.localDescription
        assert description is not None
        return description.sdp

    async def _before_offer(self, offer_sdp: str) -> None:
        """Hook: set up transceivers before the offer is applied."""

    async def _after_offer(self) -> None:
        """Hook: adjust transceivers after the offer is applied, before answering."""

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        log.debug(
            "WebRTC {role} {stream_name}: connection {state}",
            role=self.role,
            stream_name=self.stream.name,
            msid=self.stream.media_session_id,
            state=state,
        )
        if state == "connected" and not self.connected:
            self.connected = True
            self._cancel_timer()
            if not self._failed:
                self._on_connected()
        elif state == "failed":
            self._fail(INFO_KEEP_ALIVE if self.connected else INFO_ICE_ERROR)

    def _timed_out(self) -> None:
        self._timer = None
        if not self.connected:
            self._fail(INFO_ICE_TIMEOUT)

    def _fail(self, info: str) -> None:
        self._cancel_timer()
        if self.closed or self._failed:
            return
        self._failed = True
        self._on_failed(info)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def close(self) -> Deferred[None]:
        """Close the connection (idempotent); fires when aiortc has released its sockets."""
        if self.closed:
            return succeed(None)
        self.closed = True
        self._cancel_timer()
        self._closing()
        return _future(self._close_pc())

    async def _close_pc(self) -> None:
        try:
            await self.pc.close()
        except Exception as err:
            # aiortc can trip over the half-applied state a malformed offer left behind.
            log.warn(
                "WebRTC {role} {stream_name}: closing the peer connection: {reason}",
                role=self.role,
                stream_name=self.stream.name,
                reason=describe(err),
            )

    def _closing(self) -> None:
        """Hook: detach from the stream."""


class PublishPeer(_Peer):
    """Receives a browser's publish and feeds the Stream with its encoded frames."""

    role = "publisher"

    def __init__(
        self,
        stream: Stream,
        clock: IReactorTime,
        on_connected: Callable[[], None],
        on_failed: Callable[[str], None],
        **kw: Any,
    ) -> None:
        super().__init__(stream, clock, on_connected, on_failed, **kw)
        self.ingest = EncodedIngest(stream, self._send_pli, clock.seconds)
        self._video_receiver: RTCRtpReceiver | None = None
        self._plis: set[asyncio.Future[None]] = set()  # referenced until sent
        stream.keyframe_requester = self.ingest.request_keyframe

    async def _after_offer(self) -> None:
        if not self.pc.getTransceivers():
            raise PeerError(INFO_BAD_OFFER, "the offer has no audio or video")
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if transceiver.kind == "video":
                self._video_receiver = receiver
                tap_receiver(receiver, self._video_frame)
            elif transceiver.kind == "audio":
                tap_receiver(receiver, self._audio_frame)

    def _state_changed(self) -> None:
        was = self.connected
        super()._state_changed()
        if self.connected and not was:
            # The browser's first keyframe may have been lost while DTLS was finishing.
            self.ingest.request_keyframe()

    def _video_frame(self, codec: str, data: bytes, timestamp: int) -> None:
        if not self.closed:
            self.ingest.video(codec, data, timestamp)

    def _audio_frame(self, codec: str, data: bytes, timestamp: int) -> None:
        if not self.closed:
            self.ingest.audio(codec, data, timestamp)

    def _send_pli(self) -> None:
        receiver = self._video_receiver
        if receiver is None or self.closed:
            return
        for source in receiver.getSynchronizationSources():
            task = asyncio.ensure_future(receiver._send_rtcp_pli(source.source))
            self._plis.add(task)
            task.add_done_callback(self._plis.discard)

    def _closing(self) -> None:
        if self.stream.keyframe_requester == self.ingest.request_keyframe:
            self.stream.keyframe_requester = None


class StreamTrack(MediaStreamTrack):
    """A video track fed by a Stream: relays encoded units of `codec`, transcodes others.

    recv() returns av.Packet for units already in `codec` (aiortc packetizes them as they are)
    and av.VideoFrame for the rest (aiortc encodes them); decoding runs in a worker thread.
    """

    kind = "video"

    def __init__(self, stream: Stream, codec: str, run_in_pool: PoolRunner | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.codec = codec
        self._run_in_pool = run_in_pool  # the service's pool; None: asyncio's default executor
        self._queue: asyncio.Queue[MediaUnit | None] = asyncio.Queue()
        # H.264 with B-frames (pts != dts) is re-encoded: browsers' WebRTC decoders show only
        # its keyframes (measured in Chromium), so relaying it would look frozen.
        self.reordered = False
        self._decoder: Any = None
        self._decoder_params: VideoParams | None = None
        self._ended = False
        self.relayed = 0
        self.transcoded = 0
        # One unit at a time is handed to recv(); the rest wait in the reader, which skips to
        # the next keyframe (and asks the publisher for one) when the player falls behind.
        self._reader = stream.add_reader(
            self._unit,
            from_keyframe=True,
            kind="video",
            max_queue=MAX_PLAY_QUEUE,
            on_overflow=self._fell_behind,
            on_end=self._stream_ended,
            on_error=lambda reader: self._stream_ended(stream),
        )
        stream.request_keyframe()

    # -- the stream's reader (reactor thread) -----------------------------------------------------
    def _unit(self, unit: MediaUnit) -> None:
        if self.readyState != "live":
            return
        if not self.reordered and unit.pts != unit.dts and unit.codec == self.codec:
            self.reordered = True
            log.info(
                "WebRTC player of {stream_name}: the source has B-frames: transcoding",
                stream_name=self.stream.name,
            )
            self._drop_waiting()
            if not unit.keyframe:
                self._reader.skip_to_keyframe()
                return
        self._queue.put_nowait(unit)
        self._reader.pause()  # until recv() has taken it

    def _fell_behind(self, reader: Reader) -> None:
        self._drop_waiting()
        reader.resume()
        self.stream.request_keyframe()

    def _drop_waiting(self) -> None:
        while not self._queue.empty():
            if self._queue.get_nowait() is None:  # the end stays the end
                self._queue.put_nowait(None)
                return

    def _stream_ended(self, stream: Stream) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)

    def stop(self) -> None:
        super().stop()
        self._reader.close()

    # -- aiortc side ------------------------------------------------------------------------------
    async def recv(self) -> Any:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._queue.empty():
                self._reader.resume()
            unit = await self._queue.get()
            if unit is None:
                self.stop()
                raise MediaStreamError
            if unit.codec == self.codec and not self.reordered:
                self.relayed += 1
                return self._packet(unit)
            loop = asyncio.get_running_loop()
            if self._run_in_pool is not None:
                frame = await self._run_in_pool(self._decode, unit).asFuture(loop)
            else:
                frame = await loop.run_in_executor(None, self._decode, unit)
            if frame is not None:
                self.transcoded += 1
                return frame

    def _packet(self, unit: MediaUnit) -> av.Packet:
        data = unit.data
        video = self.stream.video
        if unit.codec == "H264" and unit.keyframe and video is not None:
            data = h264.with_parameter_sets(data, video.extradata)
        return _av_packet(unit, data)

    def _decode(self, unit: MediaUnit) -> VideoFrame | None:
        """Worker thread; recv() is awaited by one sender, so one decode runs at a time."""
        params = self.stream.video
        if self._decoder is None or (params is not None and params != self._decoder_params):
            if not can_decode(unit.codec):
                return None
            self._decoder = open_codec(unit.codec, params, self.stream.max_picture_pixels)
            self._decoder_params = params
        try:
            frames = self._decoder.decode(_av_packet(unit, unit.data))
        except av.error.FFmpegError:
            return None
        newest: VideoFrame | None = None
        for frame in frames:
            if isinstance(frame, VideoFrame) and not frame.is_corrupt and frame.pts is not None:
                frame.time_base = unit.time_base
                newest = frame
        return newest


def _av_packet(unit: MediaUnit, data: bytes) -> av.Packet:
    packet = av.Packet(data)
    packet.pts = unit.pts
    packet.dts = unit.dts
    packet.time_base = unit.time_base
    return packet


class PlayPeer(_Peer):
    """Sends a live Stream to a browser that offered to receive video."""

    role = "player"
    track: StreamTrack | None = None

    async def _before_offer(self, offer_sdp: str) -> None:
        offered = offered_video_codecs(offer_sdp)
        video = self.stream.video or await self._first_video()
        if self.closed:  # the player left while waiting: no track, no reader left behind
            raise PeerError(INFO_ERROR, "closed while waiting for the source's video")
        codec = choose_play_codec(offered, video.codec if video else None)
        if codec is None:
            raise PeerError(INFO_NO_COMMON_CODECS, f"browser offers {offered}")
        self.track = StreamTrack(self.stream, codec, self.run_in_pool)
        # Made before the offer is applied, so the offer's video m-line takes this transceiver
        # with only our codec (plus its RTX) preferred.
        transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
        capabilities = RTCRtpSender.getCapabilities("video")
        assert capabilities is not None
        transceiver.setCodecPreferences(
            [c for c in capabilities.codecs if c.name.upper() in (codec, "RTX")]
        )
        sender = transceiver.sender
        original = sender._handle_rtcp_packet

        async def handle_rtcp(packet: Any) -> None:
            # A player's PLI (loss, start) is passed on to the publisher when relaying.
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
                self.stream.request_keyframe()
            await original(packet)

        sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
        log.info(
            "WebRTC player of {stream_name}: {mode} {codec} (browser offers {offered})",
            stream_name=self.stream.name,
            mode=(
                "sending (source codec unknown)"
                if video is None
                else "relaying"
                if video.codec == codec
                else f"transcoding {video.codec} to"
            ),
            codec=codec,
            offered=",".join(offered),
        )

    async def _first_video(self) -> VideoParams | None:
        """A player that arrives right after the publish waits (briefly) for the source codec,
        so that it can be relayed rather than transcoded."""
        future: asyncio.Future[VideoParams | None] = asyncio.get_running_loop().create_future()
        stream = self.stream

        def settle(video: VideoParams | None) -> None:
            if not future.done():
                future.set_result(video)

        reader = stream.add_reader(
            lambda unit: settle(stream.video),
            kind="video",
            on_end=lambda s: settle(None),
            on_error=lambda r: settle(None),
        )
        try:
            return await asyncio.wait_for(future, SOURCE_CODEC_WAIT)
        except TimeoutError:
            return None
        finally:
            reader.close()

    def _closing(self) -> None:
        if self.track is not None:
            self.track.stop()
