"""Per-stream video decoding with PyAV: one codec context per stream, one thread at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import av.error
from av.video.frame import VideoFrame

from wcs.media.units import MediaUnit, VideoParams
from wcs.streams import Gop

# Codec names of MediaUnit/VideoParams -> FFmpeg decoder names.
DECODERS = {"H264": "h264", "VP8": "vp8"}


def can_decode(codec: str) -> bool:
    return codec in DECODERS


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A fully decoded picture and where it came from (GOP sequence number and unit pts)."""

    frame: VideoFrame
    gop_seq: int
    pts: int


class StreamDecoder:
    """Decodes one stream's GOP cache incrementally, remembering how far it got.

    Not thread-safe by design: the snapshot service runs at most one job per stream at a time.
    A decoder that keeps up with the stream costs one decode per frame; one that falls more than
    a GOP behind jumps to the newest keyframe instead of decoding what nobody will see, and
    counts what it skipped.
    """

    def __init__(self) -> None:
        self._ctx: Any = None  # av.VideoCodecContext; PyAV types create() as the base class
        self._params: VideoParams | None = None
        self._gop: Gop | None = None
        self._gop_seq = -1
        self._pos = 0
        self.latest: DecodedFrame | None = None
        self.frames_decoded = 0
        # Called (in the decoding thread) once per new picture in display order, never twice for
        # one picture even when a drain makes the decoder output it again.
        self.on_frame: Callable[[DecodedFrame], object] | None = None
        self._delivered: tuple[int, int] = (-1, -1)  # (gop seq, pts) of the last on_frame
        self.dropped_units = 0  # units never decoded because the decoder fell behind
        self.dropped_gops = 0  # whole GOPs among them

    def _open(self, params: VideoParams) -> None:
        name = DECODERS.get(params.codec)
        if name is None:
            raise ValueError(f"no decoder for codec {params.codec}")
        ctx = av.CodecContext.create(name, "r")
        if params.extradata:
            ctx.extradata = params.extradata
        # Frame threading would add one frame of delay per thread: freshness matters more here,
        # and streams already decode in parallel on the pool.
        ctx.thread_count = 1
        self.reset()
        self._ctx = ctx
        self._params = params

    def reset(self) -> None:
        """Forget all decoder state (after an error); the next job starts at a keyframe."""
        self._ctx = None
        self._params = None
        self._gop = None
        self._gop_seq = -1
        self._pos = 0
        self.latest = None

    def _feed(self, ctx: Any, unit: MediaUnit | None, gop_seq: int) -> None:
        packet: av.Packet | None = None
        if unit is not None:
            packet = av.Packet(unit.data)
            packet.pts = unit.pts
            packet.dts = unit.dts
            packet.time_base = unit.time_base
        try:
            frames = ctx.decode(packet)
        except av.error.FFmpegError:
            return  # a broken packet; frames that depended on it come out flagged corrupt
        for frame in frames:
            self.frames_decoded += 1
            # FFmpeg flags pictures decoded with missing references; those are the grey/green ones.
            if frame.is_corrupt or frame.pts is None:
                continue
            assert isinstance(frame, VideoFrame)
            decoded = self.latest = DecodedFrame(frame, gop_seq, frame.pts)
            if self.on_frame is not None and (gop_seq, frame.pts) > self._delivered:
                self._delivered = (gop_seq, frame.pts)
                self.on_frame(decoded)

    def catch_up(self, gop: Gop, end: int) -> DecodedFrame | None:
        """Decode `gop.units[:end]` from where the last call stopped; return the newest frame."""
        if gop.seq != self._gop_seq:
            if gop.seq < self._gop_seq:
                raise ValueError("GOP sequence went backwards")
            if self._ctx is not None:
                self._finish_previous(self._ctx, gop)
        if self._ctx is None or gop.params != self._params:
            self._open(gop.params)
        ctx = self._ctx
        assert ctx is not None
        if gop.seq != self._gop_seq:
            self._gop = gop
            self._gop_seq = gop.seq
            self._pos = 0
        for unit in gop.units[self._pos : end]:
            self._feed(ctx, unit, gop.seq)
        self._pos = max(self._pos, end)
        return self.latest

    def _finish_previous(self, ctx: Any, gop: Gop) -> None:
        """For a decoder that must see every frame (`on_frame` set): decode the tail of the GOP
        just before `gop` (its last units usually arrive while a job runs); a decoder further
        behind than that drops what is left, and counts it. Without `on_frame` nobody needs
        those frames: jump straight to the new keyframe."""
        prev = self._gop
        if prev is None or self.on_frame is None:
            return
        tail = prev.units[self._pos :]
        if gop.seq == prev.seq + 1:
            for unit in tail:
                self._feed(ctx, unit, prev.seq)
            return
        if gop.seq > prev.seq + 1:
            self.dropped_gops += gop.seq - prev.seq - 1
            self.dropped_units += len(tail)

    def drain(self) -> None:
        """Output the pictures held for reordering (the stream is over); the next call starts
        again at a keyframe."""
        ctx = self._ctx
        if ctx is None:
            return
        self._feed(ctx, None, self._gop_seq)
        ctx.flush_buffers()
        self._pos = 0

    def newest(self, gop: Gop, end: int) -> DecodedFrame | None:
        """Like catch_up, but never returns a picture older than the GOP's keyframe.

        Right after a keyframe the decoder may still hold it for B-frame reordering; draining
        releases it at the price of decoding this GOP's first frames again next time.
        """
        frame = self.catch_up(gop, end)
        if _in_gop(frame, gop):
            return frame
        self.drain()
        frame = self.latest
        return frame if _in_gop(frame, gop) else None


def _in_gop(frame: DecodedFrame | None, gop: Gop) -> bool:
    """Whether `frame` was output while decoding `gop` and is not older than its keyframe."""
    return frame is not None and frame.gop_seq == gop.seq and frame.pts >= gop.units[0].pts
