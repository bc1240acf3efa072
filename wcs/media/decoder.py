"""Per-stream video decoding with PyAV: one codec context per stream, one thread at a time."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import av.error
from av.video.frame import VideoFrame

from wcs.media import h264
from wcs.media.gop import Gop
from wcs.media.units import MAX_PICTURE_PIXELS, MediaUnit, VideoParams

# Codec names of MediaUnit/VideoParams -> FFmpeg decoder names.
DECODERS = {"H264": "h264", "VP8": "vp8"}


def can_decode(codec: str) -> bool:
    return codec in DECODERS


def open_codec(codec: str, params: VideoParams | None, max_pixels: int, threads: int = 1) -> Any:
    """A decoding context for `codec` (an av.VideoCodecContext; PyAV types create() as the base
    class), fed `params.extradata` when there is any. Raises ValueError for a codec we do not
    decode. Every decoder of stream video is made here, so none misses the picture limit.

    `threads` > 1 decodes with frame threads: each adds a frame of output delay, so only a
    decode that is flushed at its end (a cold request's) uses them."""
    name = DECODERS.get(codec)
    if name is None:
        raise ValueError(f"no decoder for codec {codec}")
    ctx: Any = av.CodecContext.create(name, "r")
    # FFmpeg refuses (per packet) a picture larger than this, whatever the SPS in-band says.
    ctx.options = {"max_pixels": str(max_pixels)}
    if params is not None and params.extradata:
        ctx.extradata = params.extradata
    if threads > 1:
        ctx.thread_type = "FRAME"
    ctx.thread_count = threads
    return ctx


# The process's own symbols (libc among them): no find_library, which runs ldconfig at import.
_MALLOC_TRIM: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim; elsewhere nothing).

    Decoders allocate their frames and tables through malloc; after a burst of streams ends that
    memory is free but glibc keeps it in its heaps, so the process would stay at its peak size.
    Blocking (about 0.1 s per few hundred MB): call it from the pool.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A fully decoded picture, its GOP, and whether the GOP's keyframe had been output by then.

    `number` (for on_frame) is the picture's place in display order among the frames of the
    GOPs this decoder was given, from 1: skipped pictures count too."""

    frame: VideoFrame
    gop_seq: int
    after_key: bool = True
    number: int = 0


# Packets the decoder may hold without output: H.264 reorders at most 16 frames. Beyond this the
# oldest are forgotten (a packet FFmpeg refused never comes out).
MAX_PENDING = 64
# A cold request (a decoder that starts the GOP at its keyframe) for at least this many units
# decodes on a context of its own with COLD_THREADS frame threads, flushed at the end.
COLD_MIN_UNITS = 8
COLD_THREADS = 2
# A catch-up that only wants the newest picture skips the pictures nothing references, except
# among the last units before its target, where the newest picture the decoder outputs comes
# from: the SPS's max_num_reorder_frames + 2 of them, or KEEP_TAIL when the SPS does not say
# (H.264 reorders at most 16 frames).
KEEP_TAIL = 18
MAX_REORDER = 16


class StreamDecoder:
    """Decodes one stream's GOP cache incrementally, remembering how far it got.

    Not thread-safe by design: the snapshot service runs at most one job per stream at a time.
    A decoder that keeps up with the stream costs one decode per frame; one that falls more than
    a GOP behind jumps to the newest keyframe instead of decoding what nobody will see, and
    counts what it skipped.

    Every packet goes in with its decode index as pts, never the publisher's timestamps: an
    output picture maps back to its unit however the publisher's clock jumps, and "not older
    than the keyframe" is decided by output order (pictures of the GOP output once its keyframe
    was), not by comparing the publisher's timestamps.
    """

    def __init__(
        self,
        max_pixels: int = MAX_PICTURE_PIXELS,
        *,
        skip_disposable: bool = True,
        cold_threads: int = COLD_THREADS,
    ) -> None:
        self.max_pixels = max_pixels
        # Whether a catch-up for the newest picture skips pictures nothing references.
        self.skip_disposable = skip_disposable
        # Frame threads of a cold request's decode (1: cold requests decode like the rest).
        self.cold_threads = cold_threads
        self._ctx: Any = None  # av.VideoCodecContext; PyAV types create() as the base class
        self._params: VideoParams | None = None
        self._gop: Gop | None = None
        self._gop_seq = -1
        self._pos = 0
        self._index = 0  # decode index of the next packet, for the decoder's whole life
        self._pass_key = -1  # decode index of the keyframe the current pass started at
        self._last_key_out = -1  # decode index of the newest keyframe output so far
        # decode index -> (gop seq, position in the GOP, pass keyframe index)
        self._pending: dict[int, tuple[int, int, int]] = {}
        self.latest: DecodedFrame | None = None
        self.frames_decoded = 0
        # Packets FFmpeg refused (broken, or a picture over max_pixels) and the newest reason.
        self.errors = 0
        self.last_error = ""
        # Called (in the decoding thread) once per new picture in display order, never twice for
        # one picture even when a drain makes the decoder output it again.
        self.on_frame: Callable[[DecodedFrame], object] | None = None
        self._delivered_gop = -1  # GOP of the last on_frame, and its positions delivered
        self._delivered: set[int] = set()
        self.dropped_units = 0  # units never decoded because the decoder fell behind
        self.dropped_gops = 0  # whole GOPs among them
        self.skipped_units = 0  # pictures nothing references, not decoded (see catch_up)
        # For on_frame: the display numbers it needs (None: all), and per GOP seq the GOP and
        # the number of frames before it (the current GOP and the one before).
        self.wanted: Callable[[int], bool] | None = None
        self._numbering: dict[int, _GopNumbers] = {}
        self._reorder_of: tuple[VideoParams | None, int] = (None, MAX_REORDER)

    def _open(self, params: VideoParams) -> None:
        ctx = open_codec(params.codec, params, self.max_pixels)
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
        self._pending.clear()
        self.latest = None

    def release(self) -> None:
        """The stream is over: drop the codec context, pictures and listener now (they hold
        native memory), not whenever a garbage collection finds them."""
        self.reset()
        self.on_frame = None
        self.wanted = None
        self._numbering = {}
        self._delivered = set()

    def _feed(self, ctx: Any, unit: MediaUnit | None, gop_seq: int, pos: int = 0) -> None:
        packet: av.Packet | None = None
        if unit is not None:
            index = self._index
            self._index += 1
            if pos == 0:
                self._pass_key = index
            pending = self._pending
            pending[index] = (gop_seq, pos, self._pass_key)
            if len(pending) > MAX_PENDING:
                del pending[next(iter(pending))]
            packet = av.Packet(unit.data)
            packet.pts = packet.dts = index
        for frame in self._decode(ctx, packet):
            self.frames_decoded += 1
            origin = self._pending.pop(frame.pts, None) if frame.pts is not None else None
            if origin is None:
                continue
            seq, at, key = origin
            if at == 0:
                self._last_key_out = max(self._last_key_out, key)
            # FFmpeg flags pictures decoded with missing references; those are the grey/green ones.
            if frame.is_corrupt:
                continue
            assert isinstance(frame, VideoFrame)
            on_frame = self.on_frame
            numbers = self._numbering.get(seq) if on_frame is not None else None
            number = numbers.number(at) if numbers is not None else None
            if numbers is not None and number is None:
                # No order counts to go by: number by output order, which is display order.
                number = numbers.base + numbers.delivered + 1
            decoded = self.latest = DecodedFrame(frame, seq, key <= self._last_key_out, number or 0)
            if on_frame is not None and self._first_time(seq, at):
                if numbers is not None:
                    numbers.delivered += 1
                    numbers.high = max(numbers.high, number or 0)
                on_frame(decoded)

    def _decode(self, ctx: Any, packet: av.Packet | None) -> list[Any]:
        """The frames `packet` (None: the end) lets out. A packet FFmpeg refuses gives none
        and is counted; frames that depended on it come out flagged corrupt."""
        try:
            return list(ctx.decode(packet))
        except av.error.FFmpegError as err:
            self.errors += 1
            self.last_error = str(err)
            return []

    def _start_numbering(self, gop: Gop) -> None:
        """Number `gop`'s frames after those of the newest GOP numbered so far."""
        if gop.seq in self._numbering:
            return
        base = 0
        if self._numbering:
            last = self._numbering[max(self._numbering)]
            base = last.high if last.truncated else last.base + len(last.gop.units)
            self._numbering = {last.gop.seq: last}
        keyframe = gop.units[0] if gop.units else None
        self._numbering[gop.seq] = _GopNumbers(gop, base, sps_of(gop.params, keyframe))

    def _number(self, gop_seq: int, pos: int) -> int | None:
        numbers = self._numbering.get(gop_seq)
        return None if numbers is None else numbers.number(pos)

    def _skippable(self, gop: Gop, pos: int, unit: MediaUnit) -> bool:
        """Whether unit `pos` may go undecoded: a picture nothing references that on_frame
        does not want (no on_frame: any such picture). Without a display number (no order
        counts to read) nothing is skipped for on_frame."""
        if not _disposable(unit):
            return False
        if self.on_frame is None:
            return True
        wanted = self.wanted
        if wanted is None:
            return False
        number = self._number(gop.seq, pos)
        return number is not None and not wanted(number)

    def _first_time(self, gop_seq: int, pos: int) -> bool:
        """Whether the picture of unit `pos` of GOP `gop_seq` is new to on_frame (a drain makes
        the decoder output a GOP's pictures again when it decodes that GOP once more)."""
        if gop_seq > self._delivered_gop:
            self._delivered_gop = gop_seq
            self._delivered = {pos}
            return True
        if gop_seq < self._delivered_gop or pos in self._delivered:
            return False
        self._delivered.add(pos)
        return True

    def catch_up(self, gop: Gop, end: int, *, newest: bool = True) -> DecodedFrame | None:
        """Decode `gop.units[:end]` from where the last call stopped; return the newest frame.

        `newest=False` (an auto-snapshot decoder nobody asks): the units whose display number
        is not final yet wait for the next call, so no picture it skips is decided early."""
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
        start = self._pos
        if self.on_frame is not None:
            self._start_numbering(gop)
        # Pictures nothing references are skipped, unless they are among the last few before
        # the target (the newest picture comes from there), or on_frame wants them. For
        # on_frame, a picture's display number is final once the pictures shown before it have
        # come: `reorder` units after it.
        if self.on_frame is None:
            skip_below = end - self._keep_tail(gop)
        else:
            skip_below = end - self._reorder(gop)
            if not newest:
                end = max(start, skip_below)  # the rest waits until it can be decided
        if not self.skip_disposable:
            skip_below = 0
        for pos, unit in enumerate(gop.units[start:end], start):
            if pos < skip_below and self._skippable(gop, pos, unit):
                self.skipped_units += 1
                continue
            self._feed(ctx, unit, gop.seq, pos)
        self._pos = max(self._pos, end)
        return self.latest

    def _reorder(self, gop: Gop) -> int:
        """The stream's reorder depth (see reorder_of), once per parameter set."""
        params = gop.params
        if params is not self._reorder_of[0]:
            self._reorder_of = (params, reorder_of(params, gop.units[0] if gop.units else None))
        return self._reorder_of[1]

    def _keep_tail(self, gop: Gop) -> int:
        """How many units before a target are always decoded (see KEEP_TAIL)."""
        return min(KEEP_TAIL, self._reorder(gop) + 2)

    def _finish_previous(self, ctx: Any, gop: Gop) -> None:
        """For a decoder that must see every frame (`on_frame` set): decode the tail of the GOP
        just before `gop` (its last units usually arrive while a job runs); a decoder further
        behind than that drops what is left, and counts it. Without `on_frame` nobody needs
        those frames: jump straight to the new keyframe."""
        prev = self._gop
        if prev is None or self.on_frame is None:
            return
        start = self._pos
        tail = prev.units[start:]
        if gop.seq == prev.seq + 1:
            last = len(prev.units)
            if self.wanted is not None and gop.units and h264.is_idr(gop.units[0].data):
                # Nothing after the GOP's last wanted picture (in decode order) is needed: the
                # next GOP refers to none of it.
                last = self._last_wanted(prev) + 1
            for pos, unit in enumerate(tail, start):
                if pos >= last or self._skippable(prev, pos, unit):
                    self.skipped_units += 1
                    continue
                self._feed(ctx, unit, prev.seq, pos)
            return
        if gop.seq > prev.seq + 1:
            self.dropped_gops += gop.seq - prev.seq - 1
            self.dropped_units += len(tail)
            numbers = self._numbering.get(prev.seq)
            if numbers is not None:
                numbers.truncated = True  # frames never decoded are not counted

    def _last_wanted(self, gop: Gop) -> int:
        """The decode position of `gop`'s last picture on_frame wants (-1: none; the last
        position when that cannot be told)."""
        wanted = self.wanted
        for pos in range(len(gop.units) - 1, -1, -1):
            number = self._number(gop.seq, pos)
            if wanted is None or number is None or wanted(number):
                return pos
        return -1

    def drain(self) -> None:
        """Output the pictures held for reordering (the stream is over); the next call starts
        again at a keyframe."""
        ctx = self._ctx
        if ctx is None:
            return
        self._feed(ctx, None, self._gop_seq)
        ctx.flush_buffers()
        self._pending.clear()
        self._pos = 0

    def newest(self, gop: Gop, end: int) -> DecodedFrame | None:
        """Like catch_up, but never returns a picture older than the GOP's keyframe.

        Right after a keyframe the decoder may still hold it for B-frame reordering; draining
        releases it at the price of decoding this GOP's first frames again next time.
        A cold request is decoded with frame threads (see _cold_newest).
        """
        if self._starts_cold(gop, end):
            cold = self._cold_newest(gop, end)
            if cold is not None:
                return cold
        frame = self.catch_up(gop, end)
        if _in_gop(frame, gop):
            return frame
        self.drain()
        frame = self.latest
        return frame if _in_gop(frame, gop) else None

    def _starts_cold(self, gop: Gop, end: int) -> bool:
        return (
            self.cold_threads > 1
            and self.on_frame is None
            and end >= COLD_MIN_UNITS
            and (self._ctx is None or gop.seq != self._gop_seq or gop.params != self._params)
        )

    def _cold_newest(self, gop: Gop, end: int) -> DecodedFrame | None:
        """The newest picture of `gop.units[:end]` for a decoder that would start at the
        keyframe anyway: decoded on a frame-threaded context of its own and flushed, so the
        picture is the newest in display order. The one-thread context then starts this GOP
        at its next catch-up (a hot stream's background work, not the request's)."""
        ctx = open_codec(gop.params.codec, gop.params, self.max_pixels, threads=self.cold_threads)
        below = end - self._keep_tail(gop) if self.skip_disposable else 0
        newest: VideoFrame | None = None
        for pos, unit in enumerate([*gop.units[:end], None]):
            if unit is not None and pos < below and _disposable(unit):
                self.skipped_units += 1
                continue
            packet = None
            if unit is not None:
                packet = av.Packet(unit.data)
                packet.pts = packet.dts = pos
            for frame in self._decode(ctx, packet):
                self.frames_decoded += 1
                if not frame.is_corrupt:
                    assert isinstance(frame, VideoFrame)
                    newest = frame
        if newest is None:
            return None
        self.reset()
        self.latest = DecodedFrame(newest, gop.seq)
        return self.latest


