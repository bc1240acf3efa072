"""RTP egress to one RTSP player: a live stream's H.264 packetized (RFC 6184) onto the player's
interleaved channel, with the transport's flow control deciding what a slow player loses."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from wcs.guard import guarded
from wcs.media import h264
from wcs.media.units import MediaUnit
from wcs.rtsp.h264rtp import CLOCK_RATE, H264Packetizer
from wcs.rtsp.message import build_interleaved
from wcs.rtsp.rtp import Bye
from wcs.streams import Stream

if TYPE_CHECKING:
    from wcs.rtsp.session import PlayerSession

__all__ = ["MAX_PLAYER_BACKLOG", "PLAY_MTU", "PLAY_PAYLOAD_TYPE", "Player"]

PLAY_PAYLOAD_TYPE: Final = 96
# RTP packets to players stay below a typical path MTU even inside TCP.
PLAY_MTU: Final = 1400
# What a slow player may have queued in the kernel and Twisted's buffer before it loses frames
# (it then resumes at the next keyframe); a GOP of 720p is ~1 MB.
MAX_PLAYER_BACKLOG: Final = 8 * 1024 * 1024


@implementer(IPushProducer)
class Player:
    """Sends one live stream's H.264 to one player as RTP on an interleaved channel.

    A StreamSink, attached and detached by its PlayerSession. It starts at the newest cached
    keyframe (the stream's GOP, sent at once so the player shows a picture immediately), then
    relays live units. Keyframes get the stream's SPS/PPS in front when they lack them (RTMP
    sends them only in the sequence header).
    """

    def __init__(self, session: PlayerSession, stream: Stream, channel: int) -> None:
        self.session = session
        self.stream = stream
        self.channel = channel
        self.packetizer = H264Packetizer(PLAY_PAYLOAD_TYPE, random.getrandbits(32), mtu=PLAY_MTU)
        self.wait_key = True
        self.backlog = 0  # bytes written while the transport asked us to pause
        self.paused = False
        self.sent_units = 0
        self.dropped_units = 0
        self.registered = False  # with the transport, as its producer
        self.first_pts: int | None = None

    @guarded
    def unit_received(self, stream: Stream, unit: MediaUnit) -> None:
        # Runs inside the publisher's input handling: whatever goes wrong here closes this
        # player, never the publisher.
        if unit.kind == "video":
            self.send(unit)

    def drop(self, reason: str) -> None:
        self.session.player_failed(self, reason)

    def stream_ended(self, stream: Stream) -> None:
        self.session.player_stream_ended(self)

    def send(self, unit: MediaUnit) -> None:
        """Packetize one unit (skipping to a keyframe after losses) and write it."""
        if unit.codec != "H264":
            return
        if self.backlog > MAX_PLAYER_BACKLOG:
            self.dropped_units += 1
            self.wait_key = True
            return
        if self.wait_key and not unit.keyframe:
            return
        self.wait_key = False
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
        if self.paused:
            self.backlog += len(out)
        self.sent_units += 1
        self.session.write(out)

    def bye(self) -> bytes:
        """An RTCP BYE on the channel after ours: the stream is over."""
        return build_interleaved(self.channel + 1, Bye((self.packetizer.ssrc,)).serialize())

    # IPushProducer: the transport tells us when its buffer is full and when it drained.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self.session.detach_player(self)
