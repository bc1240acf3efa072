"""Replays every committed fuzz input (seeds and past crashers) through its target, and a short
hypothesis run per target: what once crashed a parser must never crash it again."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import CORPUS, corpus_files, load_targets

TARGETS = load_targets()


def test_every_target_has_a_seed_corpus() -> None:
    assert TARGETS, "no fuzz targets registered"
    for name in TARGETS:
        assert corpus_files(name), f"tests/fuzz/corpus/{name}/ has no seed inputs"


def test_every_corpus_folder_belongs_to_a_target() -> None:
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders <= set(TARGETS), f"corpus folders without a target: {folders - set(TARGETS)}"


@pytest.mark.parametrize("name", list(TARGETS))
def test_corpus_replays_without_a_crash(name: str) -> None:
    fn = TARGETS[name]
    for path in corpus_files(name):
        fn(path.read_bytes())


@pytest.mark.parametrize("name", list(TARGETS))
def test_random_bytes_do_not_crash(name: str) -> None:
    fn = TARGETS[name]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=2048))
    def run(data: bytes) -> None:
        fn(data)

    run()
