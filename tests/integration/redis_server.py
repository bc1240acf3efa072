"""A real Debian `redis-server` for the cluster tests, on a Unix socket of its own (no TCP port
to race for); it can be stopped and started again on the same socket (a Redis outage)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
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
        # The command line the server's own private Redis runs (--workers), at the log level
        # that says when it is ready: the event waited on.
        proc = self.proc = subprocess.Popen(
            [*redis_argv(binary, self.socket, self.workdir), "--loglevel", "notice"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:  # read to the end, so the pipe never fills
                if b"ready to accept connections" in line.lower():
                    ready.set()
            ready.set()  # exited: the check below says so

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(START_TIMEOUT), "redis-server did not get ready"
        assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
        assert self.ping()

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


class Expiries:
    """Redis's own notices of the keys it expires (keyspace notifications): what a test waits on
    for a claim to run out, instead of polling. Made before the expiry it waits for."""

    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()
        self.client.config_set("notify-keyspace-events", "Ex")
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe("__keyevent@0__:expired")

    def wait_gone(self, key: str, deadline: float) -> None:
        """Until `key` no longer exists; fails at `deadline` (time.monotonic())."""
        while self.client.exists(key):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{key} outlived its TTL"
            self.pubsub.get_message(timeout=remaining)

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


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
