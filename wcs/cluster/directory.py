"""RedisStreamDirectory: the stream directory shared by every node of a cluster, in Redis
(`wcs:stream:<name>` = "<owner> <claimed_ms>", `wcs:node:<id>` = a JSON NodeRecord, both with a TTL
that each node refreshes)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from wcs.directory import DirectoryUnavailable, LostCallback, NameInUse, NodeRecord

log = Logger(namespace="wcs.cluster")

T = TypeVar("T")

STREAM_PREFIX = "wcs:stream:"
NODE_PREFIX = "wcs:node:"
# Client socket timeouts (s): an outage is noticed fast and a publish is never held long.
TIMEOUT = 1.5
# Claims per refresh script call; one pipeline carries every call (one round trip).
CHUNK = 500
# SCAN page size and the most keys list()/nodes() read (a bound on memory and time).
SCAN_COUNT = 1000
MAX_KEYS = 100_000

# KEYS[1] the name's key; ARGV: value "<owner> <ms>", ttl ms, owner. Takes a free name (SET NX
# PX), or renews it for the same owner (a re-claim), atomically; returns the value now held.
CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
local owner = string.match(v, '^(.*) %d+$')
if owner == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v
"""

# KEYS[1] the name's key; ARGV[1] the owner: compare-and-delete, so a late release never frees
# a name claimed again since.
RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^(.*) %d+$') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: this node's claimed keys; ARGV[1] ttl ms, then per key "<owner> <ms>". Per key: 0 kept
# (still ours: PEXPIRE), 1 re-made (missing: SET again), 2 won (another owner's younger claim:
# overwritten), 3 lost (another owner's older claim, or equal age and a smaller owner string).
REFRESH = """
local ttl = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local mine = ARGV[i + 1]
  local v = redis.call('GET', key)
  local owner, ms = string.match(mine, '^(.*) (%d+)$')
  if not v then
    redis.call('SET', key, mine, 'PX', ttl)
    out[i] = 1
  else
    local other, other_ms = string.match(v, '^(.*) (%d+)$')
    if other == owner then
      redis.call('PEXPIRE', key, ttl)
      out[i] = 0
    else
      local a, b = tonumber(ms), tonumber(other_ms or '')
      if other == nil or b == nil or a < b or (a == b and owner < other) then
        redis.call('SET', key, mine, 'PX', ttl)
        out[i] = 2
      else
        out[i] = 3
      end
    end
  end
end
return out
"""

KEPT, REMADE, WON, LOST = 0, 1, 2, 3


def redacted_url(url: str) -> str:
    """`url` without its password (for logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))


def connect(url: str) -> Redis:
    """A redis.asyncio client for `url` with short timeouts and no retries: the directory
    decides what an unreachable Redis means, and a publish must not wait on retries."""
    return Redis.from_url(
        url,
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        decode_responses=True,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _owner_of(value: str | None) -> str | None:
    """The owner in a stream key's value "<owner> <ms>" (None if malformed or missing)."""
    if value is None:
        return None
    owner, sep, ms = value.rpartition(" ")
    return owner if sep and ms.isdigit() else None


def _node_record(raw: str | None) -> NodeRecord | None:
    """A decoded node record, or None if it is not one (never raises)."""
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    url, version = obj.get("url"), obj.get("version")
    started, streams, load = obj.get("started_ms"), obj.get("streams"), obj.get("load")
    if not (isinstance(url, str) and isinstance(version, str)):
        return None
    if not (isinstance(started, int) and isinstance(streams, int)):
        return None
    if isinstance(started, bool) or isinstance(streams, bool):
        return None
    if not isinstance(load, (int, float)) or isinstance(load, bool):
        return None
    return NodeRecord(
        url=url, version=version, started_ms=started, streams=streams, load=float(load)
    )


