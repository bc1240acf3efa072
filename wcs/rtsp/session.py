"""The two kinds of RTSP session a connection may hold: an encoder's publish (ANNOUNCE, SETUP,
RECORD: tracks and their ingest) and a player's (SETUP, PLAY: one track and its RTP egress)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import SplitResult, unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from wcs.access import Client
from wcs.directory import InvalidName, StreamError, StreamNotFound, check_stream_name
from wcs.guard import guarded
from wcs.rtsp.egress import Player
from wcs.rtsp.ingest import RtpIngest, Track
from wcs.rtsp.message import (
    InterleavedFrame,
    RtspParseError,
    RtspRequest,
    TransportSpec,
    parse_transport,
)
from wcs.rtsp.udp import UdpPair, UdpPoolExhausted
from wcs.streams import PROVIDER_RTSP, Stream

if TYPE_CHECKING:
    from wcs.rtsp.server import RTSPServerProtocol

__all__ = [
    "PLAY_CONTROL",
    "RTP_PROFILES",
    "PlayerSession",
    "PublisherSession",
    "Reply",
    "stream_name_from_url",
]

log = Logger(namespace="wcs.rtsp")

PLAY_CONTROL: Final = "trackID=0"
RTP_PROFILES: Final = frozenset({"RTP/AVP", "RTP/AVPF"})

# Session states.
ANNOUNCED: Final = "announced"  # name reserved, tracks being set up
RECORDING: Final = "recording"
PLAY_READY: Final = "play-ready"  # a player's track is set up
PLAYING: Final = "playing"


@dataclass
class Reply:
    """The answer to one request, before the connection adds CSeq, Server and Session."""

    status: int
    reason: str | None = None
    headers: list[tuple[str, str]] | None = None
    body: bytes = b""


def stream_name_from_url(url: str) -> tuple[str, str]:
    """(app, stream name) of ``rtsp://host[:port]/<app>/<name>[?query]`` (or ``/<name>``).

    The name is the last non-empty path segment, percent-decoded, without the query (as RTMP's
    stream key); raises InvalidName when there is none or it is not a valid stream name.
    """
    segments = [unquote(s) for s in _split_url(url).path.split("/") if s]
    if not segments:
        raise InvalidName("the URL has no stream name")
    name = segments[-1]
    check_stream_name(name)
    return "/".join(segments[:-1]), name


def _split_url(url: str) -> SplitResult:
    """urlsplit, with its ValueError (e.g. "Invalid IPv6 URL") as InvalidName."""
    try:
        return urlsplit(url)
    except ValueError as err:
        raise InvalidName(f"unusable URL: {err}") from None


def url_key(url: str) -> str:
    """A URL without scheme and authority, trailing slash dropped: clients spell hosts freely."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url  # matches no announced URL
    key = parts.path.rstrip("/")
    if parts.query:
        key += "?" + parts.query.rstrip("/")
    return key


def transport_specs(req: RtspRequest) -> list[TransportSpec] | Reply:
    """The alternatives of a SETUP's Transport header, or the reply refusing it."""
    value = req.headers.get("Transport")
    if not value:
        return Reply(400, "Missing Transport")
    try:
        return parse_transport(value)
    except RtspParseError as err:
        return Reply(err.status, err.reason)


def tracks_text(tracks: list[Track]) -> str:
    return ", ".join(f"{t.kind} {t.codec}" for t in tracks) or "no tracks"


@dataclass(eq=False)
class TrackTransport:
    """How one set-up track arrives: interleaved channels on this connection, or a UDP pair."""

    index: int
    spec: TransportSpec
    udp: UdpPair | None = None
    rtp_source: tuple[str, int] | None = None  # latched on the first accepted UDP packet
    stray: int = 0


