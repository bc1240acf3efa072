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
    `number`: its place in the stream in display order, from 1 (set for an `on_frame` listener);
    `pos`: its unit's position in the GOP; `captured_ms`: when it was taken (Gop.captured_ms)."""

    frame: VideoFrame
    gop_seq: int
    after_key: bool = True
    number: int = 0
    pos: int = -1
    captured_ms: int = 0


class _Numbering:
    """Display numbers of one GOP's pictures, the first being `base` + 1.

    A GOP decoded as it arrives is numbered in output order, which is display order: the
    count of pictures output since the pass started at its keyframe. A complete GOP decoded
    for some pictures only is numbered before decoding, by its units' presentation times
    (`ranks`), when those are plausible: each picture displayed within MAX_REORDER places of
    where it is decoded (a publisher's clock that jumps breaks that, and the GOP is then decoded
    whole and counted)."""

    __slots__ = ("_length", "base", "gop", "outputs", "ranks")

    def __init__(self, gop: Gop, base: int) -> None:
        self.gop: Gop | None = gop
        self.base = base
        self.outputs = 0
        self.ranks: list[int] | None = None
        self._length = 0

    def close(self) -> int:
        """The next GOP started, so this one is complete: keep its length, not its units."""
        if self.gop is not None:
            self._length = len(self.gop.units)
            self.gop = None
        return self._length

    def rank_by_time(self) -> bool:
        """Number the complete GOP by presentation time; False when that is not plausible."""
        assert self.gop is not None
        units = self.gop.units
        order = sorted(range(len(units)), key=lambda pos: (units[pos].pts, pos))
        ranks = [0] * len(order)
        for rank, pos in enumerate(order):
            if abs(rank - pos) > MAX_REORDER:
                return False
            ranks[pos] = rank
        self.ranks = ranks
        return True

    def number(self, pos: int) -> int:
        """The number of the picture of unit `pos`, as it is output."""
        if self.ranks is not None:
            return self.base + self.ranks[pos] + 1
        self.outputs += 1
        return self.base + self.outputs


