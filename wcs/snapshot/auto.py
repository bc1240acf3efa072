"""Automatic snapshots: every Nth decoded frame of every stream as a numbered PNG in a folder per
stream, newest N kept; files appear whole (temp file, then link) or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger

from wcs.directory import InvalidName, check_stream_name
from wcs.media.decoder import DecodedFrame, StreamDecoder
from wcs.media.image import shared_encoders
from wcs.snapshot.service import SnapshotService
from wcs.streams import Stream, StreamHub

if TYPE_CHECKING:
    from av.video.frame import VideoFrame

log = Logger(namespace="wcs.snapshot.auto")

NAMING_MEDIA_SESSION_ID = "mediaSessionId"
NAMING_STREAM_NAME = "streamName"

FILE_RX = re.compile(r"^(\d{6,})\.png$")
TEMP_RX = re.compile(r"^\.\d{6,}\.png\.[\w.-]*\.tmp$")
# Numbers tried past a taken one before giving up (another writer racing for the same folder).
MAX_NUMBER_CLASHES = 100


def file_name(number: int) -> str:
    return f"{number:06d}.png"


def scan_numbers(folder: Path) -> list[int]:
    """Numbers of the snapshot files in `folder`, ascending; a missing folder has none."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(FILE_RX.match, names) if m)