class PublisherSession:
    """An encoder publishing one stream: ANNOUNCE made it, SETUP adds tracks (interleaved or
    UDP), RECORD starts the ingest. Ends with `close`, which ends the stream."""

    def __init__(
        self,
        proto: RTSPServerProtocol,
        app: str,
        name: str,
        msid: str,
        tracks: list[Track],
        aggregate: str,
        track_urls: list[str],
    ) -> None:
        self.proto = proto
        self.app = app
        self.name = name
        self.msid = msid
        self.tracks = tracks
        self.aggregate_key = url_key(aggregate)
        self.track_keys = [url_key(url) for url in track_urls]
        self.state = ANNOUNCED
        self.session_id: str | None = None  # from the first SETUP on
        self.stream: Stream | None = None
        self.transports: dict[int, TrackTransport] = {}
        self.channels: dict[int, tuple[int, bool]] = {}  # interleaved channel -> (track, rtcp?)
        self.ingest: RtpIngest | None = None

    def drop(self, reason: str) -> None:
        self.proto.drop(reason)

    # -- the stream -----------------------------------------------------------------------------
    def publish(self, client: Client) -> Deferred[Reply | None]:
        """Take the stream name (asking the directory): None when this session now publishes
        it, else the refusal."""

        def published(stream: Stream) -> Reply | None:
            if self.proto.closing:
                stream.end()  # named for a client that left meanwhile
                return Reply(503, "Connection closing")
            self.stream = stream
            # Whatever ends the stream from the server's side (/stream/terminate, shutdown, the
            # publish idle watchdog, with or without RECORD) closes this connection with its
            # reason.
            stream.on_end(self._stream_ended)
            self.proto.factory.access.track(client, stream)
            return None

        def refused(failure: Failure) -> Reply:
            failure.trap(StreamError)
            err = failure.value
            assert isinstance(err, StreamError)
            log.warn(
                "RTSP {peer}: publish of {stream_name!r} refused: {info}",
                peer=self.proto.peer,
                stream_name=self.name,
                info=err.info,
            )
            return Reply(400 if isinstance(err, InvalidName) else 403, err.info)

        published_stream = self.proto.hub.publish(
            self.name, PROVIDER_RTSP, media_session_id=self.msid
        )
        return published_stream.addCallbacks(published, refused)

    def _stream_ended(self, stream: Stream) -> None:
        if stream is self.stream:  # not our own close, which lets go of it first
            self.proto.drop(f"the server ended {stream.name}: {stream.end_reason}")

    def close(self, reason: str) -> None:
        """End the stream with `reason` and release the session's ports."""
        stream, self.stream = self.stream, None
        ingest, self.ingest = self.ingest, None
        for transport in self.transports.values():
            if transport.udp is not None:
                transport.udp.release()
        self.transports.clear()
        self.channels.clear()
        self.session_id = None
        if stream is not None:
            if ingest is not None:
                log.debug(
                    "RTSP {peer}: {stream_name} received {stats}",
                    peer=self.proto.peer,
                    stream_name=stream.name,
                    stats=ingest.stats(),
                )
            stream.end(reason)

    # -- requests -------------------------------------------------------------------------------
    def _track_of(self, uri: str) -> int | None:
        key = url_key(uri)
        for index, track_key in enumerate(self.track_keys):
            if track_key == key:
                return index
        return None

    def setup(self, req: RtspRequest) -> Reply:
        if self.state == RECORDING:
            return Reply(455, "Cannot add tracks while recording")
        index = self._track_of(req.uri)
        if index is None:
            if url_key(req.uri) == self.aggregate_key:
                return Reply(459, "SETUP needs a track URL")
            return Reply(404, "No such track")
        if index in self.transports:
            return Reply(455, "Track already set up")
        if self.session_id is not None and req.headers.get("Session") is None:
            return Reply(454, "Session header missing")
        specs = transport_specs(req)
        if isinstance(specs, Reply):
            return specs
        chosen: TrackTransport | None = None
        exhausted = False
        refusal: str | None = None
        for spec in specs:
            if spec.protocol not in RTP_PROFILES or spec.multicast:
                continue
            if spec.mode not in (None, "RECORD"):
                continue
            if spec.lower == "TCP":
                chosen = self._setup_tcp(index, spec)
                if chosen is None:
                    refusal = "No free interleaved channels"
                    continue
            else:
                refusal = self._udp_refusal(spec)
                if refusal is not None:
                    continue
                try:
                    chosen = self._setup_udp(index, spec)
                except UdpPoolExhausted as err:
                    exhausted = True
                    log.warn(
                        "RTSP {peer}: no UDP ports for {stream_name}: {reason}",
                        peer=self.proto.peer,
                        stream_name=self.stream.name if self.stream else None,
                        reason=str(err),
                    )
                    continue
            break
        if chosen is None:
            reason = "UDP port pool exhausted, use TCP" if exhausted else refusal
            return Reply(461, reason)
        self.transports[index] = chosen
        if self.session_id is None:
            self.session_id = secrets.token_hex(8).upper()
        return Reply(200, headers=[("Transport", chosen.spec.to_header())])

    def _udp_refusal(self, spec: TransportSpec) -> str | None:
        """Why this UDP alternative cannot be set up (None: it can)."""
        ports = spec.client_port
        # ffmpeg, GStreamer and live555 send an RTP port and the next one for RTCP (or one
        # port for both); 0 or a reversed range is not a port to send from.
        if ports is not None and (ports[0] < 1 or ports[1] not in (ports[0], ports[0] + 1)):
            return f"Bad client_port {ports[0]}-{ports[1]}"
        held = sum(1 for t in self.transports.values() if t.udp is not None)
        limit = self.proto.factory.max_session_udp_pairs
        if held >= limit:
            return f"At most {limit} UDP tracks per session, use TCP"
        return None

    def _setup_tcp(self, index: int, spec: TransportSpec) -> TrackTransport | None:
        pair = spec.interleaved
        if (
            pair is None
            or pair[1] != pair[0] + 1
            or pair[0] in self.channels
            or pair[1] in self.channels
        ):
            # Absent, not an RTP/RTCP pair, or taken: pick the lowest free pair (the answer
            # tells the client).
            first = next(
                (
                    c
                    for c in range(0, 256, 2)
                    if c not in self.channels and c + 1 not in self.channels
                ),
                None,
            )
            if first is None:
                return None
            pair = (first, first + 1)
        self.channels[pair[0]] = (index, False)
        self.channels[pair[1]] = (index, True)
        answer = TransportSpec(protocol=spec.protocol, lower="TCP", interleaved=pair, mode="RECORD")
        return TrackTransport(index, answer)

    def _setup_udp(self, index: int, spec: TransportSpec) -> TrackTransport:
        udp = self.proto.factory.udp_pool.allocate(
            lambda data, addr: self._udp_rtp(index, data, addr),
            lambda data, addr: self._udp_rtcp(index, data, addr),
        )
        answer = TransportSpec(
            protocol=spec.protocol,
            lower="UDP",
            client_port=spec.client_port,
            server_port=(udp.rtp_port, udp.rtcp_port),
            mode="RECORD",
        )
        return TrackTransport(index, answer, udp=udp)

    def record(self, req: RtspRequest) -> Reply:
        if self.state == RECORDING:
            return Reply(200)
        if not self.transports:
            return Reply(455, "RECORD before SETUP")
        if req.headers.get("Session") is None:
            return Reply(454, "Session header missing")
        key = url_key(req.uri)
        track = self._track_of(req.uri)
        if key != self.aggregate_key and not (track is not None and len(self.transports) == 1):
            if track is not None:
                return Reply(460)
            return Reply(404, "Not the announced URL")
        stream = self.stream
        assert stream is not None
        reliable = all(t.udp is None for t in self.transports.values())
        self.ingest = RtpIngest(stream, self.tracks, reliable=reliable)
        self.state = RECORDING
        video = stream.video
        log.info(
            "RTSP {peer}: publishing {stream_name} (app {app}) over {transport}: {tracks}{size}",
            peer=self.proto.peer,
            stream_name=stream.name,
            app=self.app,
            transport="TCP" if reliable else "UDP",
            tracks=tracks_text([self.tracks[i] for i in sorted(self.transports)]),
            size=f", {video.width}x{video.height}" if video and video.width else "",
        )
        return Reply(200)

    # -- media in -------------------------------------------------------------------------------
    def frame(self, frame: InterleavedFrame) -> bool:
        """Feed an interleaved RTP/RTCP frame to its track; False if no recording track has it."""
        target = self.channels.get(frame.channel)
        if target is None or self.ingest is None:
            return False
        self.proto.touch()
        index, rtcp = target
        if rtcp:
            self.ingest.rtcp(index, frame.payload)
        else:
            self.ingest.rtp(index, frame.payload)
        return True

    @guarded
    def _udp_rtp(self, index: int, data: bytes, addr: tuple[str, int]) -> None:
        transport = self.transports.get(index)
        if transport is None or self.ingest is None or self.proto.closing:
            return
        # Only the publisher may feed its tracks: a stray sender's SSRC would make the
        # depacketizer restart and drop frames. The first packet latches the source port.
        if addr[0] != self.proto.peer_host or transport.rtp_source not in (None, addr):
            transport.stray += 1
            if transport.stray == 1:
                log.warn(
                    "RTSP {peer}: {stream_name}: ignoring RTP from {source} (not the publisher)",
                    peer=self.proto.peer,
                    stream_name=self.stream.name if self.stream else None,
                    source=f"{addr[0]}:{addr[1]}",
                )
            return
        transport.rtp_source = addr
        self.proto.touch()
        self.ingest.rtp(index, data)

    @guarded
    def _udp_rtcp(self, index: int, data: bytes, addr: tuple[str, int]) -> None:
        if self.ingest is None or self.proto.closing or addr[0] != self.proto.peer_host:
            return
        self.proto.touch()
        self.ingest.rtcp(index, data)


