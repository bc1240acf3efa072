"""RTMP server protocol: bytes through the pure parsers, commands answered, media to a Stream."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from wcs.media import h264
from wcs.media.units import MediaUnit, VideoParams
from wcs.rtmp import amf0, chunks, flv
from wcs.rtmp.chunks import ChunkDecoder, ChunkEncoder, Message
from wcs.rtmp.handshake import HandshakeError, ServerHandshake
from wcs.streams import PROVIDER_RTMP, Stream, StreamError, StreamRegistry

log = Logger(namespace="wcs.rtmp")

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
MAX_CONNECTIONS = 1000
# A 4K keyframe is a few MB; OBS and ffmpeg use fewer than 10 chunk streams. Together these bound
# what one connection can make us buffer to 16 x 8 MiB, and only with bytes it actually sent.
MAX_MESSAGE_SIZE = 8 * 1024 * 1024
MAX_CHUNK_STREAMS = 16
OUT_CHUNK_SIZE = 4096
WINDOW_ACK_SIZE = 2_500_000
STREAM_ID = 1
CSID_COMMAND = 3
CSID_STATUS = 5


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection is dropped with this reason."""


def stream_key(name: str) -> str:
    """The stream name of an RTMP publish name: the key without its `?query`."""
    return name.split("?", 1)[0]


def _amf0_body(m: Message) -> bytes:
    """The AMF0 values of a command/data message: the AMF3 variants carry them after a 0 byte."""
    if m.type_id in (chunks.COMMAND_AMF3, chunks.DATA_AMF3) and m.payload[:1] == b"\x00":
        return m.payload[1:]
    return m.payload


class _Timeline:
    """Unwraps 32-bit RTMP millisecond timestamps into one monotonic-ish 64-bit timeline.

    Each timestamp is taken as the signed 32-bit step from the previous one, so audio lagging
    video across the 2^32 point steps back a little instead of jumping 49 days ahead.
    """

    def __init__(self) -> None:
        self._last: int | None = None  # unwrapped

    def unwrap(self, ts: int) -> int:
        if self._last is None:
            self._last = ts
            return ts
        delta = (ts - self._last) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        self._last += delta
        return self._last


