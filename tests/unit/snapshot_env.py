"""The auto-snapshot setup the snapshot tests share: a hub, a Clock, a SnapshotService on a pool
(synchronous unless a test gives one) and an AutoSnapshotter writing under a temp root."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from av.video.frame import VideoFrame
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.unit.fakes import publish_now, sync_pool
from tests.unit.media_fixtures import Sample
from wcs.media.units import MediaUnit
from wcs.rest.views import StreamViews
from wcs.snapshot.auto import AutoSnapshotter
from wcs.snapshot.service import SnapshotService
from wcs.streams import PROVIDER_RTMP, Stream, StreamHub


class Env:
    """A hub whose streams `AutoSnapshotter` writes under `root`, decoding on `pool`."""

    def __init__(
        self,
        root: Path,
        *,
        naming: str = "streamName",
        rate: int = 15,
        retention: int = 5,
        pool: Callable[..., Deferred[Any]] = sync_pool,
        encode: Callable[[VideoFrame], bytes] | None = None,
    ) -> None:
        self.hub = StreamHub()
        self.clock = Clock()
        self.snapshots = SnapshotService(self.hub, pool, self.clock, hot_seconds=10)
        self.root = root
        self.views = StreamViews(self.hub)
        self.auto = AutoSnapshotter(
            self.hub,
            self.snapshots,
            root=root,
            naming=naming,
            rate=rate,
            retention=retention,
            encode=encode,
        )
        self.views.describe("autoSnapshot", self.auto.describe)
        self.auto.start()

    def publish(
        self, name: str, sample: Sample, units: int | None = None, *, next_gop: bool = True
    ) -> Stream:
        """Publish `sample` (its first `units`); `next_gop`: then start the next GOP (see
        next_gop), so that every GOP of the sample is complete."""
        stream = publish_now(self.hub, name, PROVIDER_RTMP)
        pushed = sample.units[:units]
        for unit in pushed:
            stream.push(unit)
        if next_gop:
            self.next_gop(stream, pushed)
        return stream

    @staticmethod
    def next_gop(stream: Stream, pushed: Sequence[MediaUnit]) -> None:
        """Push `pushed[0]` (a keyframe) once more, a frame after the last of `pushed`: an
        auto-snapshotted stream nobody requests is decoded a GOP at a time, once the next one
        starts."""
        step = pushed[-1].dts - pushed[-2].dts if len(pushed) > 1 else 1
        last = max(unit.pts for unit in pushed)
        stream.push(dataclasses.replace(pushed[0], pts=last + step, dts=pushed[-1].dts + step))
