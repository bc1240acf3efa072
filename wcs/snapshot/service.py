"""On-demand snapshots: take(name) -> Deferred[PNG bytes], decoding in the pool, shared per stream.

A stream nobody asks about costs only its GOP cache. The first request decodes from the newest
keyframe; the stream then stays *hot* for a while, decoding each frame as it arrives, so the next
request only pays for the last frame or two and the PNG.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from wcs.directory import StreamNotFound
from wcs.media.decoder import DecodedFrame, StreamDecoder, can_decode, release_free_memory
from wcs.media.encode import BadImageParam, EncodedImage, ImageSpec, encode
from wcs.media.gop import Gop
from wcs.media.pool import PoolRunner
from wcs.media.units import MediaUnit
from wcs.streams import Reader, Stream, StreamHub

log = Logger(namespace="wcs.snapshot")

T = TypeVar("T")

HOT_SECONDS = 15.0
# Ended auto-snapshotted streams whose decoders may still finish their last frames at once. Past
# this (the pool cannot keep up: more streams end than it drains) a stream's last frames are
# dropped and counted instead, so memory does not grow with the backlog.
MAX_ENDED_BACKLOG = 32
# How many streams at most are decoded ahead of requests (WCSService scales it by cores).
MAX_HOT_STREAMS = 8
# Seconds after a stream ends before the decoders' freed memory is handed back to the system:
# at most one trim per this interval, however many streams end.
TRIM_AFTER_S = 10.0


# The WCS snapshot: a full-size PNG (fpng).
PNG = ImageSpec()
# Images kept per stream for requests with a max age (the newest of each spec asked with one),
# and the largest kept: a dashboard's tiles (a 320-wide JPEG is ~7 KB), not full-size pictures.
MAX_SERVED_SPECS = 4
MAX_SERVED_BYTES = 64 * 1024

# Why a snapshot could not be taken (SnapshotTimeout.code, /stream/find's video.state).
NO_VIDEO = "no_video"
AWAITING_KEYFRAME = "awaiting_keyframe"
UNSUPPORTED_CODEC = "unsupported_codec"
DECODE_FAILED = "decode_failed"
TIMEOUT = "timeout"


class SnapshotTimeout(Exception):
    """No frame could be produced within snapshot_taking_interval_ms; `code` says why (one of
    the constants above) and `detail` adds what is known (the codec, the decoder's error)."""

    message = "Snapshot response timeout"

    def __init__(self, code: str = TIMEOUT, detail: str = "") -> None:
        super().__init__(f"{self.message} ({code}{': ' + detail if detail else ''})")
        self.code = code
        self.detail = detail


# The `endpoint` of a request that names none (the WCS REST snapshot, the WebSDK's).
ENDPOINT_OTHER = "other"
NOT_FOUND = "not_found"
BAD_PARAM = "bad_param"
ERROR = "error"


class SnapshotStats(Protocol):
    """What the snapshot service tells a metrics collector (wcs.metrics): each request's
    outcome and each decode job's time. `decoded` is called in a pool thread."""

    def answered(self, endpoint: str, result: str, seconds: float, hot: bool) -> None: ...

    def decoded(self, seconds: float) -> None: ...


class NoStats:
    def answered(self, endpoint: str, result: str, seconds: float, hot: bool) -> None:
        pass

    def decoded(self, seconds: float) -> None:
        pass


def result_of(outcome: object) -> str:
    """A request's outcome as a result label: ok, not_found, bad_param, error or a reason code
    of SnapshotTimeout (timeout, no_video, awaiting_keyframe, unsupported_codec, ...)."""
    if not isinstance(outcome, Failure):
        return "ok"
    err = outcome.value
    if isinstance(err, StreamNotFound):
        return NOT_FOUND
    if isinstance(err, SnapshotTimeout):
        return err.code
    if isinstance(err, BadImageParam):
        return BAD_PARAM
    return ERROR


@dataclass(slots=True)
class DecoderTotals:
    """Counters of StreamDecoders, summed."""

    frames_decoded: int = 0
    skipped_units: int = 0
    dropped_units: int = 0
    dropped_gops: int = 0
    errors: int = 0

    def add(self, decoder: StreamDecoder) -> None:
        self.frames_decoded += decoder.frames_decoded
        self.skipped_units += decoder.skipped_units
        self.dropped_units += decoder.dropped_units
        self.dropped_gops += decoder.dropped_gops
        self.errors += decoder.errors


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One picture of a stream, encoded as a request asked: `captured_ms` is when it was taken
    (ms since the epoch, see Gop.captured_ms), `tag` names the picture and its encoding (an
    ETag: the same tag is the same bytes)."""

    image: EncodedImage
    captured_ms: int
    tag: str

    @property
    def data(self) -> bytes:
        return self.image.data


def video_state(stream: Stream, decoder_failed: bool = False) -> tuple[str, str]:
    """Whether a snapshot of `stream` can be taken now, and if not why: ("ok", "") or one of the
    codes above with a detail."""
    video = stream.video
    if video is None or not stream.has_video:
        return NO_VIDEO, "the stream has no video" + (" (audio only)" if stream.has_audio else "")
    if stream.video_refused is not None:
        return UNSUPPORTED_CODEC, stream.video_refused
    if not can_decode(video.codec):
        return UNSUPPORTED_CODEC, f"video codec {video.codec} is not decoded"
    if stream.gop is None:
        return AWAITING_KEYFRAME, "no keyframe cached yet"
    if decoder_failed:
        return DECODE_FAILED, "the decoder refused the stream's pictures"
    return "ok", ""


class _Want:
    """A request waiting on a FrameSource: how it wants the picture, and its answer."""

    __slots__ = ("d", "max_age_ms", "spec")

    def __init__(self, spec: ImageSpec, max_age_ms: int) -> None:
        self.spec = spec
        self.max_age_ms = max_age_ms
        self.d: Deferred[Snapshot | None] = Deferred()


def _no_heat(source: FrameSource) -> None:
    pass


class FrameSource:
    """One stream's decoder and the requests waiting on it. A reader of the stream while hot."""

    def __init__(
        self,
        stream: Stream,
        run_in_pool: PoolRunner,
        clock: IReactorTime,
        hot_seconds: float,
        on_heat: Callable[[FrameSource], None] = _no_heat,
        on_release: Callable[[FrameSource], None] = _no_heat,
        may_finish: Callable[[FrameSource], bool] = lambda source: True,
        on_cool: Callable[[FrameSource], None] = _no_heat,
        stats: SnapshotStats | None = None,
    ) -> None:
        self.stream = stream
        self._stats: SnapshotStats = stats if stats is not None else NoStats()
        self.released = False
        self._on_heat = on_heat
        self._on_release = on_release
        self._on_cool = on_cool
        self._may_finish = may_finish
        # Set on the reactor when an ended stream's last frames are given up; read by jobs
        # still queued in the pool, which then return without decoding.
        self._abandoned = False
        self.decoder = StreamDecoder(max_pixels=stream.max_picture_pixels)
        self._run = run_in_pool
        self._clock = clock
        self._hot_seconds = hot_seconds
        self._hot_until = float("-inf")
        self._reader: Reader | None = None
        self._busy = False
        self._waiters: list[_Want] = []
        # The job in the pool, when one is: what it decodes to and the requests it answers.
        self._running: _Job | None = None
        self._done_at: tuple[int, int] = (-1, -1)  # (gop seq, units) the last job covered
        # The newest picture encoded, and its encodings by (format, width, height, quality):
        # touched only inside jobs.
        self._images: tuple[DecodedFrame, dict[tuple[object, ...], EncodedImage]] | None = None
        # The newest Snapshot answered per spec (reactor side), for requests with a max age.
        self._served: dict[ImageSpec, Snapshot] = {}
        self._drain_from: Gop | None = None  # the last GOP of an ended pinned stream
        self._after_job: list[Callable[[bool], object]] = []
        self._frame_listener: Callable[[DecodedFrame], bytes | None] | None = None
        self._errors_logged = False

    # -- reactor side -------------------------------------------------------------------------
    def request(self, spec: ImageSpec = PNG, max_age_ms: int = 0) -> Deferred[Snapshot | None]:
        """The newest frame as of now encoded as `spec` asks, or None when the stream has
        nothing decodable. `max_age_ms` > 0: a picture answered before and taken at most that
        long ago will do (nothing is decoded or encoded then). Errback BadImageParam: the spec
        asks for more pixels than the picture has."""
        if max_age_ms > 0:
            served = self._served.get(spec)
            if served is not None and self._now_ms() - served.captured_ms <= max_age_ms:
                return succeed(served)
        want = _Want(spec, max_age_ms)
        if max_age_ms == 0:
            # Keep decoding ahead for a while: the next request wants the newest picture fast.
            # One that accepts an older picture does not: a poller would keep every stream of
            # a wall decoding every frame.
            self._hot_until = self._clock.seconds() + self._hot_seconds
            self._on_heat(self)
        gop = self.stream.gop
        running = self._running
        # Nothing new arrived since the running job started: its picture is the newest, and a
        # job decoding ahead of requests encodes for this request too if it has not ended yet.
        at = (gop.seq, len(gop.units)) if gop is not None else None
        if running is not None and running.at == at and running.join(want):
            return want.d
        self._waiters.append(want)
        self._attach()
        self._kick()
        return want.d

    def _now_ms(self) -> int:
        return self.stream.now_ms()

    def video_state(self) -> tuple[str, str]:
        """See video_state(); a decoder that refused pictures and produced none since counts."""
        decoder = self.decoder
        return video_state(self.stream, decoder.errors > 0 and decoder.latest is None)

    def pin(
        self,
        listener: Callable[[DecodedFrame], bytes | None],
        want: Callable[[int], bool] | None = None,
    ) -> None:
        """Decode the stream for as long as it lives, calling `listener(frame)` in the pool once
        per picture whose display number (from 1) `want` accepts (None: every picture), in
        display order (the auto-snapshotter). A PNG it returns is reused by requests for that
        same picture. While nobody requests snapshots, each GOP is decoded once complete, and
        only for the wanted pictures (StreamDecoder.catch_up's defer)."""
        self._frame_listener = listener
        self.decoder.on_frame = self._frame_decoded
        self.decoder.want = want
        self._attach()
        self._kick()

    @property
    def pinned(self) -> bool:
        return self._frame_listener is not None

    def _attach(self) -> None:
        if self._reader is None:
            # The GOP cache is what a job decodes: the reader only says that it grew.
            self._reader = self.stream.add_reader(
                self._unit, kind="video", on_end=self._stream_ended, on_error=self._reader_failed
            )

    def _reader_failed(self, reader: Reader) -> None:
        # Detached by the stream (logged there): the next request attaches a new one.
        if self._reader is reader:
            self._reader = None

    def _detach(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _frame_decoded(self, frame: DecodedFrame) -> None:
        listener = self._frame_listener
        if listener is not None:
            png = listener(frame)
            if png is not None:
                size = (frame.frame.width, frame.frame.height)
                image = EncodedImage(png, PNG.content_type, *size)
                self._images = (frame, {_key(PNG, *size): image})

    @property
    def hot(self) -> bool:
        return self.pinned or self.requested

    @property
    def requested(self) -> bool:
        """Whether somebody asked for a snapshot lately (the stream is decoded ahead)."""
        return self._clock.seconds() <= self._hot_until

    def cool(self) -> None:
        """Stop decoding ahead of requests; the next request decodes from where it stopped."""
        self._hot_until = float("-inf")

    def _unit(self, unit: MediaUnit) -> None:
        stream = self.stream
        gop = stream.gop
        if gop is not None and self._waits_for_gop(gop):
            return
        if not self.hot and not self._waiters:
            self._detach()
            if not self._busy:
                self._cool_down()
            return
        self._kick()

    def _keyframe_will_do(self, gop: Gop) -> bool:
        """Whether every waiting request accepts a picture as old as the GOP's keyframe."""
        age = self._now_ms() - gop.arrived_ms
        return all(want.max_age_ms > 0 and age <= want.max_age_ms for want in self._waiters)

    def _waits_for_gop(self, gop: Gop) -> bool:
        """Nobody is asking: a pinned stream is decoded a whole GOP at a time, once the next
        one starts (the job for that GOP's first unit did so)."""
        return self.pinned and gop.seq == self._done_at[0] and not self.requested

    def _cool_down(self) -> None:
        """Nobody asks any more: let go of the decoder's codec context, pictures and cached PNG
        (megabytes at 720p, for as long as the stream lives otherwise). The next request
        decodes from the keyframe, as a cold one does."""
        self.decoder.reset()
        self._images = None
        self._done_at = (-1, -1)
        self._on_cool(self)

    def stream_gone(self) -> None:
        """The stream ended while this source was not reading it (it had cooled): nothing else
        tells it, so let go of everything now, unless a job still runs (which then does)."""
        if self._reader is None and not self._busy:
            self._release()

    def _stream_ended(self, stream: Stream) -> None:
        self._reader = None  # closed by the stream after this
        waiters, self._waiters = self._waiters, []
        for want in waiters:
            want.d.errback(StreamNotFound(stream.name))
        if self.pinned and stream.gop is not None:
            if self._may_finish(self):
                # The pictures still held for B-frame reordering are the last frames of the
                # stream, and the auto-snapshotter counts them too: drain once it is free.
                self._drain_from = stream.gop
                if not self._busy:
                    self._drain()
            else:
                self._abandoned = True
                if not self._busy:
                    self._finish_abandoned()
        elif self.pinned and not self._busy:
            # Nothing cached to drain (audio only, or the source dropped): this is the end.
            for callback in self._after_job:
                callback(True)
        if not self._busy:
            self._release()

    def _finish_abandoned(self) -> None:
        """The last frames of an ended stream were given up (no job runs now): count them as
        a dropped GOP and tell the listeners this was the last job."""
        self.decoder.dropped_gops += 1
        for callback in self._after_job:
            callback(True)

    def _release(self) -> None:
        """The stream is over and its last job done: let go of the decoder (codec context,
        pictures), the listeners and the cached PNG now. Nothing of an ended stream may wait
        for a garbage collection: the decoder's native memory is invisible to it."""
        self.released = True
        self.decoder.release()
        self._frame_listener = None
        self._after_job = []
        self._images = None
        self._served = {}
        self._drain_from = None
        self._running = None
        self._on_heat = _no_heat
        on_release, self._on_release = self._on_release, _no_heat
        on_release(self)

    def _drain(self) -> None:
        gop, self._drain_from = self._drain_from, None
        if gop is None:
            return
        self._busy = True
        job = self._run(self._drain_job, gop, len(gop.units))
        job.addBoth(self._finished, [], (gop.seq, len(gop.units)))

    def _kick(self) -> None:
        if self._busy:
            return
        gop = self.stream.gop
        if gop is None or not can_decode(gop.params.codec):
            waiters, self._waiters = self._waiters, []
            for want in waiters:
                want.d.callback(None)
            return
        end = len(gop.units)
        if not self._waiters and (self._done_at == (gop.seq, end) or self._waits_for_gop(gop)):
            return
        if self._waiters and not self.hot and self._keyframe_will_do(gop):
            end = 1  # every request accepts the keyframe's picture: decode nothing more
        waiters, self._waiters = self._waiters, []
        self._busy = True
        running = self._running = _Job((gop.seq, end), waiters, defer=not self.requested)
        job = self._run(self._job, running, gop, end)
        job.addBoth(self._finished, running.waiters, (gop.seq, end))

    def _finished(
        self,
        result: list[Snapshot | BadImageParam] | Failure | None,
        waiters: list[_Want],
        at: tuple[int, int],
    ) -> None:
        self._busy = False
        self._running = None
        self._done_at = at
        answers: list[Snapshot | BadImageParam] | None = None
        if isinstance(result, Failure):
            self.decoder.reset()
            self._decode_failed(result.getErrorMessage(), result)
        else:
            answers = result
            if self.decoder.errors:
                self._decode_failed(self.decoder.last_error)
        if self.stream.ended:
            for want in waiters:
                want.d.errback(StreamNotFound(self.stream.name))
            if self._abandoned:
                self._finish_abandoned()
                self._release()
                return
            self._drain()
            final = not self._busy
            for callback in self._after_job:
                callback(final)
            if final:
                self._release()
            return
        for callback in self._after_job:
            callback(False)
        for i, want in enumerate(waiters):
            answer = answers[i] if answers is not None else None
            if isinstance(answer, BadImageParam):
                want.d.errback(answer)
                continue
            if answer is not None and want.max_age_ms > 0:
                self._keep(want.spec, answer)
            want.d.callback(answer)
        if self._waiters or self.hot:
            self._kick()
        elif self._reader is None and not self.pinned:
            self._cool_down()  # it cooled while this job ran

    def _keep(self, spec: ImageSpec, snapshot: Snapshot) -> None:
        """Remember the newest small image of each spec for requests with a max age."""
        served = self._served
        if len(snapshot.data) > MAX_SERVED_BYTES:
            served.pop(spec, None)
            return
        served.pop(spec, None)
        served[spec] = snapshot
        while len(served) > MAX_SERVED_SPECS:
            del served[next(iter(served))]

    def _decode_failed(self, reason: str, failure: Failure | None = None) -> None:
        """Logged once per stream: a broken or hostile stream fails the same way every frame."""
        if failure is not None:
            log.debug(
                "stream {stream_name}: decoding failed: {log_failure}",
                stream_name=self.stream.name,
                log_failure=failure,
            )
        if self._errors_logged:
            return
        self._errors_logged = True
        log.warn(
            "stream {stream_name}: decoding failed: {reason} (logged once per stream)",
            stream_name=self.stream.name,
            reason=reason,
        )

    def after_job(self, callback: Callable[[bool], object]) -> None:
        """Run `callback(final)` on the reactor after each job; `final` after the last job of an
        ended stream (the auto-snapshotter reports from it)."""
        self._after_job.append(callback)

    # -- pool side ----------------------------------------------------------------------------
    def _drain_job(self, gop: Gop, end: int) -> None:
        started = time.perf_counter()
        self.decoder.finish(gop, end)
        self._stats.decoded(time.perf_counter() - started)

    def _job(self, job: _Job, gop: Gop, end: int) -> list[Snapshot | BadImageParam] | None:
        if self._abandoned:
            job.close()
            return None  # queued before its stream ended and was given up: nothing to do
        started = time.perf_counter()
        if not job.png_wanted:
            self.decoder.catch_up(gop, end, defer=job.defer)
            if not job.close():
                self._stats.decoded(time.perf_counter() - started)
                return None
            # A request joined while this job decoded ahead of requests: answer it now.
        else:
            job.close()
        frame = self.decoder.newest(gop, end)
        self._stats.decoded(time.perf_counter() - started)
        if frame is None:
            return None
        cached = self._images
        if cached is None or cached[0] is not frame:
            cached = self._images = (frame, {})
        images = cached[1]
        # One encode per distinct encoding among the requests (same frame, format, size).
        return [self._encoded(frame, images, want.spec) for want in job.waiters]

    def _encoded(
        self,
        frame: DecodedFrame,
        images: dict[tuple[object, ...], EncodedImage],
        spec: ImageSpec,
    ) -> Snapshot | BadImageParam:
        picture = frame.frame
        try:
            size = spec.size_for(picture.width, picture.height)
        except BadImageParam as err:
            return err
        key = _key(spec, *size)
        image = images.get(key)
        if image is None:
            image = images[key] = encode(picture, spec)
        fmt, width, height, quality = key
        picture_id = f"{self.stream.media_session_id}.{frame.gop_seq}.{frame.pos}"
        tag = f"{picture_id}.{fmt}.{width}x{height}.q{quality}"
        return Snapshot(image, frame.captured_ms, _etag_safe(tag))


def _key(spec: ImageSpec, width: int, height: int) -> tuple[object, ...]:
    """What makes two encodings of one picture the same bytes."""
    return (spec.format, width, height, 0 if spec.format == "png" else spec.quality)


def _etag_safe(tag: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in tag)


class _Job:
    """One decode job of a FrameSource, and the requests it answers. A request may join a job
    that decodes ahead of requests until the job has decided (in the pool) whether to make a
    PNG; the lock makes that decision and a join exclusive."""

    __slots__ = ("_closed", "_lock", "at", "defer", "png_wanted", "waiters")

    def __init__(self, at: tuple[int, int], waiters: list[_Want], defer: bool = False) -> None:
        self.at = at
        self.defer = defer  # nobody asked lately: a listener's decoder may wait for whole GOPs
        self.waiters = waiters
        self.png_wanted = bool(waiters)
        self._closed = False
        self._lock = threading.Lock()

    def join(self, want: _Want) -> bool:
        """Reactor: answer `want` with this job's picture; False once the job can no longer."""
        with self._lock:
            if self._closed:
                return False
            self.waiters.append(want)
            self.png_wanted = True
            return True

    def close(self) -> bool:
        """Pool: no more joins; whether a PNG is wanted."""
        with self._lock:
            self._closed = True
            return self.png_wanted


class SnapshotService:
    """take(name): the newest frame of a live stream as PNG, within the configured interval."""

    def __init__(
        self,
        hub: StreamHub,
        run_in_pool: PoolRunner,
        clock: IReactorTime,
        *,
        interval_ms: int = 3000,
        attempts: int = 30,
        hot_seconds: float = HOT_SECONDS,
        max_hot: int = MAX_HOT_STREAMS,
        trim_after_s: float = TRIM_AFTER_S,
        release_memory: Callable[[], object] = release_free_memory,
        max_ended_backlog: int = MAX_ENDED_BACKLOG,
        stats: SnapshotStats | None = None,
    ) -> None:
        self.hub = hub
        self.stats: SnapshotStats = stats if stats is not None else NoStats()
        # Decoder counters of released sources, and the sources of ended streams not released
        # yet (a last job still runs): with the live ones, totals that never go backwards.
        self.released_totals = DecoderTotals()
        self._ending: set[FrameSource] = set()
        self._max_ended_backlog = max_ended_backlog
        # Ended streams whose decoders still hold memory until their last job has run.
        self._ended_backlog: set[FrameSource] = set()
        self.abandoned_ends = 0
        self._trim_after_s = trim_after_s
        self._release_memory = release_memory
        self._trim: IDelayedCall | None = None
        self._max_hot = max_hot
        self._hot: dict[FrameSource, None] = {}  # streams decoded ahead of requests, in order
        self._run = run_in_pool
        self._clock = clock
        self.interval = interval_ms / 1000.0
        self.attempts = max(1, attempts)
        self._hot_seconds = hot_seconds
        self._sources: dict[Stream, FrameSource] = {}

    def source(self, stream: Stream) -> FrameSource:
        """The stream's shared FrameSource (made on first use, dropped when the stream ends)."""
        src = self._sources.get(stream)
        if src is None:
            src = self._sources[stream] = FrameSource(
                stream,
                self._run,
                self._clock,
                self._hot_seconds,
                self._heated,
                self._released,
                self._may_finish,
                self._cooled,
                self.stats,
            )
            stream.on_end(self._forget)
        return src

    def _forget(self, stream: Stream) -> None:
        src = self._sources.pop(stream, None)
        if src is not None:
            self._hot.pop(src, None)
            if not src.released:
                self._ending.add(src)
            src.stream_gone()

    def _may_finish(self, source: FrameSource) -> bool:
        """An auto-snapshotted stream ended: may its decoder finish its last frames? Not while
        too many ended streams already wait for the pool (overload)."""
        if len(self._ended_backlog) >= self._max_ended_backlog:
            self.abandoned_ends += 1
            if self.abandoned_ends == 1:
                log.warn(
                    "decoding is behind: the last frames of streams that end while "
                    "{count} ended streams wait for the pool are dropped (counted per stream)",
                    count=self._max_ended_backlog,
                )
            return False
        self._ended_backlog.add(source)
        return True

    def _released(self, source: FrameSource) -> None:
        self._ended_backlog.discard(source)
        self._ending.discard(source)
        self.released_totals.add(source.decoder)
        # A decoder of an ended stream let go of its memory (after its last job, which may run
        # well after the stream ended when the pool is busy).
        self._schedule_trim()

    def _cooled(self, source: FrameSource) -> None:
        self._schedule_trim()  # a decoder nobody asks any more let go of its memory

    def _schedule_trim(self) -> None:
        if self._trim is None and self._trim_after_s > 0:
            self._trim = self._clock.callLater(self._trim_after_s, self._trim_memory)

    def _trim_memory(self) -> None:
        def done(result: object) -> None:
            self._trim = None
            if isinstance(result, Failure):
                log.warn("releasing free memory failed: {error}", error=result.getErrorMessage())

        # Still pending until the trim ran: streams ending meanwhile need no other one.
        self._run(self._release_memory).addBoth(done)

    def _heated(self, source: FrameSource) -> None:
        # Keeping a stream decoded costs ~8 % of a core at 720p30, and decoding on request never
        # costs more in total (it skips what nobody saw): hot is only about latency. So the
        # first `max_hot` streams asked keep it while they are asked; the others are served cold
        # rather than evicting a hot stream (round-robin polling would otherwise thrash).
        if source.pinned:
            return  # decoded anyway for the auto-snapshotter: costs no extra budget
        for other in list(self._hot):
            if not other.hot:
                del self._hot[other]
        if source in self._hot:
            return
        if len(self._hot) < self._max_hot:
            self._hot[source] = None
        else:
            source.cool()

    def decoder_totals(self) -> DecoderTotals:
        """Every decoder's counters since start, ended streams' included (read at a scrape;
        pool threads may be counting meanwhile, so a total is as of about now)."""
        totals = dataclasses.replace(self.released_totals)
        for source in (*self._sources.values(), *self._ending):
            if not source.released:
                totals.add(source.decoder)
        return totals

    def decoders(self) -> dict[Stream, StreamDecoder]:
        """The decoder of each live stream that has one."""
        return {stream: source.decoder for stream, source in self._sources.items()}

    @property
    def hot_streams(self) -> int:
        return sum(1 for src in self._hot if src.hot)

    def pin(
        self,
        stream: Stream,
        listener: Callable[[DecodedFrame], bytes | None],
        want: Callable[[int], bool] | None = None,
    ) -> FrameSource:
        """Keep `stream` decoded for its whole life (see FrameSource.pin)."""
        source = self.source(stream)
        source.pin(listener, want)
        return source

    def take(self, name: str, *, endpoint: str = ENDPOINT_OTHER) -> Deferred[bytes]:
        """The WCS snapshot: a full-size PNG of the newest frame."""
        return self.take_image(name, endpoint=endpoint).addCallback(lambda snap: snap.data)

    def take_image(
        self,
        name: str,
        spec: ImageSpec = PNG,
        max_age_ms: int = 0,
        *,
        fail_fast: bool = False,
        endpoint: str = ENDPOINT_OTHER,
    ) -> Deferred[Snapshot]:
        """The newest frame of stream `name` encoded as `spec` asks (see FrameSource.request),
        within the configured interval. Errbacks: StreamNotFound, BadImageParam,
        SnapshotTimeout (with its reason). `fail_fast`: a stream whose video cannot be decoded
        at all (codec, picture size) fails at once rather than after the interval.
        `endpoint` names the caller in the request counts (SnapshotStats.answered)."""
        started = self._clock.seconds()
        stream = self.hub.get(name)
        source = self._sources.get(stream) if stream is not None else None
        # Hot: the stream was being decoded ahead when asked (a request answers fast).
        hot = source is not None and source.hot

        def answered(outcome: object) -> object:
            seconds = max(0.0, self._clock.seconds() - started)
            self.stats.answered(endpoint, result_of(outcome), seconds, hot)
            return outcome

        d: Deferred[Snapshot]
        if stream is None:
            d = fail(StreamNotFound(name))
        else:
            code, detail = video_state(stream) if fail_fast else ("ok", "")
            if code == UNSUPPORTED_CODEC:
                d = fail(SnapshotTimeout(code, detail))
            else:
                d = _Attempts(self, stream, spec, max_age_ms).result
        return d.addBoth(answered)

    def video_json(self, stream: Stream) -> dict[str, object]:
        """The "video" field of a stream's REST object: whether a snapshot can be taken now,
        and how long ago its newest keyframe arrived."""
        source = self._sources.get(stream)
        code, detail = source.video_state() if source is not None else video_state(stream)
        gop = stream.gop
        age = None
        if gop is not None and gop.arrived_ms:
            age = max(0, stream.now_ms() - gop.arrived_ms)
        out: dict[str, object] = {"state": code, "lastKeyframeAgeMs": age}
        if detail:
            out["detail"] = detail
        return out


class _Attempts:
    """One request: ask the stream's FrameSource up to `attempts` times within the interval."""

    def __init__(
        self, service: SnapshotService, stream: Stream, spec: ImageSpec, max_age_ms: int
    ) -> None:
        self.service = service
        self.stream = stream
        self.spec = spec
        self.max_age_ms = max_age_ms
        self.source = service.source(stream)
        self.result: Deferred[Snapshot] = Deferred()
        clock = service._clock
        self._clock = clock
        self._delay = service.interval / service.attempts
        self._retry: IDelayedCall | None = None
        self._asked_keyframe = False
        self._timeout = clock.callLater(service.interval, self._timed_out)
        self._attempt()

    def _attempt(self) -> None:
        self._retry = None
        if self.result.called:
            return
        if self.stream.ended:
            self._failed(Failure(StreamNotFound(self.stream.name)))
            return
        if self.stream.gop is None and not self._asked_keyframe:
            # Nothing decodable cached: a publisher that can be asked (WebRTC PLI) sends a
            # keyframe now instead of at its next scheduled one.
            self._asked_keyframe = True
            self.stream.request_keyframe()
        self.source.request(self.spec, self.max_age_ms).addCallbacks(self._got, self._failed)

    def _got(self, snapshot: Snapshot | None) -> None:
        if self.result.called:
            return
        if snapshot is not None:
            self._timeout.cancel()
            self.result.callback(snapshot)
            return
        if self._retry is None:
            self._retry = self._clock.callLater(self._delay, self._attempt)

    def _failed(self, failure: Failure) -> None:
        if self.result.called:
            return
        self._timeout.cancel()
        if self._retry is not None:
            self._retry.cancel()
        self.result.errback(failure)

    def _timed_out(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if not self.result.called:
            code, detail = self.source.video_state()
            if code == "ok":
                code, detail = TIMEOUT, "no picture within snapshot_taking_interval_ms"
            self.result.errback(SnapshotTimeout(code, detail))
