"""RTMP server protocol: bytes through the pure parsers, commands answered, media to a Stream."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from wcs.access import Access, Client, Refused
from wcs.directory import StreamError, check_stream_name
from wcs.guard import guarded
from wcs.media import h264
from wcs.media.units import MediaUnit, VideoParams
from wcs.rtmp import amf0, chunks, flv
from wcs.rtmp.chunks import BufferBudget, ChunkDecoder, ChunkEncoder, Message
from wcs.rtmp.handshake import HandshakeError, ServerHandshake
from wcs.streams import PROVIDER_RTMP, Stream, StreamHub

log = Logger(namespace="wcs.rtmp")

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
# After our last words (a refused publish), the peer gets this long to read them before we abort.
CLOSE_TIMEOUT = 5.0
MAX_CONNECTIONS = 1000
# A 4K keyframe from x264 at a streaming bitrate is 1-3 MB; 6 MiB leaves room for high-quality
# ones. One connection may hold that plus interleaved audio/data partials in 8 MiB; ffmpeg and
# OBS use fewer than 10 chunk streams.
MAX_MESSAGE_SIZE = 6 * 1024 * 1024
MAX_CONNECTION_BUFFER = 8 * 1024 * 1024
MAX_CHUNK_STREAMS = 16
# All RTMP connections together: 16 connections at their cap, or hundreds of publishers each in
# the middle of an ordinary frame; a flood of connections cannot take more than this.
MAX_SERVER_BUFFER = 128 * 1024 * 1024
# Every message costs a dispatch however small it is (4 MB of empty messages took 21 s of CPU):
# a token bucket of messages per connection. Encoders send ~100/s (60 fps video + audio); the
# burst covers a backlog of tens of seconds after a stall.
MESSAGE_RATE = 1000.0
MESSAGE_BURST = 5000
# AMF0 decoding costs up to ~0.6 us per byte (a dispatch ~5 us): a command or data message
# also costs one token per this many bytes, so a 40 KB onMetaData with a keyframe index fits
# the burst while megabytes of AMF0 a second do not.
AMF0_BYTES_PER_TOKEN = 32
MAX_AGGREGATE_TAGS = 1000
# 8K with one slice per macroblock row is ~300 NAL units; zero-length ones count too (each is a
# 1-4 byte prefix the splitter loops over).
MAX_NALS_PER_FRAME = 1024
# A broken frame or sequence header is dropped and the publish goes on; this many malformed
# media messages in a row (10 s of 30 fps video, longer than any keyframe interval a broken
# GOP could last) means the encoder is broken, and the connection is closed.
MAX_BAD_MEDIA_RUN = 300
OUT_CHUNK_SIZE = 4096
WINDOW_ACK_SIZE = 2_500_000
STREAM_ID = 1
CSID_COMMAND = 3
CSID_STATUS = 5
# Messages a client may send while the server waits for the hook app (connect, publish): more
# means it does not wait for answers, which no encoder does.
MAX_HELD_MESSAGES = 256
MAX_QUERY_FIELDS = 32
# What an aggregate message may carry: FLV tags are audio, video or script data.
_AGGREGATABLE = frozenset({chunks.AUDIO, chunks.VIDEO, chunks.DATA_AMF0, chunks.DATA_AMF3})
_START_CODE_PREFIX = b"\x00\x00\x01"


class ProtocolViolation(ValueError):
    """The peer broke the protocol or a limit; the connection is dropped with this reason."""


class _MessageRate:
    """Token bucket of messages for one connection (`rate` per second, `burst` saved up)."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._now = now
        self._last = now()
        self.tokens = float(burst)

    def available(self) -> int:
        now = self._now()
        self.tokens = min(float(self.burst), self.tokens + (now - self._last) * self.rate)
        self._last = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        self.tokens -= n
        if self.tokens < 0:
            raise self.exceeded()

    def exceeded(self) -> ProtocolViolation:
        return ProtocolViolation(
            f"more than {self.rate:.0f} messages per second (burst {self.burst})"
        )


