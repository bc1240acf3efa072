"""`twistd` with a fault injected: the first RTSP player of the process raises on its first live
unit (tests only; run as `python faulty_wcs.py <twistd arguments>`)."""

from __future__ import annotations

import itertools
import sys

from twisted.scripts import twistd

from wcs.media.units import MediaUnit
from wcs.rtsp.egress import Player

FAULT = "injected fault"

_players = itertools.count()
_init = Player.__init__
_attach = Player.attach
_send = Player.send


def _faulty_init(self: Player, *args: object, **kwargs: object) -> None:
    _init(self, *args, **kwargs)  # type: ignore[arg-type]
    self._faulty = next(_players) == 0  # type: ignore[attr-defined]
    self._armed = False  # type: ignore[attr-defined]


def _faulty_attach(self: Player) -> None:
    # Armed only once attached: the cached GOP replayed inside attach() goes through, so the
    # unit that raises is a live one, delivered while the publisher's push is on the stack.
    _attach(self)
    self._armed = self._faulty  # type: ignore[attr-defined]


def _faulty_send(self: Player, unit: MediaUnit) -> None:
    if self._armed:  # type: ignore[attr-defined]
        self._armed = False  # type: ignore[attr-defined]
        raise RuntimeError(FAULT)
    _send(self, unit)


def inject() -> None:
    """Patch Player in this process (only the launched server's: importing patches nothing)."""
    Player.__init__ = _faulty_init  # type: ignore[method-assign]
    Player.attach = _faulty_attach  # type: ignore[method-assign]
    Player.send = _faulty_send  # type: ignore[method-assign]


if __name__ == "__main__":
    inject()
    sys.argv[0] = "twistd"
    twistd.run()
