"""Shared unit-test fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import twisted.internet
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import implementer

from wcs import tap


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    """Every twisted.logger event emitted while the test runs."""
    events: list[LogEvent] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest.fixture
def fake_reactor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Clock:
    """makeService without touching the process's global reactor."""
    clock = Clock()
    monkeypatch.setattr(tap, "install_reactor", lambda fast_loop=True: clock)
    # Anything that still reached for the global reactor would get the Clock, not a real one.
    monkeypatch.setattr(twisted.internet, "reactor", clock, raising=False)
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", clock)
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory stays here
    return clock
