"""RTP egress to one RTSP player: a live stream's H.264 packetized (RFC 6184) onto the player's
interleaved channel; the transport's flow control pauses the player's stream reader."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from wcs.media import h264
from wcs.media.units import MediaUnit
from wcs.rtsp.h264rtp import CLOCK_RATE, H264Packetizer
from wcs.rtsp.message import build_interleaved
from wcs.rtsp.rtp import Bye
from wcs.streams import Reader, Stream

if TYPE_CHECKING:
    from wcs.rtsp.session import PlayerSession

__all__ = ["MAX_PLAYER_QUEUE", "PLAY_MTU", "PLAY_PAYLOAD_TYPE", "Player"]

PLAY_PAYLOAD_TYPE: Final = 96
# RTP packets to players stay below a typical path MTU even inside TCP.
PLAY_MTU: Final = 1400
# Units a player whose connection is full may fall behind by (10 s at 30 fps) before its reader
# skips to the next keyframe.
MAX_PLAYER_QUEUE: Final = 300


@implementer(IPushProducer)
class Player:
    """Sends one live stream's H.264 to one player as RTP on an interleaved channel.

    It reads the stream (`attach`, `detach`, by its PlayerSession) from the newest cached
    keyframe (the stream's GOP, sent at once so the player shows a picture immediately), then
    relays live units. Keyframes get the stream's SPS/PPS in front when they lack them (RTMP
    sends them only in the sequence header).
    """

    def __init__(self, session: PlayerSession, stream: Stream, channel: int) -> None:
        self.session = session
        self.stream = stream
        self.channel = channel
        self.packetizer = H264Packetizer(PLAY_PAYLOAD_TYPE, random.getrandbits(32), mtu=PLAY_MTU)
        self.reader: Reader | None = None
        self.sent_units = 0
        self.dropped_units = 0  # skipped by the reader for a slow connection, as of detach
        self.registered = False  # with the transport, as its producer
        self.first_pts: int | None = None

    def attach(self) -> None:
        """Send the cached GOP, then the stream's live video."""
        session = self.session
        self.reader = self.stream.add_reader(
            self.send,
            from_keyframe=True,
            kind="video",
            max_queue=MAX_PLAYER_QUEUE,
            on_end=lambda stream: session.player_stream_ended(self),
            # Whatever goes wrong sending closes this player, never the publisher.
            on_error=lambda reader: session.player_failed(self, reader.error),
        )
        # Replayed once the reader is ours: the transport may pause it halfway through.
        self.reader.replay_gop()

    def detach(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            self.dropped_units = reader.discarded
            reader.close()

    def send(self, unit: MediaUnit) -> None:
        """Packetize one unit (skipping to a keyframe after losses) and write it."""
        if unit.codec != "H264":
            return
        data = unit.data
        params = self.stream.video
        if unit.keyframe and params is not None:
            data = h264.with_parameter_sets(data, params.extradata)
        pts = int(unit.pts * unit.time_base * CLOCK_RATE)
        if self.first_pts is None:
            self.first_pts = pts
        out = b"".join(
            build_interleaved(self.channel, packet.serialize())
            for packet in self.packetizer.packetize(data, pts - self.first_pts)
        )
        self.sent_units += 1
        self.session.write(out)

    def bye(self) -> bytes:
        """An RTCP BYE on the channel after ours: the stream is over."""
        return build_interleaved(self.channel + 1, Bye((self.packetizer.ssrc,)).serialize())

    # IPushProducer: the transport tells us when its buffer is full and when it drained.
    def pauseProducing(self) -> None:
        if self.reader is not None:
            self.reader.pause()

    def resumeProducing(self) -> None:
        if self.reader is not None:
            self.reader.resume()

    def stopProducing(self) -> None:
        self.session.detach_player(self)
