"""`twistd -n wcs --workers 2`: two real workers behind one set of ports (SO_REUSEPORT) and a
private redis-server; RTMP publishers spread over both, restarts, a clean stop."""

from __future__ import annotations

import base64
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    READY,
    Clip,
    Server,
    best_match,
    decode_png,
    make_clip,
    publish,
    ready_ports,
    start_server,
)

PUBLISHERS = 20
WORKERS = 2
# "worker 1 started (pid 123, node host-w1)"
STARTED = re.compile(r"worker (\d+) started \(pid (\d+),")
REDIS_STARTED = re.compile(r"private redis-server \(pid (\d+)\) starting on unix://(\S+)")
# A worker's own ready line as the supervisor relays it: "w1| ... wcs worker ready: ... cluster=N".
WORKER_READY = re.compile(r"w(\d+)\| .*wcs worker ready: .*cluster=(\d+) \(pid (\d+)\)")


def start_workers(workdir: Path, extra: str = "") -> Server:
    """A real `twistd -n wcs --ephemeral-ports --workers 2`, waited for on its own ready line
    (each worker's own is relayed as "wcs worker ready:", which READY does not match)."""
    server = start_server(workdir, extra, wcs_args=["--workers", str(WORKERS)])
    ready = server.wait_for_log(READY.pattern)
    assert ready.string.endswith(f"workers {WORKERS}"), ready.string
    return server


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def log_matches(server: Server, rx: re.Pattern[str]) -> list[re.Match[str]]:
    with server.cond:
        return [m for line in server.lines if (m := rx.search(line))]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Server]:
    srv = start_workers(tmp_path)
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, "supervisor did not exit cleanly:\n" + "\n".join(srv.lines[-30:])


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    d = tmp_path_factory.mktemp("workers-clip")
    return make_clip(d / "small.flv", bframes=False, audio=False, size="320x180", seconds=20)


def test_the_ready_line_lists_the_shared_ports(cluster: Server) -> None:
    assert set(cluster.ports) == {"http", "https", "rtmp", "rtsp", "ws", "wss"}
    ready = log_matches(cluster, WORKER_READY)
    assert sorted(int(m[1]) for m in ready) == [0, 1]
    for m in ready:
        # Each worker's line lists the same shared ports, plus its own cluster listener.
        line = m[0][m[0].index("wcs worker ready:") :].replace("worker ", "")
        own = ready_ports(line)
        assert {k: v for k, v in own.items() if k != "cluster"} == cluster.ports
        assert own["cluster"] not in cluster.ports.values()
    status, body = cluster.rest("/ready", method="GET")
    assert status == 200, body


def test_twenty_publishers_spread_over_both_workers_and_all_answer_snapshots(
    cluster: Server, small_clip: Clip
) -> None:
    names = [f"cam{i}" for i in range(PUBLISHERS)]
    mark = cluster.log_mark()
    encoders = [publish(cluster.rtmp(name), small_clip.path) for name in names]
    try:
        owner: dict[str, int] = {}
        for name in names:
            m = cluster.wait_for_log(rf"w(\d+)\| .*publishing {name} ", start=mark, timeout=30)
            owner[name] = int(m[1])
        # The kernel spread the connections: each worker took some of the publishers.
        assert set(owner.values()) == {0, 1}, owner
        # Every stream answers through the one HTTP port, whichever worker the request reaches
        # (a stream of the other worker is forwarded to it).
        for name in names:
            for _ in range(3):  # three requests: some land on the worker that does not own it
                status, body = cluster.snapshot(name, timeout=15)
                assert status == 200, (name, owner[name], body)
                assert isinstance(body, dict)
                assert decode_png(body["data"]).shape == (small_clip.height, small_clip.width, 3)
    finally:
        for encoder in encoders:
            if encoder.poll() is None:
                encoder.terminate()
        for encoder in encoders:
            encoder.wait(timeout=10)


AUTO_RATE = 10