class RTMPServerProtocol(Protocol, TimeoutMixin):
    """One RTMP connection (an encoder publishing one stream)."""

    factory: RTMPServerFactory

    def __init__(self, registry: StreamRegistry) -> None:
        self.registry = registry
        self._handshake: ServerHandshake | None = ServerHandshake()
        self._decoder = ChunkDecoder(
            max_message_size=MAX_MESSAGE_SIZE, max_chunk_streams=MAX_CHUNK_STREAMS
        )
        self._encoder = ChunkEncoder()
        self._peer = "?"
        self._app = ""
        self._peer_window = 0
        self._last_ack = 0
        self.stream: Stream | None = None
        self._length_size = 4
        self._timeline = _Timeline()
        self._dropping = False
        self._metadata_logged = False

    # -- connection -----------------------------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.factory.connections += 1
        if self.factory.connections > MAX_CONNECTIONS:
            self.drop(f"too many RTMP connections (limit {MAX_CONNECTIONS})")
            return
        self.setTimeout(HANDSHAKE_TIMEOUT)

    def timeoutConnection(self) -> None:
        stage = "handshake" if self._handshake is not None else "idle"
        self.drop(f"{stage} timeout")

    def drop(self, reason: str) -> None:
        """Close this connection (and only this one) with a logged reason."""
        if self._dropping:
            return
        self._dropping = True
        log.warn(
            "RTMP {peer}: closing connection: {reason}",
            peer=self._peer,
            reason=reason,
            stream_name=self.stream.name if self.stream else None,
        )
        self.setTimeout(None)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections -= 1
        self.setTimeout(None)
        self._end_publish("Stopped by publisher stop")

    def dataReceived(self, data: bytes) -> None:
        if self._dropping:
            return
        if self._handshake is None:
            self.resetTimeout()  # the handshake has one deadline, however slowly bytes trickle in
        else:
            try:
                out, done, data = self._handshake.feed(data)
            except HandshakeError as err:
                self.drop(f"bad handshake: {err}")
                return
            if out:
                self.transport.write(out)  # type: ignore[union-attr]
            if not done:
                return
            self._handshake = None
            self.setTimeout(IDLE_TIMEOUT)
            if not data:
                return
        try:
            messages = self._decoder.feed(data)
            for message in messages:
                self._dispatch(message)
                if self._dropping:
                    return
        except (chunks.ChunkError, amf0.AMF0Error, flv.FLVError, h264.H264Error) as err:
            self.drop(f"{type(err).__name__}: {err}")
            return
        except ProtocolViolation as err:
            self.drop(str(err))
            return
        self._maybe_ack()

    def _maybe_ack(self) -> None:
        received = self._decoder.bytes_received
        if self._peer_window and received - self._last_ack >= self._peer_window:
            self._last_ack = received
            self._send(chunks.acknowledgement_message(received & 0xFFFFFFFF))

    def _send(self, message: Message) -> None:
        self.transport.write(self._encoder.encode(message))  # type: ignore[union-attr]

    def _send_command(self, csid: int, stream_id: int, *values: object) -> None:
        self._send(Message(csid, chunks.COMMAND_AMF0, stream_id, 0, amf0.encode(*values)))

    def _status(self, level: str, code: str, description: str, **extra: object) -> None:
        info: dict[str, object] = {"level": level, "code": code, "description": description}
        info.update(extra)
        self._send_command(CSID_STATUS, STREAM_ID, "onStatus", 0, None, info)

    # -- dispatch -------------------------------------------------------------------------------
    def _dispatch(self, m: Message) -> None:
        t = m.type_id
        if t == chunks.VIDEO:
            self._video(m.timestamp, m.payload)
        elif t == chunks.AUDIO:
            self._audio(m.timestamp, m.payload)
        elif t in (chunks.COMMAND_AMF0, chunks.COMMAND_AMF3):
            self._command(amf0.decode(_amf0_body(m)))
        elif t in (chunks.DATA_AMF0, chunks.DATA_AMF3):
            self._data(amf0.decode(_amf0_body(m)))
        elif t == chunks.USER_CONTROL:
            event, args = chunks.parse_user_control(m.payload)
            if event == chunks.PING_REQUEST and args:
                self._send(chunks.user_control_message(chunks.PING_RESPONSE, args[0]))
        elif t == chunks.WINDOW_ACK_SIZE:
            self._peer_window = chunks.parse_uint32(m.payload)
        elif t == chunks.AGGREGATE:
            base: int | None = None
            for type_id, ts, data in flv.split_aggregate(m.payload):
                # Tag timestamps in an aggregate are relative to its first tag: rebase them.
                base = ts if base is None else base
                ts = m.timestamp + ts - base
                self._dispatch(Message(m.csid, type_id, m.stream_id, ts, data))
        # Set Chunk Size and Abort are applied by the decoder; acks and bandwidth need nothing.

    # -- commands -------------------------------------------------------------------------------
    def _command(self, values: list[object]) -> None:
        if not values or not isinstance(values[0], str):
            raise ProtocolViolation("command message without a name")
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        args = values[2:]
        handler = getattr(self, f"command_{name}", None)
        if handler is None:
            log.debug("RTMP {peer}: ignoring command {name}", peer=self._peer, name=name)
            return
        handler(txn, args)

    def command_connect(self, txn: float, args: list[object]) -> None:
        obj = args[0] if args and isinstance(args[0], dict) else {}
        app = obj.get("app", "")
        self._app = app if isinstance(app, str) else ""
        self._send(chunks.window_ack_size_message(WINDOW_ACK_SIZE))
        self._send(chunks.set_peer_bandwidth_message(WINDOW_ACK_SIZE, 2))
        self._send(chunks.set_chunk_size_message(OUT_CHUNK_SIZE))
        self._encoder.set_chunk_size(OUT_CHUNK_SIZE)
        self._send_command(
            CSID_COMMAND,
            0,
            "_result",
            txn,
            {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
            {
                "level": "status",
                "code": "NetConnection.Connect.Success",
                "description": "Connection succeeded.",
                "objectEncoding": 0.0,
            },
        )

    def command_releaseStream(self, txn: float, args: list[object]) -> None:
        self._send_command(CSID_COMMAND, 0, "_result", txn, None, amf0.UNDEFINED)

    def command_FCPublish(self, txn: float, args: list[object]) -> None:
        name = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        self._send_command(
            CSID_COMMAND,
            0,
            "onFCPublish",
            0.0,
            None,
            {"code": "NetStream.Publish.Start", "description": name},
        )

    def command_createStream(self, txn: float, args: list[object]) -> None:
        self._send_command(CSID_COMMAND, 0, "_result", txn, None, float(STREAM_ID))

    def command_publish(self, txn: float, args: list[object]) -> None:
        raw = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        name = stream_key(raw)
        if self.stream is not None:
            raise ProtocolViolation("second publish on one connection")
        try:
            self.stream = self.registry.publish(
                name, PROVIDER_RTMP, on_terminate=lambda: self.drop("terminated")
            )
        except StreamError as err:
            log.warn(
                "RTMP {peer}: publish of {stream_name!r} refused: {info}",
                peer=self._peer,
                stream_name=name,
                info=err.info,
            )
            self._status("error", "NetStream.Publish.BadName", err.info, details=name)
            self.drop(f"publish refused: {err.info}")
            return
        log.info(
            "RTMP {peer}: publishing {stream_name} (app {app})",
            peer=self._peer,
            stream_name=name,
            app=self._app,
        )
        self._send(chunks.user_control_message(chunks.STREAM_BEGIN, STREAM_ID))
        self._status(
            "status",
            "NetStream.Publish.Start",
            f"{name} is now published.",
            details=name,
            clientid="wcs",
        )

    def _end_publish(self, reason: str) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.end(reason)

    def command_FCUnpublish(self, txn: float, args: list[object]) -> None:
        self._unpublish()

    def command_deleteStream(self, txn: float, args: list[object]) -> None:
        self._unpublish()

    def command_closeStream(self, txn: float, args: list[object]) -> None:
        self._unpublish()

    def _unpublish(self) -> None:
        if self.stream is None:
            return
        name = self.stream.name
        self._end_publish("Stopped by publisher stop")
        self._status("status", "NetStream.Unpublish.Success", f"{name} is now unpublished.")

    def command_play(self, txn: float, args: list[object]) -> None:
        self._status("error", "NetStream.Play.Failed", "RTMP play is not supported")

    def command_getStreamLength(self, txn: float, args: list[object]) -> None:
        self._send_command(CSID_COMMAND, 0, "_result", txn, None, 0.0)

    # -- data and media -------------------------------------------------------------------------
    def _data(self, values: list[object]) -> None:
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        # Some muxers (GStreamer's streamable flvmux) repeat it every keyframe: log it once.
        if (
            len(values) >= 2
            and values[0] == "onMetaData"
            and isinstance(values[1], dict)
            and not self._metadata_logged
        ):
            self._metadata_logged = True
            log.info(
                "RTMP {peer}: encoder {encoder!r}",
                peer=self._peer,
                encoder=values[1].get("encoder", "unknown"),
                metadata=values[1],
            )

    def _video(self, timestamp: int, payload: bytes) -> None:
        stream = self.stream
        if stream is None or not payload:
            return
        tag = flv.parse_video(payload)
        codec = flv.video_codec_name(tag)
        if codec != "H264":
            if stream.video is None or stream.video.codec != codec:
                stream.set_video_params(VideoParams(codec=codec))
            return  # decoding other codecs is not supported: the stream reports its codec
        if tag.avc_packet_type == 0:
            self._sequence_header(stream, tag.data)
            return
        if tag.avc_packet_type != 1 or stream.video is None or not stream.video.extradata:
            return
        nals = h264.split_avcc(tag.data, self._length_size)
        if not nals:
            return
        dts = self._timeline.unwrap(timestamp)
        stream.push(
            MediaUnit(
                kind="video",
                codec="H264",
                pts=dts + tag.composition_time,
                dts=dts,
                keyframe=tag.is_keyframe,
                data=h264.to_annexb(nals),
            )
        )

    def _sequence_header(self, stream: Stream, data: bytes) -> None:
        config = h264.parse_avcc(data)
        if not config.sps or not config.pps:
            raise ProtocolViolation("AVC sequence header without SPS or PPS")
        sps = h264.parse_sps(config.sps[0])
        self._length_size = config.length_size
        params = VideoParams(
            codec="H264",
            width=sps.width,
            height=sps.height,
            extradata=h264.to_annexb([*config.sps, *config.pps]),
            profile=h264.codec_string(sps),
        )
        if stream.video != params:
            stream.set_video_params(params)
            log.info(
                "RTMP {peer}: {stream_name} video H.264 {width}x{height} {profile}",
                peer=self._peer,
                stream_name=stream.name,
                width=sps.width,
                height=sps.height,
                profile=params.profile,
            )

    def _audio(self, timestamp: int, payload: bytes) -> None:
        stream = self.stream
        if stream is None or not payload:
            return
        tag = flv.parse_audio(payload)
        codec = flv.audio_codec_name(tag)
        if stream.audio_codec != codec:
            stream.set_audio_codec(codec)
        if tag.aac_packet_type == 0:
            return
        dts = self._timeline.unwrap(timestamp)
        stream.push(MediaUnit("audio", codec, dts, dts, True, tag.data))


class RTMPServerFactory(Factory):
    """Makes one RTMPServerProtocol per connection; counts them against MAX_CONNECTIONS."""

    noisy = False

    def __init__(self, registry: StreamRegistry, clock: IReactorTime | Any = None) -> None:
        self.registry = registry
        self.clock = clock
        self.connections = 0

    def buildProtocol(self, addr: Any) -> RTMPServerProtocol:  # type: ignore[override]
        proto = RTMPServerProtocol(self.registry)
        proto.factory = self
        if self.clock is not None:
            proto.callLater = self.clock.callLater  # type: ignore[assignment]
        return proto