# H.264 reorders at most 16 pictures (max_num_reorder_frames).
MAX_REORDER = 16
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

    A listener of every picture (`on_frame`, the auto-snapshotter) that wants only some of them
    (`want`) may let whole GOPs wait until they are complete (`catch_up(defer=True)`): a
    complete GOP's display order is known from its units' timestamps, so only the reference
    pictures up to the last wanted one and the wanted ones are decoded (see _selective).
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
        # decode index -> (gop seq, position in the GOP, pass keyframe index, capture time)
        self._pending: dict[int, tuple[int, int, int, int]] = {}
        self.latest: DecodedFrame | None = None
        self.frames_decoded = 0
        # Packets FFmpeg refused (broken, or a picture over max_pixels) and the newest reason.
        self.errors = 0
        self.last_error = ""
        # Called (in the decoding thread) once per new picture in display order, never twice for
        # one picture even when a drain makes the decoder output it again.
        self.on_frame: Callable[[DecodedFrame], object] | None = None
        # Which display numbers on_frame wants (None: all); a deferred GOP decodes only those.
        self.want: Callable[[int], bool] | None = None
        self._delivered_gop = -1  # GOP of the last on_frame, and its positions delivered
        self._delivered: set[int] = set()
        self._deliver = True  # False while a drain made for a request outputs pictures early
        self._numberings: dict[int, _Numbering] = {}
        self._deferred: Gop | None = None  # a GOP left until complete (see catch_up)
        self.dropped_units = 0  # units never decoded because the decoder fell behind
        self.dropped_gops = 0  # whole GOPs among them
        self.skipped_units = 0  # pictures not decoded because no wanted picture needs them
        self.selective_gops = 0  # GOPs decoded for their wanted pictures only
        self.frames_seen = 0  # the highest display number of the listener's stream so far
        self._tail_of: tuple[VideoParams | None, int] = (None, KEEP_TAIL)

    def _open(self, params: VideoParams) -> None:
        if self._ctx is not None and self.on_frame is not None:
            self._flush(deliver=True)  # the listener gets the pictures held for reordering
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
        self._deferred = None
        self.latest = None

    def release(self) -> None:
        """The stream is over: drop the codec context, pictures and listener now (they hold
        native memory), not whenever a garbage collection finds them."""
        self.reset()
        self.on_frame = None
        self.want = None
        self._delivered = set()
        self._numberings = {}

    def _numbering(self, gop: Gop) -> _Numbering:
        """The display numbering of `gop`: the next numbers after the newest GOP numbered so
        far (GOPs dropped unseen are not counted)."""
        numbering = self._numberings.get(gop.seq)
        if numbering is not None:
            return numbering
        base = 0
        if self._numberings:
            last = self._numberings[max(self._numberings)]
            base = last.base + last.close()
        numbering = self._numberings[gop.seq] = _Numbering(gop, base)
        while len(self._numberings) > 4:  # pictures of older GOPs are out by now
            del self._numberings[min(self._numberings)]
        return numbering

    def _feed(self, ctx: Any, unit: MediaUnit | None, gop: Gop | None, pos: int = 0) -> None:
        packet: av.Packet | None = None
        if unit is not None and gop is not None:
            index = self._index
            self._index += 1
            if pos == 0:
                self._pass_key = index
            pending = self._pending
            pending[index] = (gop.seq, pos, self._pass_key, gop.captured_ms(pos))
            if len(pending) > MAX_PENDING:
                del pending[next(iter(pending))]
            if self.on_frame is not None:
                started = self._numbering(gop)
                if pos == 0:
                    started.outputs = 0  # a pass from the keyframe outputs from the first
            packet = av.Packet(unit.data)
            packet.pts = packet.dts = index
        for frame in self._decode(ctx, packet):
            self.frames_decoded += 1
            origin = self._pending.pop(frame.pts, None) if frame.pts is not None else None
            if origin is None:
                continue
            seq, at, key, captured = origin
            if at == 0:
                self._last_key_out = max(self._last_key_out, key)
            numbering = self._numberings.get(seq) if self.on_frame is not None else None
            number = numbering.number(at) if numbering is not None else 0
            # FFmpeg flags pictures decoded with missing references; those are the grey/green ones.
            if frame.is_corrupt:
                continue
            assert isinstance(frame, VideoFrame)
            after_key = key <= self._last_key_out
            self.latest = DecodedFrame(frame, seq, after_key, 0, at, captured)
            if numbering is None:
                continue  # nobody listens, or a picture of a GOP long gone
            # A drain for a request holds back the current GOP's pictures, not older ones.
            deliver = self._deliver or seq != self._gop_seq
            if deliver and self._first_time(seq, at):
                self.frames_seen = max(self.frames_seen, number)
                if self.on_frame is not None and (self.want is None or self.want(number)):
                    self.on_frame(DecodedFrame(frame, seq, after_key, number, at, captured))

    def _decode(self, ctx: Any, packet: av.Packet | None) -> list[Any]:
        """The frames `packet` (None: the end) lets out. A packet FFmpeg refuses gives none
        and is counted; frames that depended on it come out flagged corrupt."""
        try:
            return list(ctx.decode(packet))
        except av.error.FFmpegError as err:
            self.errors += 1
            self.last_error = str(err)
            return []

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

    def catch_up(self, gop: Gop, end: int, *, defer: bool = False) -> DecodedFrame | None:
        """Decode `gop.units[:end]` from where the last call stopped; return the newest frame.

        `defer` (a listener of every picture, nobody asking for the newest one): a GOP this
        decoder has not started waits until it is complete, then only what the listener wants
        is decoded (see _selective)."""
        if gop.seq != self._gop_seq:
            if gop.seq < self._gop_seq:
                raise ValueError("GOP sequence went backwards")
            deferred, self._deferred = self._deferred, None
            if deferred is not None and deferred.seq < gop.seq:
                self._selective(deferred, gop)
            elif deferred is None and self._ctx is not None:
                self._finish_previous(self._ctx, gop)
            if defer and self.on_frame is not None:
                self._deferred = gop
                return self.latest
        if self._ctx is None or gop.params != self._params:
            self._open(gop.params)
        ctx = self._ctx
        assert ctx is not None
        if gop.seq != self._gop_seq:
            self._gop = gop
            self._gop_seq = gop.seq
            self._pos = 0
        start = self._pos
        # Only the newest picture is wanted (nobody listens to every frame): pictures nothing
        # references are skipped, but for the last few before the target.
        skip = self.skip_disposable and self.on_frame is None
        skip_below = end - self._keep_tail(gop) if skip else 0
        for pos, unit in enumerate(gop.units[start:end], start):
            if pos < skip_below and _disposable(unit):
                self.skipped_units += 1
                continue
            self._feed(ctx, unit, gop, pos)
        self._pos = max(self._pos, end)
        return self.latest

    def finish(self, gop: Gop, end: int) -> None:
        """The stream is over and `gop.units[:end]` is its last GOP: decode and deliver what is
        left (a deferred GOP is complete now), then output every held picture."""
        self.catch_up(gop, end, defer=True)
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._selective(deferred, None)
        else:
            self.drain()

    def _selective(self, gop: Gop, after: Gop | None) -> None:
        """Decode complete `gop` for the listener's wanted pictures only: the wanted ones, and
        the pictures something references up to the last wanted one in decode order. `after` is
        the GOP that follows (None: the stream ended). When it does not continue from this one
        (an IDR, a gap, the end), nothing after the last wanted picture is decoded and the held
        pictures are flushed out; an open GOP follows, so every reference is decoded."""
        if self._ctx is None or gop.params != self._params:
            self._open(gop.params)
        ctx = self._ctx
        assert ctx is not None
        self.selective_gops += 1
        units = gop.units
        numbering = self._numbering(gop)
        want = self.want
        if want is None or not numbering.rank_by_time():
            wanted = set(range(len(units)))
        else:
            wanted = {pos for pos in range(len(units)) if want(numbering.number(pos))}
        clean_cut = after is None or after.seq != gop.seq + 1 or _starts_clean(after)
        last = max(wanted, default=-1) if clean_cut else len(units) - 1
        self._gop, self._gop_seq = gop, gop.seq
        for pos, unit in enumerate(units[: last + 1]):
            if pos in wanted or not _disposable(unit):
                self._feed(ctx, unit, gop, pos)
            else:
                self.skipped_units += 1
        self.skipped_units += len(units) - last - 1
        self.frames_seen = max(self.frames_seen, numbering.base + len(units))
        self._pos = len(units)
        if clean_cut:
            self._flush(deliver=True)
        if after is not None and after.seq > gop.seq + 1:
            self.dropped_gops += after.seq - gop.seq - 1

    def _keep_tail(self, gop: Gop) -> int:
        """How many units before a target are always decoded (see KEEP_TAIL)."""
        params = gop.params
        if params is not self._tail_of[0]:
            self._tail_of = (params, keep_tail_of(params, gop.units[0] if gop.units else None))
        return self._tail_of[1]

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
            for pos, unit in enumerate(tail, start):
                self._feed(ctx, unit, prev, pos)
            return
        if gop.seq > prev.seq + 1:
            self.dropped_gops += gop.seq - prev.seq - 1
            self.dropped_units += len(tail)

    def _flush(self, deliver: bool) -> None:
        """Output the pictures held for reordering (to the listener when `deliver`) and make
        the context ready for a new keyframe."""
        ctx = self._ctx
        if ctx is None:
            return
        self._deliver = deliver
        try:
            self._feed(ctx, None, None)
        finally:
            self._deliver = True
        ctx.flush_buffers()
        self._pending.clear()

    def drain(self, *, deliver: bool = True) -> None:
        """Output the pictures held for reordering; the next call starts again at a keyframe.
        A drain for a request (`deliver=False`) gives the listener nothing: it outputs a GOP's
        first pictures before the ones displayed between them have arrived."""
        self._flush(deliver)
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
        self.drain(deliver=False)
        frame = self.latest
        return frame if _in_gop(frame, gop) else None

    def _starts_cold(self, gop: Gop, end: int) -> bool:
        if self.cold_threads <= 1 or end < COLD_MIN_UNITS:
            return False
        if self.on_frame is not None:
            # A listener's decoder that left this GOP for later (it is not complete yet).
            return self._deferred is not None and self._deferred.seq == gop.seq
        return self._ctx is None or gop.seq != self._gop_seq or gop.params != self._params

    def _cold_newest(self, gop: Gop, end: int) -> DecodedFrame | None:
        """The newest picture of `gop.units[:end]` for a decoder that would start at the
        keyframe anyway: decoded on a frame-threaded context of its own and flushed, so the
        picture is the newest in display order. The one-thread context then starts this GOP
        at its next catch-up (a hot stream's background work, not the request's); a listener's
        decoder keeps its context and place."""
        ctx = open_codec(gop.params.codec, gop.params, self.max_pixels, threads=self.cold_threads)
        below = end - self._keep_tail(gop) if self.skip_disposable else 0
        newest: VideoFrame | None = None
        newest_pos = -1
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
                    newest_pos = frame.pts if frame.pts is not None else -1
        if newest is None:
            return None
        if self.on_frame is None:
            self.reset()
        captured = gop.captured_ms(newest_pos) if 0 <= newest_pos < end else gop.arrived_ms
        self.latest = DecodedFrame(newest, gop.seq, True, 0, newest_pos, captured)
        return self.latest


