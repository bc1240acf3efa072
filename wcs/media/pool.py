"""PoolRunner: how decoding work reaches the worker threads, run_in_pool(f, *args) -> Deferred."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

PoolRunner = Callable[..., "Deferred[Any]"]
