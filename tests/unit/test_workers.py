"""`--workers N`: option parsing, UDP slices, placements, the worker's command line, and the
supervisor's ready line, restarts (backoff on a Clock) and stop, with a fake spawn."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure

from tests.unit.fakes import tap_options
from wcs import tap
from wcs.cluster import placement as placement_module
from wcs.cluster import workers
from wcs.cluster.placement import (
    ENV,
    Placement,
    PlacementError,
    node_base,
    parse_workers,
    split_udp_range,
    worker_argv,
)
from wcs.cluster.redisproc import MISSING, PrivateRedis, socket_path
from wcs.cluster.workers import Supervisor, exit_status, restart_delay
from wcs.config import Settings
from wcs.service import WCSService

REDIS = "unix:///run/wcs/redis.sock"


def texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


# -- options --------------------------------------------------------------------------------


def test_workers_defaults_to_one() -> None:
    assert tap_options()["workers"] == 1


def test_workers_auto_is_the_number_of_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert tap_options("--workers", "auto")["workers"] == 6
    assert tap_options("--workers=AUTO")["workers"] == 6
    assert parse_workers("auto", None) == 1  # cores unknown
    assert parse_workers("auto", 200) == 64  # capped


def test_workers_takes_a_count_from_1_to_64() -> None:
    assert tap_options("--workers", "2")["workers"] == 2
    assert tap_options("--workers", "64")["workers"] == 64


@pytest.mark.parametrize("value", ["0", "65", "-1", "x", "", "2.5"])
def test_workers_refuses_anything_else_with_the_usage(value: str) -> None:
    with pytest.raises(usage.UsageError, match=r"--workers: expected 1 to 64 or auto"):
        tap_options("--workers", value)


# -- UDP slices -----------------------------------------------------------------------------


def test_no_udp_range_leaves_every_worker_on_ephemeral_ports() -> None:
    assert split_udp_range(None, 3) == [None, None, None]


def test_udp_range_is_cut_into_disjoint_even_slices_the_last_taking_the_rest() -> None:
    assert split_udp_range((30000, 30999), 2) == [(30000, 30499), (30500, 30999)]
    slices = split_udp_range((30001, 30100), 3)
    # An odd start is skipped (RTP on even ports); slices never share a port.
    assert slices == [(30002, 30033), (30034, 30065), (30066, 30100)]
    assert split_udp_range((1024, 1027), 1) == [(1024, 1027)]


def test_every_port_of_every_slice_is_in_the_range_and_in_one_slice_only() -> None:
    for count in range(1, 9):
        slices = split_udp_range((40000, 40127), count)
        ports = [p for s in slices if s for p in range(s[0], s[1] + 1)]
        assert len(ports) == len(set(ports))
        assert all(40000 <= p <= 40127 for p in ports)
        assert all(s and s[1] - s[0] + 1 >= 4 for s in slices)


def test_a_udp_range_too_small_for_the_workers_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"30000-30006 \(7 ports\) is too small for 2 workers"):
        split_udp_range((30000, 30006), 2)


def test_makeservice_refuses_a_udp_range_too_small_for_the_workers(
    fake_reactor: Clock, tmp_path: Path
) -> None:
    config = tmp_path / "flashphoner.properties"
    config.write_text(f"rtsp_udp_port_range=30000-30010\ncluster_redis_url={REDIS}\n")
    with pytest.raises(SystemExit, match=r"too small for 4 workers"):
        tap.makeService(tap_options("--config", str(config), "--workers", "4"))


# -- placements -----------------------------------------------------------------------------


def a_placement(**changes: Any) -> Placement:
    base = Placement(
        index=1,
        count=2,
        redis_url=REDIS,
        ports={"http": 8081, "rtmp": 1935},
        udp_range=(30500, 30999),
        node_base="cam-host",
        supervisor_pid=4242,
    )
    return dataclasses.replace(base, **changes)


def test_placement_json_round_trip() -> None:
    for p in (a_placement(), a_placement(udp_range=None, index=0, count=1, ports={})):
        assert Placement.from_json(p.to_json()) == p
    assert json.loads(a_placement().to_json())["udp_range"] == [30500, 30999]
    assert a_placement().node_id == "cam-host-w1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        json.dumps({**json.loads(a_placement().to_json()), "index": 2}),
        json.dumps({**json.loads(a_placement().to_json()), "count": 65, "index": 0}),
        json.dumps({**json.loads(a_placement().to_json()), "ports": {"gopher": 70}}),
        json.dumps({**json.loads(a_placement().to_json()), "udp_range": [1]}),
    ],
)
def test_a_bad_placement_is_refused(text: str) -> None:
    with pytest.raises(PlacementError, match=ENV):
        Placement.from_json(text)


def test_placement_applies_the_supervisors_ports_redis_node_and_slice() -> None:
    s = a_placement().apply(Settings(https_port=8444, cluster_node_id="ignored"))
    assert (s.http_port, s.rtmp_port) == (8081, 1935)
    # A listener the supervisor did not list is not bound by the worker either.
    assert (s.https_port, s.rtsp_port, s.ws_port, s.wss_port) == (None, None, None, None)
    assert s.cluster_redis_url == REDIS
    assert s.cluster_node_id == "cam-host-w1"
    assert s.rtsp_udp_port_range == (30500, 30999)


def test_node_base_is_the_configured_id_or_the_host_name_made_safe() -> None:
    assert node_base(Settings(cluster_node_id="edge-1"), "ignored") == "edge-1"
    assert node_base(Settings(), "cam host/1.example") == "cam-host-1.example"
    assert node_base(Settings(), "///") == "wcs"
    assert len(node_base(Settings(), "h" * 100) + "-w63") == 64


# -- the worker's command line and start ----------------------------------------------------


def test_worker_command_line_runs_twistd_in_the_foreground_logging_to_stdout() -> None:
    argv = worker_argv("/etc/wcs/flashphoner.properties")
    assert argv[:3] == [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    assert argv[3:] == [
        "-n",
        "--pidfile=",
        "--logfile=-",
        "wcs",
        "--config",
        "/etc/wcs/flashphoner.properties",
    ]
    assert "--config" not in worker_argv(None)


def test_a_worker_applies_its_placement_and_gets_a_cluster_listener(
    fake_reactor: Clock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    died_with: list[int] = []
    monkeypatch.setattr(placement_module, "die_with_parent", died_with.append)
    monkeypatch.setenv(ENV, a_placement().to_json())
    config = tmp_path / "flashphoner.properties"
    config.write_text("ip=127.0.0.1\n")
    # --workers is the supervisor's: a worker started with it is still one worker.
    service = tap.makeService(tap_options("--config", str(config), "--workers", "2"))
    assert isinstance(service, WCSService)
    assert died_with == [4242]
    assert service.worker == a_placement()
    assert service.settings.cluster_node_id == "cam-host-w1"
    assert service.descriptions == {
        "http": "tcp:8081:interface=127.0.0.1",
        "rtmp": "tcp:1935:interface=127.0.0.1",
        "cluster": "tcp:0:interface=127.0.0.1",
    }
    # SIGHUP re-reads the file with the placement applied again.
    assert service.reload_source is not None
    assert service.reload_source() == service.settings


def test_a_bad_placement_stops_the_worker(
    fake_reactor: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "{")
    with pytest.raises(SystemExit, match=ENV):
        tap.makeService(tap_options())


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port

    def getHost(self) -> _Port:
        return self


def test_a_worker_advertises_its_cluster_listener(fake_reactor: Clock) -> None:
    service = WCSService(Settings(ip="0.0.0.0"), fake_reactor, worker=a_placement())
    service.ports = {"http": _Port(8081), "cluster": _Port(40001)}  # type: ignore[dict-item]
    assert service.advertise_url() == "http://127.0.0.1:40001"
    configured = Settings(ip="0.0.0.0", cluster_advertise_url="https://10.0.0.5:8444")
    service.settings = configured
    assert service.advertise_url() == "http://10.0.0.5:40001"
    single = WCSService(configured, fake_reactor)
    assert single.advertise_url() == "https://10.0.0.5:8444"


def test_makeservice_with_workers_gives_the_supervisor(fake_reactor: Clock, tmp_path: Path) -> None:
    config = tmp_path / "flashphoner.properties"
    config.write_text(f"cluster_redis_url={REDIS}\n")
    service = tap.makeService(tap_options("--config", "flashphoner.properties", "--workers", "3"))
    assert isinstance(service, Supervisor)
    assert service.count == 3
    # The workers start in --rundir: the file is named by its absolute path.
    assert service.config == str(config)


def test_the_supervisor_runs_on_asyncios_own_loop(
    fake_reactor: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: on uvloop the supervisor never heard of SIGCHLD (uvloop takes the signal
    # wakeup fd), so a killed worker stayed a zombie and was never restarted.
    asked: list[bool] = []

    def install(fast_loop: bool = True) -> Clock:
        asked.append(fast_loop)
        return fake_reactor

    monkeypatch.setattr(tap, "install_reactor", install)
    monkeypatch.setenv("WCS_WORKER", "")
    tap.makeService(tap_options("--workers", "2"))
    tap.makeService(tap_options())
    assert asked == [False, True]


def test_no_redis_server_binary_is_a_clear_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        PrivateRedis(Clock(), tmp_path, binary="").check()
    assert str(info.value) == MISSING
    assert "apt-get install redis-server" in MISSING


def test_the_private_redis_socket_falls_back_to_a_short_path(tmp_path: Path) -> None:
    assert socket_path(tmp_path, 12) == tmp_path / "wcs-redis.12.sock"
    deep = tmp_path / ("d" * 120)
    assert len(str(socket_path(deep, 12))) < 100
    assert socket_path(deep, 12).name == "wcs-redis.12.sock"


# -- the supervisor, with a fake spawn ------------------------------------------------------


class FakeProcess:
    def __init__(self, pid: int, protocol: ProcessProtocol, env: dict[str, str]) -> None:
        self.pid = pid
        self.protocol = protocol
        self.env = env
        self.signals: list[int] = []
        self.ended = False

    def signalProcess(self, signum: int) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(signum)

    def say(self, text: str) -> None:
        self.protocol.childDataReceived(1, text.encode())

    def end(self, reason: Failure) -> None:
        self.ended = True
        self.protocol.processEnded(reason)


class FakeSpawn:
    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []

    def __call__(
        self,
        protocol: ProcessProtocol,
        executable: str,
        argv: list[str],
        env: dict[str, str],
        path: str,
    ) -> FakeProcess:
        assert executable == argv[0] == sys.executable
        process = FakeProcess(1000 + len(self.processes), protocol, env)
        self.processes.append(process)
        return process

    def of(self, index: int) -> list[FakeProcess]:
        return [p for p in self.processes if Placement.from_json(p.env[ENV]).index == index]


def killed(signum: int = signal.SIGKILL) -> Failure:
    return Failure(ProcessTerminated(signal=signum))


def ready_line(pid: int, cluster: int) -> str:
    return (
        "2026-01-01T00:00:00+0000 [wcs.service#info] wcs ready: http=8081, rtmp=1935, "
        f"cluster={cluster} (pid {pid}) version 0.1.0\n"
    )


@pytest.fixture
def supervised() -> tuple[Supervisor, Clock, FakeSpawn]:
    clock = Clock()
    spawn = FakeSpawn()
    settings = Settings(cluster_redis_url=REDIS, rtsp_udp_port_range=(30000, 30999))
    sup = Supervisor(
        settings, clock, 2, "/etc/wcs/flashphoner.properties", spawn=spawn, hostname="box"
    )
    sup.ports = {"http": 8081, "rtmp": 1935}  # as hold_ports would have found them
    sup._start()
    return sup, clock, spawn


def test_supervisor_spawns_each_worker_with_its_placement(
    supervised: tuple[Supervisor, Clock, FakeSpawn],
) -> None:
    _sup, _, spawn = supervised
    placements = [Placement.from_json(p.env[ENV]) for p in spawn.processes]
    assert [p.index for p in placements] == [0, 1]
    assert {p.count for p in placements} == {2}
    assert [p.node_id for p in placements] == ["box-w0", "box-w1"]
    assert [p.udp_range for p in placements] == [(30000, 30499), (30500, 30999)]
    assert {p.redis_url for p in placements} == {REDIS}
    assert all(p.ports == {"http": 8081, "rtmp": 1935} for p in placements)
    assert all(p.supervisor_pid == os.getpid() for p in placements)


def test_supervisor_is_ready_when_every_worker_is_and_relays_their_lines(
    supervised: tuple[Supervisor, Clock, FakeSpawn], log_events: list[LogEvent]
) -> None:
    sup, _, spawn = supervised
    spawn.processes[0].say("hello from ")
    spawn.processes[0].say("w0\n" + ready_line(1000, 40000))
    lines = texts(log_events)
    assert "w0| hello from w0" in lines
    # The relayed ready line does not look like the supervisor's own.
    assert any("w0| " in t and "wcs worker ready: http=8081" in t for t in lines)
    assert not any(t.startswith("wcs ready:") for t in lines)
    assert not sup.all_ready
    spawn.processes[1].say(ready_line(1001, 40001))
    assert sup.all_ready
    own = [t for t in texts(log_events) if t.startswith("wcs ready:")]
    assert own == [f"wcs ready: http=8081, rtmp=1935 (pid {os.getpid()}) version 0.1.0 workers 2"]
    assert sup.workers[1].ports["cluster"] == 40001


def test_a_dead_worker_restarts_with_a_doubling_delay_up_to_30_s(
    supervised: tuple[Supervisor, Clock, FakeSpawn], log_events: list[LogEvent]
) -> None:
    _sup, clock, spawn = supervised
    delays = []
    for _ in range(7):
        spawn.of(1)[-1].end(killed())
        before = len(spawn.of(1))
        waited = 0.0
        while len(spawn.of(1)) == before:
            clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert [restart_delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert len(spawn.of(0)) == 1  # the other worker is left alone
    # Same index, same placement.
    assert {p.env[ENV] for p in spawn.of(1)} == {spawn.of(1)[0].env[ENV]}
    assert any(
        "worker 1 (pid 1001) exited with signal SIGKILL; restarting it in 1 s" in t
        for t in texts(log_events)
    )


def test_a_worker_that_ran_a_while_restarts_after_1_s_again(
    supervised: tuple[Supervisor, Clock, FakeSpawn], log_events: list[LogEvent]
) -> None:
    _sup, clock, spawn = supervised
    for _ in range(3):
        spawn.of(0)[-1].end(killed())
        clock.advance(30)
    spawn.of(0)[-1].say(ready_line(spawn.of(0)[-1].pid, 40000))
    clock.advance(workers.STABLE_AFTER)
    spawn.of(0)[-1].end(Failure(ProcessTerminated(exitCode=1)))
    assert "restarting it in 1 s" in texts(log_events)[-1]
    assert "exit status 1" in texts(log_events)[-1]


def test_a_restarted_worker_is_logged_ready_again(
    supervised: tuple[Supervisor, Clock, FakeSpawn], log_events: list[LogEvent]
) -> None:
    _sup, clock, spawn = supervised
    for i, p in enumerate(spawn.processes):
        p.say(ready_line(p.pid, 40000 + i))
    spawn.of(1)[-1].end(killed())
    clock.advance(1)
    new = spawn.of(1)[-1]
    new.say(ready_line(new.pid, 40005))
    assert f"worker 1 ready again (pid {new.pid})" in texts(log_events)
    assert len([t for t in texts(log_events) if t.startswith("wcs ready:")]) == 1


def test_stop_terminates_every_worker_kills_the_stubborn_and_restarts_none(
    supervised: tuple[Supervisor, Clock, FakeSpawn],
) -> None:
    sup, clock, spawn = supervised
    spawn.of(1)[-1].end(killed())  # a restart is pending
    stopped = sup.stopService()
    clock.advance(5)
    assert len(spawn.of(1)) == 1  # the pending restart was cancelled
    assert spawn.of(0)[0].signals == [signal.SIGTERM]
    assert not stopped.called
    clock.advance(workers.KILL_AFTER)
    assert spawn.of(0)[0].signals == [signal.SIGTERM, signal.SIGKILL]
    spawn.of(0)[0].end(killed())
    assert stopped.called
    clock.advance(60)
    assert len(spawn.processes) == 2


def test_exit_status_texts() -> None:
    assert exit_status(Failure(ProcessDone(0))) == "exit status 0"
    assert exit_status(Failure(ProcessTerminated(exitCode=3))) == "exit status 3"
    assert exit_status(killed(signal.SIGTERM)) == "signal SIGTERM"