@pytest.fixture(scope="module")
def one_second_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    d = tmp_path_factory.mktemp("workers-short")
    return make_clip(d / "short.flv", bframes=False, audio=False, size="320x180", seconds=1)


def test_auto_snapshot_numbering_continues_whichever_worker_takes_the_stream(
    tmp_path: Path, one_second_clip: Clip
) -> None:
    """The same name published again and again lands on either worker (the kernel picks); the
    folder is written by the worker that owns the stream at the time, and its numbering goes on
    from the files present, without a gap or a file written twice."""
    srv = start_workers(
        tmp_path,
        "snapshot_auto_enabled=true\nsnapshot_auto_dir=auto\nsnapshot_auto_naming=streamName\n"
        f"snapshot_auto_rate={AUTO_RATE}\nsnapshot_auto_retention=0\n",
    )
    per_publish = len(one_second_clip.thumbs) // AUTO_RATE
    try:
        takers: list[int] = []
        # Until both workers have taken it (12 tries: all on one worker has odds 2 in 4096).
        while len(takers) < 12 and (len(set(takers)) < 2 or len(takers) < 3):
            mark = srv.log_mark()
            encoder = publish(srv.rtmp("cam"), one_second_clip.path)
            assert encoder.wait(timeout=30) == 0
            done = srv.wait_for_log(r"w(\d+)\| .*stream cam: auto snapshots done", start=mark)
            takers.append(int(done[1]))
        assert set(takers) == {0, 1}, takers
        folder = tmp_path / "auto" / "cam"
        names = sorted(os.listdir(folder))
        assert names == [f"{n:06d}.png" for n in range(1, per_publish * len(takers) + 1)]
        for i, name in enumerate(names):
            rgb = decode_png(base64.b64encode((folder / name).read_bytes()).decode())
            index, psnr = best_match(one_second_clip, rgb)
            assert index == (i % per_publish + 1) * AUTO_RATE - 1, (name, index, psnr)
    finally:
        assert srv.stop() == 0


def test_a_worker_killed_with_sigkill_is_restarted(cluster: Server) -> None:
    pids = {int(m[1]): int(m[2]) for m in log_matches(cluster, STARTED)}
    mark = cluster.log_mark()
    os.kill(pids[1], signal.SIGKILL)
    cluster.wait_for_log(
        rf"worker 1 \(pid {pids[1]}\) exited with signal SIGKILL; restarting it in 1 s",
        start=mark,
    )
    again = cluster.wait_for_log(r"worker 1 ready again \(pid (\d+)\)", start=mark)
    new_pid = int(again[1])
    assert new_pid != pids[1] and alive(new_pid)
    assert alive(pids[0])  # the other worker never stopped
    # The new worker serves: its own /ready on its private listener, and the shared port.
    relayed = cluster.wait_for_log(rf"w1\| .*cluster=(\d+) \(pid {new_pid}\)", start=mark)
    status, body = cluster.rest("/ready", method="GET", base=f"http://127.0.0.1:{relayed[1]}")
    assert status == 200, body
    status, body = cluster.rest("/ready", method="GET")
    assert status == 200, body


def test_sigterm_stops_every_worker_and_the_private_redis(tmp_path: Path) -> None:
    srv = start_workers(tmp_path)
    workers = [int(m[2]) for m in log_matches(srv, STARTED)]
    redis = log_matches(srv, REDIS_STARTED)
    assert len(workers) == WORKERS and len(redis) == 1
    redis_pid, sock = int(redis[0][1]), Path(redis[0][2])
    assert sock.exists() and alive(redis_pid) and all(alive(p) for p in workers)
    assert srv.stop() == 0, "\n".join(srv.lines[-30:])
    assert not [p for p in workers if alive(p)]
    assert not alive(redis_pid)
    assert not sock.exists()
    assert any(re.search(r"worker \d \(pid \d+\) stopped", line) for line in srv.lines)
