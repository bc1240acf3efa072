"""The auto-snapshot setup the snapshot tests share: a hub, a Clock, a SnapshotService on a pool
(synchronous unless a test gives one) and an AutoSnapshotter writing under a temp root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from av.video.frame import VideoFrame
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.unit.fakes import publish_now, sync_pool
from tests.unit.media_fixtures import Sample
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
        batch: int = 1,
        encode: Callable[[VideoFrame], bytes] | None = None,
    ) -> None:
        self.hub = StreamHub()
        self.clock = Clock()
        self.snapshots = SnapshotService(
            self.hub, pool, self.clock, hot_seconds=10, pinned_batch=batch
        )
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

    def publish(self, name: str, sample: Sample, units: int | None = None) -> Stream:
        stream = publish_now(self.hub, name, PROVIDER_RTMP)
        for unit in sample.units[:units]:
            stream.push(unit)
        return stream
