"""The GOP cache: every video unit since the newest keyframe, what a snapshot or a new player
starts from."""

from __future__ import annotations

from dataclasses import dataclass, field

from wcs.media.units import MediaUnit, VideoParams

# A GOP longer than this is not cached (a snapshot then waits for the next keyframe):
# 60 s at 30 fps, or 32 MiB of compressed video, whichever comes first.
MAX_GOP_UNITS = 1800
MAX_GOP_BYTES = 32 * 1024 * 1024


@dataclass(eq=False)
class Gop:
    """All video units since one keyframe, in decode order; append-only, so a pool thread may read
    a prefix while the reactor appends."""

    seq: int
    params: VideoParams
    units: list[MediaUnit] = field(default_factory=list)
    size: int = 0


class GopCache:
    """The current GOP of one stream, bounded by MAX_GOP_UNITS and MAX_GOP_BYTES.

    A new keyframe starts a new Gop object (with the next `seq`), so a reader holding the old
    one keeps a consistent prefix.
    """

    def __init__(self, max_units: int = MAX_GOP_UNITS, max_bytes: int = MAX_GOP_BYTES) -> None:
        self.max_units = max_units
        self.max_bytes = max_bytes
        self.gop: Gop | None = None
        self._seq = 0

    def add(self, unit: MediaUnit, params: VideoParams) -> bool:
        """Cache one video unit; False when it overflowed the limits (the GOP is dropped and
        nothing is cached until the next keyframe)."""
        if unit.keyframe:
            self._seq += 1
            self.gop = Gop(self._seq, params, [unit], len(unit.data))
            return True
        gop = self.gop
        if gop is None:
            return True  # nothing decodable until the next keyframe
        if len(gop.units) >= self.max_units or gop.size + len(unit.data) > self.max_bytes:
            self.gop = None
            return False
        gop.units.append(unit)
        gop.size += len(unit.data)
        return True

    def clear(self) -> None:
        self.gop = None
