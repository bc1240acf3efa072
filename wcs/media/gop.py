"""The GOP cache: every video unit since the newest keyframe, what a snapshot or a new player
starts from."""

from __future__ import annotations

from dataclasses import dataclass, field

from wcs.media.units import MediaUnit, VideoParams

# A GOP longer than this is not cached (a snapshot then waits for the next keyframe):
# 60 s at 30 fps, or 32 MiB of compressed video, whichever comes first.
MAX_GOP_UNITS = 1800
MAX_GOP_BYTES = 32 * 1024 * 1024
# A picture's capture time is at most this long after its GOP's keyframe (the longest GOP cached).
MAX_OFFSET_MS = 60_000


@dataclass(eq=False)
class Gop:
    """All video units since one keyframe, in decode order; append-only, so a pool thread may read
    a prefix while the reactor appends."""

    seq: int
    params: VideoParams
    units: list[MediaUnit] = field(default_factory=list)
    size: int = 0
    arrived_ms: int = 0  # wall clock (ms since the epoch) when the keyframe arrived

    def captured_ms(self, pos: int) -> int:
        """When the picture of unit `pos` was taken, in ms since the epoch: the keyframe's
        arrival plus the stream's own time from the keyframe to that unit. Anchored at each
        keyframe, so a publisher clock that jumps moves at most one GOP's pictures, and those
        stay within MAX_OFFSET_MS of the keyframe."""
        key = self.units[0]
        unit = self.units[pos]
        offset = int((unit.pts - key.pts) * unit.time_base * 1000)
        return self.arrived_ms + min(max(offset, 0), MAX_OFFSET_MS)


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

    def add(self, unit: MediaUnit, params: VideoParams, now_ms: int = 0) -> bool:
        """Cache one video unit (`now_ms`: the wall clock, read for keyframes); False when it
        overflowed the limits (the GOP is dropped and nothing is cached until the next
        keyframe)."""
        if unit.keyframe:
            self._seq += 1
            self.gop = Gop(self._seq, params, [unit], len(unit.data), now_ms)
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