def sps_of(params: VideoParams, keyframe: MediaUnit | None) -> h264.SpsInfo | None:
    """The stream's SPS: from its parameters, else the keyframe's in-band one."""
    if params.codec != "H264":
        return None
    for source in (params.extradata, keyframe.data if keyframe is not None else b""):
        for nal in h264.split_annexb(source):
            if nal[0] & 0x1F == h264.NAL_SPS:
                try:
                    return h264.parse_sps(nal, max_pixels=1 << 62)
                except h264.H264Error:
                    return None
    return None


def reorder_of(params: VideoParams, keyframe: MediaUnit | None) -> int:
    """max_num_reorder_frames from the stream's SPS: how many units may arrive after a picture
    and still be shown before it. H.264's maximum (16) when there is none or it does not say."""
    sps = sps_of(params, keyframe)
    if sps is None or sps.max_num_reorder_frames is None:
        return MAX_REORDER
    return min(MAX_REORDER, sps.max_num_reorder_frames)


class _GopNumbers:
    """The display numbers of one GOP's pictures for on_frame: `base` (the frames of earlier
    GOPs) plus the picture's rank by picture order count within the GOP, plus one. The order
    counts come from the slice headers, so a publisher's timestamps never matter."""

    def __init__(self, gop: Gop, base: int, sps: h264.SpsInfo | None) -> None:
        self.gop = gop
        self.base = base
        self.sps = sps
        self.delivered = 0  # pictures given to on_frame (numbering by output order)
        self.high = base  # the highest number given to on_frame
        self.truncated = False  # the decoder fell behind and dropped the GOP's last units
        self._slices: list[h264.SliceInfo | None] = []
        self._orders: list[int] | None = None

    def number(self, pos: int) -> int | None:
        """None when the GOP's order counts cannot be read (not H.264, no IDR first, ...)."""
        sps = self.sps
        if sps is None:
            return None
        units = self.gop.units[:]  # the reactor appends meanwhile
        if len(self._slices) < len(units):
            self._slices += [h264.slice_info(u.data, sps) for u in units[len(self._slices) :]]
            self._orders = h264.picture_orders(self._slices, sps)
        orders = self._orders
        if orders is None or pos >= len(orders):
            return None
        mine = orders[pos]
        return self.base + sum(1 for order in orders if order < mine) + 1


def keep_tail_of(params: VideoParams, keyframe: MediaUnit | None) -> int:
    """How many units before a target a catch-up for the newest picture always decodes."""
    return min(KEEP_TAIL, reorder_of(params, keyframe) + 2)


def _disposable(unit: MediaUnit) -> bool:
    return not unit.keyframe and unit.codec == "H264" and h264.is_disposable(unit.data)


def _in_gop(frame: DecodedFrame | None, gop: Gop) -> bool:
    """Whether `frame` is a picture of `gop` output once the GOP's keyframe was (so it is not
    one displayed before the keyframe, nor one of the previous GOP still being reordered)."""
    return frame is not None and frame.gop_seq == gop.seq and frame.after_key