def clean_leftovers(root: Path) -> int:
    """Remove temp files a killed server left in `root`'s sub-folders; returns how many."""
    removed = 0
    try:
        folders = [entry for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    for folder in folders:
        try:
            names = os.listdir(folder.path)
        except OSError:
            continue
        for name in names:
            if TEMP_RX.match(name):
                try:
                    os.unlink(os.path.join(folder.path, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def _write_file(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist) holding `data`; a failure leaves no file behind."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def write_numbered(folder: Path, number: int, data: bytes) -> int:
    """Write `data` as `file_name(number)` in `folder`, or the next free number if that one is
    taken; returns the number used. Readers see the whole file or none: it is written under a
    temp name and hard-linked into place, which (unlike rename) never replaces an existing file."""
    tmp = folder / f".{number:06d}.png.{os.getpid()}-{threading.get_ident()}.tmp"
    _write_file(tmp, data)
    try:
        for _ in range(MAX_NUMBER_CLASHES):
            target = folder / file_name(number)
            try:
                os.link(tmp, target)
                return number
            except FileExistsError:
                number += 1
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS):
                    raise
                # A filesystem without hard links: rename is still atomic, and this folder has
                # one writer at a time (one live stream per name).
                if target.exists():
                    number += 1
                    continue
                os.replace(tmp, target)
                return number
        raise FileExistsError(errno.EEXIST, "no free snapshot number", str(folder))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class SnapshotFolder:
    """One stream's sub-folder: numbering that continues after the highest file present, and
    retention. Used from pool threads, one at a time."""

    def __init__(self, root: Path, key: str, retention: int) -> None:
        self.root = root
        self.path = root / key
        self.retention = retention
        self._next: int | None = None
        self._checked = False

    def _check_inside_root(self) -> None:
        # The name was checked at publish; a symlink planted under the root could still lead out.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(self.path)
        if os.path.dirname(real) != real_root:
            raise PermissionError(
                errno.EACCES, "snapshot folder resolves outside snapshot_auto_dir", real
            )
        self._checked = True

    def write(self, png: bytes) -> str:
        """Write the next numbered file; returns its name. Raises OSError (nothing written)."""
        if not self._checked:
            self.path.mkdir(parents=True, exist_ok=True)
            self._check_inside_root()
        if self._next is None:
            present = scan_numbers(self.path)
            self._next = present[-1] + 1 if present else 1
        try:
            number = write_numbered(self.path, self._next, png)
        except FileNotFoundError:
            # The folder was deleted while the stream runs: make it again, once.
            self.path.mkdir(parents=True, exist_ok=True)
            self._check_inside_root()
            number = write_numbered(self.path, self._next, png)
        self._next = number + 1
        return file_name(number)

    def prune(self) -> None:
        """Delete the oldest files beyond the retention count (0 keeps all)."""
        if self.retention <= 0:
            return
        numbers = scan_numbers(self.path)
        for number in numbers[: -self.retention]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / file_name(number))


class AutoStream:
    """The auto-snapshotter of one publish: writes the pictures whose display number (from 1) is
    a multiple of `rate`; the decoder decodes only those and what they reference (see `wants`).

    `on_frame` runs in the pool (inside the stream's decode job); `report` runs on the reactor
    after each job and does all the logging, once per change of state rather than per frame.
    """

    def __init__(
        self,
        stream: Stream,
        folder: SnapshotFolder,
        rate: int,
        encode: Callable[[VideoFrame], bytes],
    ) -> None:
        self.stream = stream
        self.folder = folder
        self.rate = rate
        self.encode = encode
        self.decoder: StreamDecoder | None = None
        self.written = 0
        self.errors = 0
        self.finished = False  # its stream ended and its last frames are written
        self.last_file: str | None = None
        self.last_error: str | None = None
        self._failing = False
        self._logged_error: str | None = None
        self._logged_failing = False
        self._logged_drops = False

    @property
    def frames(self) -> int:
        """Frames of the stream so far, in display order (decoded or skipped as not needed)."""
        return self.decoder.frames_seen if self.decoder is not None else 0

    def wants(self, number: int) -> bool:
        return number % self.rate == 0

    # -- pool side ----------------------------------------------------------------------------
    def on_frame(self, frame: DecodedFrame) -> bytes | None:
        if not self.wants(frame.number):
            return None
        png = self.encode(frame.frame)
        try:
            name = self.folder.write(png)
        except OSError as err:
            self._error(err)
            return png
        self.written += 1
        self.last_file = name
        self._failing = False
        try:
            self.folder.prune()
        except OSError as err:
            self._error(err)
        return png

    def _error(self, err: OSError) -> None:
        self.errors += 1
        self.last_error = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
        self._failing = True

    # -- reactor side -------------------------------------------------------------------------
    def report(self, final: bool = False) -> None:
        name = self.stream.name
        if self._failing and self.last_error != self._logged_error:
            self._logged_error = self.last_error
            self._logged_failing = True
            log.error(
                "stream {stream_name}: auto snapshot not written ({error}); streaming goes on, "
                "retrying with the next one",
                stream_name=name,
                error=self.last_error,
            )
        elif not self._failing and self._logged_failing:
            self._logged_failing = False
            self._logged_error = None
            log.info(
                "stream {stream_name}: auto snapshots written again ({file})",
                stream_name=name,
                file=self.last_file,
            )
        decoder = self.decoder
        if decoder is not None and decoder.dropped_gops and not self._logged_drops:
            self._logged_drops = True
            log.warn(
                "stream {stream_name}: decoding fell behind real time; whole GOPs are skipped "
                "(auto snapshots are missing for them)",
                stream_name=name,
            )
        if final:
            log.info(
                "stream {stream_name}: auto snapshots done: {written} written, last {file}, "
                "{errors} errors, {dropped} GOPs dropped",
                stream_name=name,
                written=self.written,
                file=self.last_file,
                errors=self.errors,
                dropped=decoder.dropped_gops if decoder else 0,
            )

    def to_json(self) -> dict[str, object]:
        decoder = self.decoder
        return {
            "folder": str(self.folder.path),
            "rate": self.rate,
            "frames": self.frames,
            "framesDecoded": decoder.frames_decoded if decoder else 0,
            "written": self.written,
            "lastFile": self.last_file,
            "errors": self.errors,
            "lastError": self.last_error,
            "droppedGops": decoder.dropped_gops if decoder else 0,
            "droppedFrames": decoder.dropped_units if decoder else 0,
        }


class AutoSnapshotter:
    """Puts an AutoStream on every stream published from start() on. `encode` makes the PNGs
    (default: fpng in helper processes, so that encoding never holds the reactor's GIL)."""

    def __init__(
        self,
        hub: StreamHub,
        snapshots: SnapshotService,
        *,
        root: Path,
        naming: str = NAMING_MEDIA_SESSION_ID,
        rate: int = 30,
        retention: int = 20,
        encode: Callable[[VideoFrame], bytes] | None = None,
    ) -> None:
        if naming not in (NAMING_MEDIA_SESSION_ID, NAMING_STREAM_NAME):
            raise ValueError(f"unknown naming {naming!r}")
        if rate < 1 or retention < 0:
            raise ValueError("rate must be >= 1 and retention >= 0")
        self.hub = hub
        self.snapshots = snapshots
        self.root = Path(os.path.abspath(root))
        self.naming = naming
        self.rate = rate
        self.retention = retention
        self.encode = encode if encode is not None else shared_encoders().frame_to_png
        self.streams: dict[Stream, AutoStream] = {}
        # Ended streams whose last frames are still being written, and what the finished ones
        # wrote and failed to write: with the live ones, totals that never go backwards.
        self.ending: set[AutoStream] = set()
        self.finished_written = 0
        self.finished_errors = 0

    def start(self) -> None:
        """Make the root and remove temp files a killed server left (before the reactor runs)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            removed = clean_leftovers(self.root)
        except OSError as err:
            log.error(
                "snapshot_auto_dir {root} is not usable ({error}); auto snapshots are counted "
                "as errors until it is",
                root=str(self.root),
                error=err,
            )
        else:
            log.info(
                "auto snapshots: every {rate}th frame into {root}/<{naming}>/, keeping {keep}"
                "{leftovers}",
                rate=self.rate,
                root=str(self.root),
                naming=self.naming,
                keep=self.retention or "all",
                leftovers=f"; removed {removed} leftover temp files" if removed else "",
            )
        self.hub.add_observer(self._published)

    def describe(self, stream: Stream) -> dict[str, object] | None:
        """The "autoSnapshot" field of a stream's REST object (None: not snapshotted)."""
        auto = self.streams.get(stream)
        return auto.to_json() if auto is not None else None

    def key_of(self, stream: Stream) -> str:
        return stream.name if self.naming == NAMING_STREAM_NAME else stream.media_session_id

    def _published(self, stream: Stream) -> None:
        key = self.key_of(stream)
        try:
            check_stream_name(key)
        except InvalidName as err:  # refused at publish already; this is a second line
            log.error(
                "stream {stream_name}: no auto snapshots, unsafe folder name: {error}",
                stream_name=stream.name,
                error=err,
            )
            return
        folder = SnapshotFolder(self.root, key, self.retention)
        auto = AutoStream(stream, folder, self.rate, self.encode)
        self.streams[stream] = auto
        stream.on_end(self._ended)
        source = self.snapshots.pin(stream, auto.on_frame, auto.wants)
        auto.decoder = source.decoder
        source.after_job(auto.report)
        source.after_job(lambda final: self._finished(auto) if final else None)

    def _ended(self, stream: Stream) -> None:
        auto = self.streams.pop(stream, None)
        if auto is not None and not auto.finished:
            self.ending.add(auto)

    def _finished(self, auto: AutoStream) -> None:
        """The last job of an ended stream ran: its counts move to the finished totals."""
        if auto.finished:
            return
        auto.finished = True
        self.ending.discard(auto)
        self.finished_written += auto.written
        self.finished_errors += auto.errors

    def totals(self) -> tuple[int, int]:
        """Auto snapshots written and failed since start, ended streams' included."""
        written, errors = self.finished_written, self.finished_errors
        for auto in (*self.streams.values(), *self.ending):
            written += auto.written
            errors += auto.errors
        return written, errors