def stream_key(name: str) -> str:
    """The stream name of an RTMP publish name: the key without its `?query`."""
    return name.split("?", 1)[0]


def query_params(text: str) -> dict[str, str]:
    """The `?a=1&b=2` parameters of an RTMP app or publish name (the first of repeated keys)."""
    query = text.split("?", 1)[1] if "?" in text else ""
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS):
        params.setdefault(key, value)
    return params


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
    """One RTMP connection (an encoder publishing one stream).

    Whatever the peer's bytes make this class raise closes this connection with a logged reason
    (:func:`wcs.guard.guarded` on ``dataReceived``); a malformed media message is dropped and
    counted on the stream instead, until MAX_BAD_MEDIA_RUN of them come in a row.
    """

    factory: RTMPServerFactory

    def __init__(
        self,
        hub: StreamHub,
        *,
        clock: IReactorTime | None = None,
        buffer_budget: BufferBudget | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.hub = hub
        self.callLater = clock.callLater  # type: ignore[assignment]
        self._handshake: ServerHandshake | None = ServerHandshake()
        self._decoder = ChunkDecoder(
            max_message_size=MAX_MESSAGE_SIZE,
            max_chunk_streams=MAX_CHUNK_STREAMS,
            max_buffered=MAX_CONNECTION_BUFFER,
            budget=buffer_budget,
        )
        self._rate = _MessageRate(MESSAGE_RATE, MESSAGE_BURST, clock.seconds)
        self._encoder = ChunkEncoder()
        self._peer = "?"
        self._app = ""
        self._peer_window = 0
        self._last_ack = 0
        self.stream: Stream | None = None
        self._length_size = 4
        # True once a valid AVC sequence header set the decoder parameters frames need.
        self._avc_ready = False
        self._bad_media_run = 0
        self._timeline = _Timeline()
        self._dropping = False
        self._close_call: IDelayedCall | None = None
        self._metadata_logged = False
        # Access (publish password, REST hooks): the client as the hook app sees it, and the
        # messages held back while an answer is pending.
        self._client: Client | None = None
        self._connected = False
        self._publish_asked = False
        self._waiting = False
        self._held: list[Message] = []
        self._lost = False

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

    def drop(self, reason: str, *, flush: bool = False) -> None:
        """Close this connection (and only this one) with a logged reason.

        ``flush``: let the peer read what was written last (a refusal) before closing, but
        abort if it has not within CLOSE_TIMEOUT. Input after this is ignored either way.
        """
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
        self._decoder.close()
        transport = self.transport
        assert transport is not None
        if flush:
            transport.loseConnection()
            self._close_call = self.callLater(CLOSE_TIMEOUT, transport.abortConnection)  # type: ignore[attr-defined]
        else:
            transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._held = []
        self.factory.connections -= 1
        self.setTimeout(None)
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self._close_call = None
        self._decoder.close()
        # Drops the protocol -> stream reference too, so nothing of an ended connection needs
        # the cycle collector (the stream holds our on_terminate callback).
        self._end_publish("Stopped by publisher stop")

    @guarded
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
        allowance = self._rate.available()
        try:
            messages = self._decoder.feed(data, max_messages=allowance)
        except chunks.TooManyMessages:
            raise self._rate.exceeded() from None
        self._rate.spend(len(messages))
        self._dispatch_all(messages)
        self._maybe_ack()

    def _dispatch_all(self, messages: list[Message]) -> None:
        for i, message in enumerate(messages):
            if self._dropping:
                return
            if self._waiting:
                self._hold(messages[i:])
                return
            self._dispatch(message)

    def _hold(self, messages: list[Message]) -> None:
        """Keep messages until the pending access decision; stop reading meanwhile."""
        if not self._held:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._held.extend(messages)
        if len(self._held) > MAX_HELD_MESSAGES:
            raise ProtocolViolation(
                f"more than {MAX_HELD_MESSAGES} messages sent while authorization was pending"
            )

    def _await(
        self,
        decision: Deferred[Any],
        accepted: Callable[[Any], None],
        refused: Callable[[Refused | StreamError], None],
    ) -> None:
        """Go on with `accepted(result)` or `refused(error)` once `decision` fires; messages that
        arrive meanwhile are held and handled after, in order."""
        self._waiting = True

        def decided(result: object) -> None:
            self._waiting = False
            if self._dropping or self._lost:
                if isinstance(result, Stream):
                    result.end()  # named for a publisher that left meanwhile
                return
            if isinstance(result, Failure):
                if not result.check(Refused, StreamError):
                    # Not an answer but a fault (a directory or hook transport error): this
                    # connection ends with a reason; nothing is left waiting.
                    self.drop(f"could not decide: {result.getErrorMessage()}")
                    return
                refused(result.value)  # type: ignore[arg-type]
            else:
                accepted(result)
            self._release_held()

        decision.addBoth(decided)

    @guarded
    def _release_held(self) -> None:
        held, self._held = self._held, []
        if held and not self._dropping:
            self.transport.resumeProducing()  # type: ignore[union-attr]
            self._dispatch_all(held)

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
        if m.type_id == chunks.AGGREGATE:
            self._aggregate(m)
        else:
            self._dispatch_one(m)

    def _dispatch_one(self, m: Message) -> None:
        t = m.type_id
        if t == chunks.VIDEO:
            self._video(m.timestamp, m.payload)
        elif t == chunks.AUDIO:
            self._audio(m.timestamp, m.payload)
        elif t in (chunks.COMMAND_AMF0, chunks.COMMAND_AMF3):
            self._command(self._amf0(m))
        elif t in (chunks.DATA_AMF0, chunks.DATA_AMF3):
            self._data(self._amf0(m))
        elif t == chunks.USER_CONTROL:
            event, args = chunks.parse_user_control(m.payload)
            if event == chunks.PING_REQUEST and args:
                self._send(chunks.user_control_message(chunks.PING_RESPONSE, args[0]))
        elif t == chunks.WINDOW_ACK_SIZE:
            self._peer_window = chunks.parse_uint32(m.payload)
        # Set Chunk Size and Abort are applied by the decoder; acks and bandwidth need nothing.

    def _amf0(self, m: Message) -> list[object]:
        body = _amf0_body(m)
        # Decoding costs far more per byte than anything else a peer can send.
        self._rate.spend(len(body) // AMF0_BYTES_PER_TOKEN)
        return amf0.decode(body)

    def _aggregate(self, m: Message) -> None:
        """Dispatch the FLV tags of an aggregate message, flat: an aggregate inside one is
        refused (no muxer writes one; it is how a 3000-deep recursion was built)."""
        try:
            tags = flv.split_aggregate(m.payload, max_tags=MAX_AGGREGATE_TAGS)
        except flv.FLVError as err:
            self._bad_media(f"aggregate message: {err}")
            return
        self._rate.spend(len(tags))
        base: int | None = None
        for type_id, ts, data in tags:
            if type_id not in _AGGREGATABLE:
                raise ProtocolViolation(
                    f"aggregate message holds a message of type {type_id} "
                    "(only audio, video and data messages may be aggregated)"
                )
            # Tag timestamps in an aggregate are relative to its first tag: rebase them.
            base = ts if base is None else base
            ts = (m.timestamp + ts - base) & 0xFFFFFFFF
            self._dispatch_one(Message(m.csid, type_id, m.stream_id, ts, data))
            if self._dropping:
                return

    # -- commands -------------------------------------------------------------------------------
    def _command(self, values: list[object]) -> None:
        if not values or not isinstance(values[0], str):
            raise ProtocolViolation("command message without a name")
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
        args = values[2:]
        handler = getattr(self, f"command_{name}", None)
        if handler is None:
            log.debug("RTMP {peer}: ignoring command {name!r}", peer=self._peer, name=name[:100])
            return
        handler(txn, args)

    def command_connect(self, txn: float, args: list[object]) -> None:
        if self._client is not None:
            raise ProtocolViolation("second connect on one connection")
        obj = args[0] if args and isinstance(args[0], dict) else {}
        app = obj.get("app", "")
        app = app if isinstance(app, str) else ""
        tc_url = obj.get("tcUrl", "")
        # Keys may ride on the app (rtmp://host/live?key=k/name) or on the tcUrl.
        custom = query_params(tc_url if isinstance(tc_url, str) else "")
        custom.update(query_params(app))
        custom.pop("password", None)  # a publish password is checked, never passed on
        self._app = stream_key(app)
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        self._client = Client(
            session_id=Client.session_id_of(peer, transport.getHost()),
            provider=PROVIDER_RTMP,
            address=str(getattr(peer, "host", "?")),
            app_key=self._app,
            custom=custom,
        )
        self._await(
            self.factory.access.connect(self._client),
            lambda _: self._connect_accepted(txn),
            lambda err: self._connect_refused(txn, err.info),
        )

    def _connect_refused(self, txn: float, info: str) -> None:
        self._send_command(
            CSID_COMMAND,
            0,
            "_error",
            txn,
            None,
            {"level": "error", "code": "NetConnection.Connect.Rejected", "description": info},
        )
        self.drop(f"connect refused: {info}", flush=True)

    def _connect_accepted(self, txn: float) -> None:
        self._connected = True
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
        if self.stream is not None or self._publish_asked:
            raise ProtocolViolation("second publish on one connection")
        if self._client is None or not self._connected:
            raise ProtocolViolation("publish before the connection was accepted")
        self._publish_asked = True
        try:
            check_stream_name(name)
        except StreamError as err:
            self._refuse_publish(name, "NetStream.Publish.BadName", err.info)
            return
        params = query_params(raw)
        password = params.pop("password", None)
        client = self._client.with_custom(params)
        msid = str(uuid.uuid4())
        decision = self.factory.access.publish(client, name, msid, password)
        # Allowed: the directory is asked for the name, and the reply waits for it too.

        def claim(_: object) -> Deferred[Stream] | None:
            if self._dropping or self._lost:
                return None  # gone while the hooks decided: claim nothing
            return self.hub.publish(
                name, PROVIDER_RTMP, media_session_id=msid, on_terminate=self._terminated
            )

        decision.addCallback(claim)
        self._await(
            decision,
            lambda stream: self._start_publish(client, stream),
            lambda err: self._refuse_publish(
                name,
                "NetStream.Publish.BadName"
                if isinstance(err, StreamError)
                else "NetStream.Publish.Unauthorized",
                err.info,
            ),
        )

    def _refuse_publish(self, name: str, code: str, info: str) -> None:
        log.warn(
            "RTMP {peer}: publish of {stream_name!r} refused: {info}",
            peer=self._peer,
            stream_name=name,
            info=info,
        )
        self._status("error", code, info, details=name)
        # The encoder must read the refusal (ffmpeg prints its description), so the
        # connection closes after the write instead of being reset under it.
        self.drop(f"publish refused: {info}", flush=True)

    def _start_publish(self, client: Client, stream: Stream) -> None:
        self.stream = stream
        name = stream.name
        self.factory.access.track(client, stream)
        self._avc_ready = False
        self._bad_media_run = 0
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

    def _terminated(self, reason: str | None = None) -> None:
        """The hub ends this publish (REST terminate, shutdown, the publish idle watchdog):
        close the connection, saying why (``reason``, else the stream's end reason)."""
        stream = self.stream
        why = reason or (stream.end_reason if stream is not None else "") or "stopped by server"
        self.drop(f"publish terminated: {why}")

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

    def _bad_media(self, reason: str) -> None:
        """Drop one malformed media message (counted on the stream); close the connection only
        after MAX_BAD_MEDIA_RUN of them in a row."""
        stream = self.stream
        if stream is None:
            return  # media before publish is ignored, malformed or not
        stream.reject_unit(reason)
        self._bad_media_run += 1
        if self._bad_media_run >= MAX_BAD_MEDIA_RUN:
            raise ProtocolViolation(
                f"{self._bad_media_run} malformed media messages in a row, the last: {reason}"
            )

    def _push(self, stream: Stream, unit: MediaUnit) -> None:
        self._bad_media_run = 0
        stream.push(unit)

    def _video(self, timestamp: int, payload: bytes) -> None:
        stream = self.stream
        if stream is None or not payload:
            return
        try:
            tag = flv.parse_video(payload)
        except flv.FLVError as err:
            self._bad_media(f"video message: {err}")
            return
        codec = flv.video_codec_name(tag)
        if codec != "H264":
            self._avc_ready = False
            if stream.video is None or stream.video.codec != codec:
                stream.set_video_params(VideoParams(codec=codec))
            return  # decoding other codecs is not supported: the stream reports its codec
        if tag.avc_packet_type == flv.AVC_SEQUENCE_HEADER:
            self._sequence_header(stream, tag.data)
            return
        if tag.avc_packet_type != flv.AVC_NALU or not self._avc_ready:
            return
        try:
            nals = h264.split_avcc(tag.data, self._length_size, max_nals=MAX_NALS_PER_FRAME)
            for nal in nals:
                if _START_CODE_PREFIX in nal:
                    # Would split the Annex B access unit every consumer gets (7.4.1 forbids it).
                    raise h264.H264Error("NAL unit contains an unescaped start code 00 00 01")
        except h264.H264Error as err:
            self._bad_media(f"H.264 frame: {err}")
            return
        if not nals:
            return
        dts = self._timeline.unwrap(timestamp)
        self._push(
            stream,
            MediaUnit(
                kind="video",
                codec="H264",
                pts=dts + tag.composition_time,
                dts=dts,
                keyframe=tag.is_keyframe,
                data=h264.to_annexb(nals),
            ),
        )

    def _sequence_header(self, stream: Stream, data: bytes) -> None:
        try:
            config = h264.parse_avcc(data)
            if not config.sps or not config.pps:
                raise h264.H264Error("AVC sequence header without SPS or PPS")
            sps = h264.parse_sps(config.sps[0], max_pixels=stream.max_picture_pixels)
        except h264.H264Error as err:
            # Frames need the parameters this header should have set: the stream's video is
            # refused until a valid header comes (audio goes on), and no picture from before
            # it is served as if it were current.
            if self._avc_ready:
                stream.clear_video()
            self._avc_ready = False
            self._bad_media(f"AVC sequence header refused, video dropped until a valid one: {err}")
            return
        self._avc_ready = True
        self._length_size = config.length_size
        self._bad_media_run = 0
        params = h264.h264_video_params_of(sps, config.sps, config.pps)
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
        try:
            tag = flv.parse_audio(payload)
        except flv.FLVError as err:
            self._bad_media(f"audio message: {err}")
            return
        codec = flv.audio_codec_name(tag)
        if stream.audio_codec != codec:
            stream.set_audio_codec(codec)
        if tag.aac_packet_type == flv.AAC_SEQUENCE_HEADER:
            return
        dts = self._timeline.unwrap(timestamp)
        self._push(stream, MediaUnit("audio", codec, dts, dts, True, tag.data))


class RTMPServerFactory(Factory):
    """Makes one RTMPServerProtocol per connection; counts them against MAX_CONNECTIONS and
    owns the budget of bytes all of them together may buffer in partial messages."""

    noisy = False

    def __init__(
        self,
        hub: StreamHub,
        clock: IReactorTime | Any = None,
        *,
        max_buffer: int = MAX_SERVER_BUFFER,
        access: Access | None = None,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.connections = 0
        self.buffer_budget = BufferBudget(max_buffer)
        if access is None:
            from twisted.internet import reactor

            access = Access(clock if clock is not None else reactor)
        self.access = access

    def buildProtocol(self, addr: Any) -> RTMPServerProtocol:  # type: ignore[override]
        proto = RTMPServerProtocol(self.hub, clock=self.clock, buffer_budget=self.buffer_budget)
        proto.factory = self
        return proto
