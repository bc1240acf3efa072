"""Fuzz targets for every parser that takes bytes from the network or the operator.

A target is `fn(data: bytes) -> None` that feeds `data` to one parser (or one whole protocol on a
fake transport) and lets only the parser's documented errors pass: anything else escaping is a
crash. `make fuzz` runs each target with atheris for a bounded time (tests/fuzz/run.py); `make
test` replays every committed input under tests/fuzz/corpus/<target>/ (seeds and past crashers).
Targets live in tests/fuzz/fuzz_<area>.py and register with @target("name").
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"

Target = Callable[[bytes], None]
TARGETS: dict[str, Target] = {}


def target(name: str) -> Callable[[Target], Target]:
    """Register a fuzz target under `name` (also the name of its corpus folder)."""

    def register(fn: Target) -> Target:
        if name in TARGETS:
            raise ValueError(f"fuzz target {name!r} registered twice")
        TARGETS[name] = fn
        return fn

    return register


def load_targets() -> dict[str, Target]:
    """Import every tests/fuzz/fuzz_*.py module; return the registered targets by name."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name.startswith("fuzz_"):
            importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(TARGETS.items()))


def corpus_files(name: str) -> list[Path]:
    folder = CORPUS / name
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
