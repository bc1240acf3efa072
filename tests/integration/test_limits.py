"""Connection caps against a real server started with a low open-file limit it cannot raise.

Idle sockets from many loopback addresses (127.x.y.z all reach 127.0.0.1) fill the caps; the
server must refuse the surplus at once while publishing, auto snapshots and REST keep working.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Server, publish, start_server

pytestmark = pytest.mark.integration

NOFILE = 256
PER_IP = 12
# The cap the server must choose for NOFILE (see wcs.limits.connection_cap).
CAP = NOFILE - 64
LIVE_VIDEO = [
    "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
    "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-pix_fmt", "yuv420p",
]  # fmt: skip


def start_limited(workdir: Path, soft: int, hard: int, extra: str = "") -> Server:
    return start_server(workdir, extra, nofile=(soft, hard))


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, "server did not exit cleanly:\n" + "\n".join(server.lines[-30:])


def fd_count(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def closed_by_server(s: socket.socket) -> bool:
    """True once the server has closed `s` (EOF or reset); never blocks."""
    readable, _, _ = select.select([s], [], [], 0)
    if not readable:
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `check` until it holds (an observable state change, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        threading.Event().wait(0.05)


def rest_find_all(server: Server, source: str) -> int:
    """Status of GET find_all from `source`; 0 when the server closes without answering."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", server.ports["http"], timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("GET", "/rest-api/stream/find_all")
        response = conn.getresponse()
        json.loads(response.read() or b"null")
        return response.status
    except (ConnectionError, http.client.RemoteDisconnected):
        return 0
    finally:
        conn.close()


def refused_at_once(port: int, source: str) -> bool:
    """A fresh connection from `source` is closed by the server before it answers anything."""
    with connect(port, source) as s:
        s.settimeout(10)
        with contextlib.suppress(OSError):  # a server that closed first may reset the send
            s.sendall(b"GET /rest-api/stream/find_all HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def newest_snapshot(folder: Path) -> int:
    numbers = [int(p.stem) for p in folder.glob("*.png") if p.stem.isascii() and p.stem.isdigit()]
    return max(numbers, default=-1)


def test_soft_open_file_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    with running(start_limited(tmp_path, 256, 2048)) as server:
        server.wait_for_log(r"open-file limit 2048\b")
        # The cap leaves a quarter of the descriptors for files, pulls and UDP sockets.
        server.wait_for_log(r"at most 1536 connections over all listeners")
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        assert re.search(r"Max open files\s+2048\s+2048", limits), limits


def test_caps_hold_under_a_low_open_file_limit(tmp_path: Path) -> None:
    extra = (
        f"max_connections_per_ip={PER_IP}\n"
        "snapshot_auto_enabled=true\nsnapshot_auto_rate=10\nsnapshot_auto_naming=streamName\n"
    )
    with running(start_limited(tmp_path, NOFILE, NOFILE, extra)) as server:
        server.wait_for_log(rf"open-file limit {NOFILE}\b")
        server.wait_for_log(rf"at most {CAP} connections over all listeners \({PER_IP} per")
        web = [server.ports[name] for name in ("http", "https", "ws", "wss")]
        fds: list[int] = [fd_count(server)]
        sockets: list[socket.socket] = []
        encoder = publish(server.rtmp("cam"), extra_input=LIVE_VIDEO)
        try:
            server.wait_for_log(r"publishing cam ")
            folder = tmp_path / "snapshots" / "cam"
            wait_for("the first auto snapshot is written", lambda: newest_snapshot(folder) >= 0)

            # -- one client address on the web ports: PER_IP accepted, the rest closed at once
            mark = server.log_mark()
            sockets = [connect(web[i % len(web)]) for i in range(PER_IP + 4)]
            wait_for(
                "4 connections over the per-address cap are closed",
                lambda: sum(map(closed_by_server, sockets)) == 4,
            )
            assert refused_at_once(server.ports["http"], "127.0.0.1")
            assert rest_find_all(server, "127.0.0.2") == 200  # another address is not affected
            server.wait_for_log(rf"max_connections_per_ip {PER_IP}\b", start=mark)
            # Ingest ports are exempt: an encoder on the same host still publishes.
            mark = server.log_mark()
            second = publish(server.rtmp("second"), extra_input=LIVE_VIDEO)
            try:
                server.wait_for_log(r"publishing second ", start=mark)
            finally:
                second.terminate()
                second.wait(timeout=10)
            assert sum(map(closed_by_server, sockets)) == 4
            fds.append(fd_count(server))
            for s in sockets:
                s.close()
            wait_for(
                "the address may connect again", lambda: rest_find_all(server, "127.0.0.1") == 200
            )

            # -- many addresses over all six ports: the global cap refuses before fds run out
            mark = server.log_mark()
            ports = list(server.ports.values())
            sockets = [
                connect(ports[i % len(ports)], f"127.0.{1 + i // 200}.{1 + i % 200}")
                for i in range(CAP + 40)
            ]
            wait_for(
                "the connections over the global cap are closed",
                lambda: sum(map(closed_by_server, sockets)) >= len(sockets) - CAP,
            )
            server.wait_for_log(rf"max_connections {CAP}\b", start=mark)
            assert refused_at_once(server.ports["http"], "127.0.9.9")
            fds.append(fd_count(server))
            # Auto snapshots keep being written at the cap (no EMFILE for files).
            newest = newest_snapshot(folder)
            wait_for(
                "auto snapshots keep appearing at the cap",
                lambda: newest_snapshot(folder) >= newest + 2,
            )
            fds.append(fd_count(server))
            for s in sockets:
                s.close()
            wait_for("REST answers again", lambda: rest_find_all(server, "127.0.0.1") == 200)
        finally:
            for s in sockets:
                s.close()
            encoder.terminate()
            encoder.wait(timeout=10)
        assert max(fds) < NOFILE, fds
    log = "\n".join(server.lines)
    assert "Too many open files" not in log
    assert "EMFILE" not in log
    assert "Traceback" not in log
    assert "Unhandled Error" not in log
    assert re.search(r"auto snapshots done: \d+ written, last \S+, 0 errors", log), log[-3000:]