def keep_tail_of(params: VideoParams, keyframe: MediaUnit | None) -> int:
    """max_num_reorder_frames + 2 from the stream's SPS (its parameters, else the keyframe's
    in-band one); KEEP_TAIL when there is none or it does not say."""
    if params.codec != "H264":
        return KEEP_TAIL
    for source in (params.extradata, keyframe.data if keyframe is not None else b""):
        for nal in h264.split_annexb(source):
            if nal[0] & 0x1F == h264.NAL_SPS:
                try:
                    reorder = h264.parse_sps(nal, max_pixels=1 << 62).max_num_reorder_frames
                except h264.H264Error:
                    return KEEP_TAIL
                return KEEP_TAIL if reorder is None else min(KEEP_TAIL, reorder + 2)
    return KEEP_TAIL


def _starts_clean(gop: Gop) -> bool:
    """Whether `gop` references nothing before it: its keyframe is an H.264 IDR (or VP8's)."""
    if not gop.units:
        return True
    key = gop.units[0]
    return key.codec != "H264" or h264.contains_idr(h264.split_annexb(key.data))


def _disposable(unit: MediaUnit) -> bool:
    return not unit.keyframe and unit.codec == "H264" and h264.is_disposable(unit.data)


def _in_gop(frame: DecodedFrame | None, gop: Gop) -> bool:
    """Whether `frame` is a picture of `gop` output once the GOP's keyframe was (so it is not
    one displayed before the keyframe, nor one of the previous GOP still being reordered)."""
    return frame is not None and frame.gop_seq == gop.seq and frame.after_key
