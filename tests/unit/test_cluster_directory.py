"""RedisStreamDirectory on fakeredis (no sockets): claims, releases, refresh, outages, conflicts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import fakeredis
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel

from wcs.cluster.directory import RedisStreamDirectory, redacted_url
from wcs.directory import DirectoryUnavailable, NameInUse, NodeRecord

TTL = 3000


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


async def wait(d: Deferred[Any]) -> Any:
    return await d.asFuture(asyncio.get_running_loop())


def record(streams: int = 0) -> NodeRecord:
    return NodeRecord(
        url="http://127.0.0.1:8081", version="1", started_ms=5, streams=streams, load=0.25
    )


class Node:
    """One directory on a shared fake Redis, with its own clock (wall-clock ms of its claims)."""

    def __init__(
        self, server: fakeredis.FakeServer, node_id: str, *, at: float = 1000.0, **kw: Any
    ) -> None:
        self.clock = Clock()
        self.clock.advance(at)
        self.client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
        self.lost: list[tuple[str, str]] = []
        self.d = RedisStreamDirectory(
            self.client, node_id, self.clock, record=record, ttl_ms=TTL, url="redis://h", **kw
        )
        self.d.on_lost(lambda name, owner: self.lost.append((name, owner)))

    def owner(self, msid: str = "m1") -> str:
        return f"{self.d.node_id}/{msid}"


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def cluster_logs(events: list[LogEvent], level: LogLevel) -> list[str]:
    return [
        e["log_format"]
        for e in events
        if e.get("log_namespace") == "wcs.cluster" and e.get("log_level") == level
    ]


# -- claim / release ------------------------------------------------------------------------------
def test_claim_is_set_nx_with_ttl_refused_to_another_owner_renewed_for_the_same(
    server: fakeredis.FakeServer,
) -> None:
    a, b = Node(server, "a", at=12.345), Node(server, "b")

    async def body() -> None:
        await wait(a.d.claim("cam", a.owner()))
        assert await a.client.get("wcs:stream:cam") == "a/m1 12345"
        assert 0 < await a.client.pttl("wcs:stream:cam") <= TTL
        with pytest.raises(NameInUse):
            await wait(b.d.claim("cam", b.owner()))
        with pytest.raises(NameInUse):  # another publish on the same node is another owner
            await wait(a.d.claim("cam", a.owner("m2")))
        a.clock.advance(5)
        await wait(a.d.claim("cam", a.owner()))  # a re-claim keeps the first claim's age
        assert await a.client.get("wcs:stream:cam") == "a/m1 12345"
        assert await wait(b.d.lookup("cam")) == "a/m1"
        assert await wait(b.d.lookup("other")) is None
        assert a.d.claims == {"cam": "a/m1"} and b.d.claims == {}

    run(body)


def test_release_compares_and_deletes(server: fakeredis.FakeServer) -> None:
    a, b = Node(server, "a"), Node(server, "b")

    async def body() -> None:
        await wait(a.d.claim("cam", a.owner()))
        await wait(a.d.release("cam", a.owner("other")))  # not the holder: a no-op
        assert await a.client.get("wcs:stream:cam") is not None
        assert a.d.claims == {"cam": "a/m1"}
        await wait(a.d.release("cam", a.owner()))
        assert await a.client.get("wcs:stream:cam") is None
        assert a.d.claims == {}
        # A late release never frees the name claimed again since by someone else.
        await wait(b.d.claim("cam", b.owner()))
        await wait(a.d.release("cam", a.owner()))
        assert await wait(a.d.lookup("cam")) == "b/m1"

    run(body)


def test_a_dead_nodes_names_free_when_its_keys_expire(server: fakeredis.FakeServer) -> None:
    a, b = Node(server, "a"), Node(server, "b")

    async def body() -> None:
        await wait(a.d.claim("cam", a.owner()))
        await wait(a.d.refresh())
        assert set(await wait(b.d.nodes())) == {"a"}
        # Node a dies: nothing refreshes its keys; the TTL ends them.
        await a.client.pexpire("wcs:stream:cam", 1)
        await a.client.pexpire("wcs:node:a", 1)
        while await a.client.exists("wcs:stream:cam", "wcs:node:a"):
            await asyncio.sleep(0.005)  # fakeredis expires on the real clock
        await wait(b.d.claim("cam", b.owner()))
        assert await wait(b.d.lookup("cam")) == "b/m1"
        assert await wait(b.d.nodes()) == {}

    run(body)


# -- refresh --------------------------------------------------------------------------------------
def test_refresh_renews_every_claim_and_the_record_in_one_round_trip(
    server: fakeredis.FakeServer,
) -> None:
    a = Node(server, "a")
    names = [f"cam{i}" for i in range(1234)]  # more than two script chunks
    direct: list[object] = []
    pipelines: list[object] = []

    async def body() -> None:
        for name in names:
            await wait(a.d.claim(name, a.owner(name)))
        for name in names:
            await a.client.pexpire(f"wcs:stream:{name}", 50)
        real_execute, real_pipeline = a.client.execute_command, a.client.pipeline

        async def execute_command(*args: Any, **kw: Any) -> Any:
            direct.append(args[0])
            return await real_execute(*args, **kw)

        def pipeline(*args: Any, **kw: Any) -> Any:
            pipelines.append(args)
            return real_pipeline(*args, **kw)

        a.client.execute_command = execute_command  # type: ignore[method-assign]
        a.client.pipeline = pipeline  # type: ignore[method-assign]
        calls = a.d.refresh_calls
        await wait(a.d.refresh())
        assert a.d.refresh_calls == calls + 1
        assert direct == [] and len(pipelines) == 1
        for name in names[::97] + names[-1:]:
            assert await a.client.pttl(f"wcs:stream:{name}") > TTL - 1000
        assert json.loads(str(await a.client.get("wcs:node:a"))) == record()
        assert 0 < await a.client.pttl("wcs:node:a") <= TTL
        assert a.d.claims == {name: f"a/{name}" for name in names}

    run(body)


def test_refresh_remakes_claims_redis_lost(
    server: fakeredis.FakeServer, log_events: list[LogEvent]
) -> None:
    a = Node(server, "a", at=7.0)

    async def body() -> None:
        await wait(a.d.claim("cam", a.owner()))
        await a.client.flushall()  # Redis restarted empty between two refreshes
        await wait(a.d.refresh())
        assert await a.client.get("wcs:stream:cam") == "a/m1 7000"  # the first claim's age
        assert a.lost == []
        assert any("re-made" in f for f in cluster_logs(log_events, LogLevel.info))

    run(body)


@pytest.mark.parametrize(
    ("a_at", "b_at", "winner"), [(1.0, 2.0, "a"), (2.0, 1.0, "b"), (1.0, 1.0, "a")]
)
def test_a_conflict_goes_to_the_older_claim_and_the_loser_is_told_once(
    server: fakeredis.FakeServer, a_at: float, b_at: float, winner: str
) -> None:
    # a's claim lived on a only (Redis lost it, as in an outage); b claimed the name meanwhile.
    a, b = Node(server, "a", at=a_at), Node(server, "b", at=b_at)
    nodes = {"a": a, "b": b}
    loser = nodes["b" if winner == "a" else "a"]

    async def body() -> None:
        await wait(a.d.claim("cam", a.owner()))
        await a.client.delete("wcs:stream:cam")
        await wait(b.d.claim("cam", b.owner()))
        for _ in range(2):  # both refresh twice, in either order; the loser hears it once
            await wait(a.d.refresh())
            await wait(b.d.refresh())
        await wait(b.d.refresh())
        await wait(a.d.refresh())
        assert await wait(a.d.lookup("cam")) == nodes[winner].owner()
        assert loser.lost == [("cam", loser.owner())]
        assert nodes[winner].lost == []
        assert loser.d.claims == {} and nodes[winner].d.claims == {"cam": nodes[winner].owner()}

    run(body)


# -- outages --------------------------------------------------------------------------------------
def test_fail_closed_refuses_new_claims_while_redis_is_down_and_says_so_once(
    server: fakeredis.FakeServer, log_events: list[LogEvent]
) -> None:
    a = Node(server, "a")

    async def body() -> None:
        await wait(a.d.claim("live", a.owner("m0")))
        await wait(a.d.refresh())
        assert a.d.degraded() is None
        server.connected = False
        with pytest.raises(DirectoryUnavailable):
            await wait(a.d.claim("cam", a.owner()))
        await wait(a.d.refresh())  # never fails
        with pytest.raises(DirectoryUnavailable):
            await wait(a.d.claim("cam2", a.owner("m2")))
        with pytest.raises(DirectoryUnavailable):
            await wait(a.d.list())
        assert await wait(a.d.lookup("live")) == "a/m0"  # its own names, without Redis
        reason = a.d.degraded()
        assert reason is not None and reason.startswith("cluster directory unreachable: ")
        warnings = cluster_logs(log_events, LogLevel.warn)
        assert len(warnings) == 1 and "unreachable" in warnings[0]
        assert a.d.claims == {"live": "a/m0"}
        server.connected = True
        await a.client.flushall()  # and it came back empty
        await wait(a.d.refresh())
        assert a.d.degraded() is None
        assert await wait(a.d.lookup("live")) == "a/m0"
        back = [e for e in log_events if "reachable again" in e.get("log_format", "")]
        assert len(back) == 1 and back[0]["remade"] == 1 and back[0]["lost"] == 0
        await wait(a.d.claim("cam", a.owner()))
        # A second outage warns again.
        server.connected = False
        await wait(a.d.refresh())
        assert len(cluster_logs(log_events, LogLevel.warn)) == 2

    run(body)


def test_fail_open_accepts_claims_while_redis_is_down_and_writes_them_back(
    server: fakeredis.FakeServer, log_events: list[LogEvent]
) -> None:
    a = Node(server, "a", at=3.0, fail_open=True)

    async def body() -> None:
        server.connected = False
        await wait(a.d.claim("cam", a.owner()))
        await wait(a.d.release("gone", a.owner("x")))  # forgotten locally; no error
        assert a.d.claims == {"cam": "a/m1"}
        assert a.d.degraded() is not None
        server.connected = True
        assert await a.client.get("wcs:stream:cam") is None
        await wait(a.d.refresh())
        assert await a.client.get("wcs:stream:cam") == "a/m1 3000"
        assert a.d.degraded() is None

    run(body)


# -- nodes, list, start, stop ---------------------------------------------------------------------
def test_nodes_skips_a_malformed_record_and_list_gives_owners(
    server: fakeredis.FakeServer, log_events: list[LogEvent]
) -> None:
    a, b = Node(server, "a"), Node(server, "b")

    async def body() -> None:
        await wait(a.d.claim("cam", a.owner()))
        await wait(b.d.claim("door", b.owner()))
        await wait(a.d.refresh())
        await a.client.set("wcs:node:junk", "not json {")
        await a.client.set("wcs:node:wrong", json.dumps({"url": 5}))
        await a.client.set("wcs:node:list", "[1, 2]")
        await a.client.set("wcs:stream:bad", "no-timestamp")
        assert await wait(b.d.nodes()) == {"a": record()}
        assert await wait(b.d.list()) == {"cam": "a/m1", "door": "b/m1"}
        assert not [e for e in log_events if e.get("log_failure") is not None]

    run(body)


def test_start_writes_the_record_and_refreshes_every_third_of_the_ttl_stop_cleans_up(
    server: fakeredis.FakeServer,
) -> None:
    a, b = Node(server, "a"), Node(server, "b")

    async def body() -> None:
        await wait(b.d.claim("other", b.owner()))
        started = a.d.start()
        a.clock.advance(0)
        await wait(started)
        assert set(await wait(b.d.nodes())) == {"a"}
        await wait(a.d.claim("cam", a.owner()))
        await wait(a.d.claim("cam2", a.owner("m2")))
        before = a.d.refreshes
        a.clock.advance(TTL / 3000.0)
        assert a.d.refreshes == before + 1
        await wait(a.d.stop())
        assert await b.client.keys("*") == ["wcs:stream:other"]
        a.clock.advance(TTL)
        assert a.d.refreshes == before + 1

    run(body)


def test_start_with_redis_down_degrades_and_stop_still_returns(
    server: fakeredis.FakeServer,
) -> None:
    a = Node(server, "a")

    async def body() -> None:
        server.connected = False
        started = a.d.start()
        a.clock.advance(0)
        await wait(started)
        assert a.d.degraded() is not None
        await wait(a.d.stop())

    run(body)


def test_urls_lose_their_password_in_logs() -> None:
    assert redacted_url("redis://:s3cret@10.0.0.1:6379/2") == "redis://:***@10.0.0.1:6379/2"
    assert redacted_url("redis://u:p@h/0") == "redis://u:***@h/0"
    assert redacted_url("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock?db=1"


def test_a_release_during_a_refresh_is_not_undone_by_it(server: fakeredis.FakeServer) -> None:
    a, b = Node(server, "a"), Node(server, "b")

    async def body() -> None:
        await wait(a.d.claim("cam", a.owner()))
        await a.client.delete("wcs:stream:cam")  # Redis lost it: the refresh will re-make it
        gate = asyncio.Event()
        real_pipeline = a.client.pipeline

        def pipeline(*args: Any, **kw: Any) -> Any:
            pipe = real_pipeline(*args, **kw)
            real_execute = pipe.execute

            async def execute(*eargs: Any, **ekw: Any) -> Any:
                await gate.wait()  # held on the wire while the stream ends
                return await real_execute(*eargs, **ekw)

            pipe.execute = execute  # type: ignore[method-assign]
            return pipe

        a.client.pipeline = pipeline  # type: ignore[method-assign]
        refreshing = a.d.refresh()
        await wait(a.d.release("cam", a.owner()))
        gate.set()
        await wait(refreshing)
        # The refresh wrote the released claim back; the directory takes it out again.
        for _ in range(100):  # loop turns for the follow-up delete, not time
            if not await a.client.exists("wcs:stream:cam"):
                break
            await asyncio.sleep(0)
        await wait(b.d.claim("cam", b.owner()))
        assert a.lost == [] and a.d.claims == {}

    run(body)