class RedisStreamDirectory:
    """The shared directory: each claim is a key with a TTL this node refreshes every ttl/3 in
    one round trip; a dead node's names free themselves when its keys expire.

    While Redis is unreachable, streams already live keep working; a new claim is refused
    (DirectoryUnavailable) or, with `fail_open`, accepted locally and written when Redis is back.
    The claims are then re-made; a name another node took meanwhile goes to the older claim.
    """

    def __init__(
        self,
        client: Redis | str,
        node_id: str,
        clock: IReactorTime,
        *,
        record: Callable[[], NodeRecord],
        ttl_ms: int = 10_000,
        fail_open: bool = False,
        url: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        if isinstance(client, str):
            url = url or client
            client = connect(client)
        self.client = client
        self.url = redacted_url(url) if url else "redis"
        self.node_id = node_id
        self.clock = clock
        self.record = record
        self.ttl_ms = ttl_ms
        self.fail_open = fail_open
        self.timeout = timeout
        # Round trips made by refresh (the benchmark's Redis calls per second).
        self.refresh_calls = 0
        self.refreshes = 0
        # name -> (owner, claimed_ms): what this node holds, and what refresh writes back.
        self._claims: dict[str, tuple[str, int]] = {}
        self._lost_callbacks: list[LostCallback] = []
        self._outage: str | None = None
        self._loop: LoopingCall | None = None
        self._stopped = False
        self._refreshing: Deferred[None] | None = None
        self._claim = client.register_script(CLAIM)
        self._release = client.register_script(RELEASE)

    # -- plumbing -----------------------------------------------------------------------------
    def _run(self, make: Callable[[], Awaitable[T]]) -> Deferred[T]:
        """Run a Redis coroutine on the reactor's asyncio loop, bounded by the timeout (a belt
        to the client's socket timeouts); Redis errors come back as they are."""

        async def bounded() -> T:
            return await asyncio.wait_for(make(), self.timeout * 2)

        coro: Coroutine[Any, Any, T] = bounded()
        return Deferred.fromFuture(asyncio.ensure_future(coro))

    @staticmethod
    def _unreachable(err: BaseException | None) -> bool:
        return isinstance(err, (RedisError, OSError, asyncio.TimeoutError))

    def _went_down(self, err: BaseException | None) -> None:
        """Redis did not answer: warn once per outage."""
        reason = (str(err) or type(err).__name__).rstrip(".")
        if self._outage is None:
            log.warn(
                "cluster directory unreachable at {redis_url}: {reason}; live streams keep "
                "working, new publishes are {policy} until it is back",
                redis_url=self.url,
                reason=reason,
                policy="accepted (cluster_fail_open)" if self.fail_open else "refused",
            )
        self._outage = reason

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    @staticmethod
    def _key(name: str) -> str:
        return STREAM_PREFIX + name

    def _value(self, name: str) -> str:
        owner, ms = self._claims[name]
        return f"{owner} {ms}"

    # -- the StreamDirectory protocol --------------------------------------------------------
    def claim(self, name: str, owner: str) -> Deferred[None]:
        ms = self._now_ms()
        value = f"{owner} {ms}"
        d = self._run(lambda: self._claim(keys=[self._key(name)], args=[value, self.ttl_ms, owner]))

        def done(held: object) -> None:
            text = _text(held)
            if _owner_of(text) != owner:
                raise NameInUse(name)
            assert text is not None
            # A re-claim keeps the first claim's age (it decides conflicts).
            self._claims[name] = (owner, int(text.rpartition(" ")[2]))

        def failed(failure: Failure) -> None:
            err = failure.value
            if not self._unreachable(err):
                failure.raiseException()
            self._went_down(err)
            if not self.fail_open:
                raise DirectoryUnavailable(name)
            # Accepted locally; the next refresh that reaches Redis writes it (or loses it to an
            # older claim made meanwhile).
            self._claims[name] = (owner, ms)
            return None

        return d.addCallbacks(done, failed)

    def _delete_if_owner(self, name: str, owner: str) -> Deferred[Any]:
        return self._run(lambda: self._release(keys=[self._key(name)], args=[owner]))

    def release(self, name: str, owner: str) -> Deferred[None]:
        held = self._claims.get(name)
        if held is not None and held[0] == owner:
            del self._claims[name]
        d = self._delete_if_owner(name, owner)

        def failed(failure: Failure) -> None:
            if not self._unreachable(failure.value):
                failure.raiseException()
            # Forgotten here; the key expires by its TTL.
            self._went_down(failure.value)
            return None

        return d.addCallbacks(lambda _: None, failed)

    def lookup(self, name: str) -> Deferred[str | None]:
        d = self._run(lambda: self.client.get(self._key(name)))

        def failed(failure: Failure) -> str | None:
            if not self._unreachable(failure.value):
                failure.raiseException()
            self._went_down(failure.value)
            held = self._claims.get(name)
            if held is not None:
                return held[0]  # ours: known without Redis
            raise DirectoryUnavailable(name)

        return d.addCallbacks(lambda v: _owner_of(_text(v)), failed)

    async def _scan(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix` (at most MAX_KEYS) -> its value, MGET in chunks."""
        keys: list[str] = []
        async for key in self.client.scan_iter(match=prefix + "*", count=SCAN_COUNT):
            keys.append(_text(key) or "")
            if len(keys) >= MAX_KEYS:
                log.warn(
                    "cluster directory: more than {n} {prefix}* keys; listing the first",
                    n=MAX_KEYS,
                    prefix=prefix,
                )
                break
        found: dict[str, str] = {}
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            for key, value in zip(chunk, await self.client.mget(chunk), strict=True):
                text = _text(value)
                if text is not None:  # expired between SCAN and MGET
                    found[key[len(prefix) :]] = text
        return found

    def _scanned(self, prefix: str) -> Deferred[dict[str, str]]:
        # SCAN pages are many calls: bounded as a whole, not per call.
        async def whole() -> dict[str, str]:
            return await asyncio.wait_for(self._scan(prefix), self.timeout * 4)

        def failed(failure: Failure) -> dict[str, str]:
            if not self._unreachable(failure.value):
                failure.raiseException()
            self._went_down(failure.value)
            raise DirectoryUnavailable(prefix)

        coro: Coroutine[Any, Any, dict[str, str]] = whole()
        return Deferred.fromFuture(asyncio.ensure_future(coro)).addErrback(failed)

    def list(self) -> Deferred[dict[str, str]]:
        def owners(found: dict[str, str]) -> dict[str, str]:
            out = {}
            for name, value in found.items():
                owner = _owner_of(value)
                if owner is not None:
                    out[name] = owner
            return out

        return self._scanned(STREAM_PREFIX).addCallback(owners)

    def nodes(self) -> Deferred[dict[str, NodeRecord]]:
        def records(found: dict[str, str]) -> dict[str, NodeRecord]:
            out = {}
            for node, raw in found.items():
                record = _node_record(raw)
                if record is None:
                    log.debug("cluster directory: node {node} has a malformed record", node=node)
                else:
                    out[node] = record
            return out

        return self._scanned(NODE_PREFIX).addCallback(records)

    def on_lost(self, callback: LostCallback) -> None:
        self._lost_callbacks.append(callback)

    def degraded(self) -> str | None:
        if self._outage is None:
            return None
        return f"cluster directory unreachable: {self._outage}"

    # -- refresh ------------------------------------------------------------------------------
    @property
    def claims(self) -> dict[str, str]:
        """The names this node holds (as far as it knows) -> owner."""
        return {name: owner for name, (owner, _) in self._claims.items()}

    def refresh(self) -> Deferred[None]:
        """Renew every claim and the node record in one round trip; re-make missing claims,
        settle conflicts (the older claim wins). Never fails: an outage is logged and degrades."""
        names = list(self._claims)
        values = [self._value(n) for n in names]
        try:
            record: str | None = json.dumps(self.record(), separators=(",", ":"))
        except Exception:
            log.failure("cluster directory: this node's record could not be made")
            record = None
        ttl = self.ttl_ms

        async def go() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            if record is not None:
                pipe.set(NODE_PREFIX + self.node_id, record, px=ttl)
            for i in range(0, len(names), CHUNK):
                keys = [self._key(n) for n in names[i : i + CHUNK]]
                # EVAL with the source, not EVALSHA: a pipeline's scripts would otherwise cost a
                # SCRIPT EXISTS round trip first (Redis caches the script either way).
                pipe.execute_command("EVAL", REFRESH, len(keys), *keys, ttl, *values[i : i + CHUNK])
            self.refresh_calls += 1
            return list(await pipe.execute())

        def done(results: list[Any]) -> None:
            scripts = results[1:] if record is not None else results
            codes: list[int] = [int(c) for chunk in scripts for c in chunk]
            self._settle(names, values, codes)

        def failed(failure: Failure) -> None:
            if self._unreachable(failure.value):
                self._went_down(failure.value)
            else:
                log.failure("cluster directory refresh failed", failure)
                self._outage = failure.getErrorMessage()

        self.refreshes += 1
        d = self._run(go).addCallbacks(done, failed)
        self._refreshing = d
        d.addBoth(lambda _: setattr(self, "_refreshing", None))
        return d

    def _settle(self, names: Sequence[str], values: Sequence[str], codes: Sequence[int]) -> None:
        remade = lost = 0
        stale: list[tuple[str, str]] = []
        for name, value, code in zip(names, values, codes, strict=True):
            owner = value.rpartition(" ")[0]
            if self._claims.get(name) != (owner, int(value.rpartition(" ")[2])):
                # Released (or claimed anew) while the refresh was out: if it wrote the key back,
                # take it out again, or the name stays held by a publish that is gone.
                if code in (REMADE, WON):
                    stale.append((name, owner))
                continue
            if code in (REMADE, WON):
                remade += 1
            elif code == LOST:
                lost += 1
                del self._claims[name]
                for callback in list(self._lost_callbacks):
                    try:
                        callback(name, owner)
                    except Exception:
                        log.failure("cluster directory: an on_lost callback failed")
        for name, owner in stale:
            self._delete_if_owner(name, owner).addErrback(lambda _: None)
        if self._outage is not None:
            log.info(
                "cluster directory reachable again at {redis_url}: {remade} claims re-made, "
                "{lost} lost to older claims",
                redis_url=self.url,
                remade=remade,
                lost=lost,
            )
            self._outage = None
        elif remade or lost:
            # Redis lost the keys without this node seeing an outage (restarted between refreshes).
            log.info(
                "cluster directory: {remade} claims re-made, {lost} lost to older claims",
                remade=remade,
                lost=lost,
            )

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Deferred[None]:
        """Write the node record and start refreshing every ttl/3; fires after the first refresh
        (reached or not: an unreachable Redis degrades, it never fails start-up)."""
        started: Deferred[None] = Deferred()

        def loop_on(_: object) -> None:
            if not self._stopped:
                loop = self._loop = LoopingCall(self.refresh)
                loop.clock = self.clock
                loop.start(self.ttl_ms / 3000.0, now=False).addErrback(
                    lambda f: log.failure("cluster directory refresh loop stopped", f)
                )
            started.callback(None)

        def begin() -> None:
            # Run from the reactor's turn, so the asyncio tasks run on its (running) loop.
            self.refresh().addCallback(loop_on)

        log.info(
            "cluster node {node_id} on directory {redis_url} "
            "(ttl {ttl_ms} ms, fail-open {fail_open})",
            node_id=self.node_id,
            redis_url=self.url,
            ttl_ms=self.ttl_ms,
            fail_open=self.fail_open,
        )
        self.clock.callLater(0, begin)
        return started

    def stop(self) -> Deferred[None]:
        """Stop refreshing, release this node's claims and delete its node record (bounded by the
        timeout), close the client. Never fails."""
        self._stopped = True
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        held = list(self._claims.items())
        self._claims.clear()
        refreshing = self._refreshing

        async def go() -> None:
            try:
                if refreshing is not None:
                    # Its writes must land before the releases, not re-make the keys after them.
                    await refreshing.asFuture(asyncio.get_running_loop())
                pipe = self.client.pipeline(transaction=False)
                for name, (owner, _) in held:
                    # EVAL, not EVALSHA: the script may never have been loaded (or Redis
                    # restarted since), and a NOSCRIPT retry would cost another round trip.
                    pipe.eval(RELEASE, 1, self._key(name), owner)
                pipe.delete(NODE_PREFIX + self.node_id)
                await asyncio.wait_for(pipe.execute(), self.timeout)
            finally:
                await self.client.aclose()

        def failed(failure: Failure) -> None:
            log.info(
                "cluster directory: this node's {n} claims and record were not removed "
                "({reason}); they expire by their TTL",
                n=len(held),
                reason=failure.getErrorMessage() or repr(failure.value),
            )

        coro: Coroutine[Any, Any, None] = go()
        return Deferred.fromFuture(asyncio.ensure_future(coro)).addErrback(failed)
