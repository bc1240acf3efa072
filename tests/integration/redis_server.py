"""A real Debian `redis-server` for the cluster tests, on a Unix socket of its own (no TCP port
to race for); it can be stopped and started again on the same socket (a Redis outage)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from wcs.cluster.redisproc import redis_argv

START_TIMEOUT = 15.0


class RedisServer:
    """One redis-server on `<workdir>/redis.sock`: no persistence, no TCP listener."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # Unix socket paths are limited to ~107 bytes: fall back to a short temporary path.
        sock = workdir / "redis.sock"
        if len(str(sock)) > 100:
            sock = Path(f"/tmp/wcs-test-redis-{id(self):x}.sock")
        self.socket = sock
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: `make test` installs it (Debian redis-server)"
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            # The command line the server's own private Redis runs (--workers).
            redis_argv(binary, self.socket, self.workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.02)

    def client(self) -> redis.Redis:
        """A synchronous client (the `redis` package) for the tests' own reads and writes."""
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5.0)

    def ping(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.socket.unlink(missing_ok=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    d = tmp_path / "redis"
    d.mkdir()
    with running_redis(d) as server:
        yield server