class PlayerSession:
    """A player watching one live stream's H.264: SETUP of its one track made it (RTP
    interleaved on the connection), PLAY starts the egress. Ends with `close`."""

    def __init__(self, proto: RTSPServerProtocol, stream: Stream, spec: TransportSpec) -> None:
        pair = spec.interleaved or (0, 1)
        self.proto = proto
        self.stream = stream
        self.channel = pair[0]
        self.answer = TransportSpec(protocol=spec.protocol, lower="TCP", interleaved=pair)
        self.state = PLAY_READY
        self.session_id: str | None = secrets.token_hex(8).upper()
        self.player: Player | None = None

    def drop(self, reason: str) -> None:
        self.proto.drop(reason)

    def write(self, data: bytes) -> None:
        self.proto.transport.write(data)  # type: ignore[union-attr]

    # -- requests -------------------------------------------------------------------------------
    def setup(self, req: RtspRequest) -> Reply:
        return Reply(455, "The stream's one track is already set up")

    def play(self, req: RtspRequest) -> Reply:
        if self.state == PLAYING:
            return Reply(200)
        if req.headers.get("Session") is None:
            return Reply(454, "Session header missing")
        stream = self.stream
        if stream.ended:
            self.proto.end_session("")
            return Reply(404, StreamNotFound.info)
        self.state = PLAYING
        player = self.player = Player(self, stream, self.channel)
        rtp_info = (
            f"url={req.uri.split('?', 1)[0].rstrip('/')}/{PLAY_CONTROL};"
            f"seq={player.packetizer.seq};rtptime={player.packetizer.timestamp_offset}"
        )
        log.info(
            "RTSP {peer}: playing {stream_name} over TCP",
            peer=self.proto.peer,
            stream_name=stream.name,
        )
        # The reply goes out first; then the cached GOP and live units follow it.
        self.proto.reactor.callLater(0, self._start_player, player)
        return Reply(200, headers=[("Range", "npt=0.000-"), ("RTP-Info", rtp_info)])

    @guarded
    def _start_player(self, player: Player) -> None:
        if self.player is not player or self.proto.closing:
            return
        if player.stream.ended:  # between the PLAY answer and now
            self.player_stream_ended(player)
            return
        self.proto.transport.registerProducer(player, True)  # type: ignore[union-attr]
        player.registered = True
        player.attach()

    def detach_player(self, player: Player) -> None:
        """Feed the player no more."""
        player.detach()

    # -- the player's news ----------------------------------------------------------------------
    def frame(self, frame: InterleavedFrame) -> bool:
        """A player's RTCP receiver reports: it is still there. Before PLAY, a stray frame."""
        if self.player is None:
            return False
        self.proto.touch()
        return True

    def player_failed(self, player: Player, reason: str) -> None:
        self.detach_player(player)
        self.proto.drop(f"playing {player.stream.name} failed: {reason}")

    def player_stream_ended(self, player: Player) -> None:
        """The played stream is over: say BYE and close, so the player ends too."""
        if self.player is not player:
            return
        self.write(player.bye())
        log.info(
            "RTSP {peer}: {stream_name} ended, closing the player",
            peer=self.proto.peer,
            stream_name=player.stream.name,
        )
        self.proto.finish()

    def close(self, reason: str) -> None:
        """Stop playing (`reason` is for a publisher's stream: a player ends none)."""
        player, self.player = self.player, None
        self.session_id = None
        if player is None:
            return
        self.detach_player(player)
        if player.registered:  # not when TEARDOWN comes before the player started
            self.proto.transport.unregisterProducer()  # type: ignore[union-attr]
        log.info(
            "RTSP {peer}: stopped playing {stream_name} ({sent} units sent, {dropped} "
            "dropped for a slow connection)",
            peer=self.proto.peer,
            stream_name=player.stream.name,
            sent=player.sent_units,
            dropped=player.dropped_units,
        )
