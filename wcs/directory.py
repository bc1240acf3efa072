"""The stream directory: which owner holds each stream name, behind an asynchronous interface
that a shared (multi-process, multi-machine) implementation can also provide."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypedDict

from twisted.internet.defer import Deferred, fail, succeed

MAX_NAME_BYTES = 255


class StreamError(Exception):
    """Base of the errors about stream names; `info` is the WebSDK STREAM_STATUS_INFO text."""

    info = "Stream error"


class NameInUse(StreamError):
    info = "Stream name is already in use"


class InvalidName(StreamError):
    info = "Invalid stream name"


class StreamNotFound(StreamError):
    info = "Stream not found"


class DirectoryUnavailable(StreamError):
    """The shared directory cannot be reached and `cluster_fail_open` is false: a new publish
    is refused (streams already live keep working)."""

    info = "Stream directory unavailable"


# What a directory calls when another owner took one of this node's names (after an outage,
# the older publish keeps the name): (name, owner that lost it).
LostCallback = Callable[[str, str], object]


class NodeRecord(TypedDict):
    """One node of a cluster as the directory knows it (`wcs:node:<id>` in Redis)."""

    url: str  # REST base URL other nodes forward to
    version: str
    started_ms: int
    streams: int
    load: float  # this process's CPU share over the last refresh interval (1.0 = one core)


def split_owner(owner: str) -> tuple[str, str]:
    """An owner string "node/mediaSessionId" -> (node, mediaSessionId)."""
    node, _, msid = owner.partition("/")
    return node, msid


def check_stream_name(name: str) -> str:
    """Return `name` if it is safe to use as a key and as a folder name, else raise InvalidName."""
    if not name:
        raise InvalidName("empty stream name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidName(f"stream name longer than {MAX_NAME_BYTES} bytes")
    if name in (".", ".."):
        raise InvalidName(f"stream name {name!r} is reserved")
    for ch in name:
        if ch in "/\\" or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise InvalidName(f"stream name contains forbidden character {ch!r}")
    return name


class StreamDirectory(Protocol):
    """Names -> owners. An owner is an opaque string naming one publish on one hub."""

    def claim(self, name: str, owner: str) -> Deferred[None]:
        """Take `name` for `owner`; fails with NameInUse when another owner holds it."""
        ...

    def release(self, name: str, owner: str) -> Deferred[None]:
        """Give `name` back; a no-op unless `owner` holds it (a late release never frees a
        name that was claimed again since)."""
        ...

    def lookup(self, name: str) -> Deferred[str | None]:
        """The owner of `name`, or None."""
        ...

    def list(self) -> Deferred[dict[str, str]]:
        """Every held name and its owner."""
        ...

    def on_lost(self, callback: LostCallback) -> None:
        """Call `callback(name, owner)` when a name this process held went to another owner."""
        ...

    def nodes(self) -> Deferred[dict[str, NodeRecord]]:
        """Every live node of the cluster by id (this one included); {} without a cluster."""
        ...

    def degraded(self) -> str | None:
        """Why the directory cannot do its whole job now (GET /ready), or None."""
        ...


class LocalDirectory:
    """The in-process directory (the default): one dict, answers at once."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def claim(self, name: str, owner: str) -> Deferred[None]:
        holder = self._owners.get(name)
        if holder is not None and holder != owner:
            return fail(NameInUse(name))
        self._owners[name] = owner
        return succeed(None)

    def release(self, name: str, owner: str) -> Deferred[None]:
        if self._owners.get(name) == owner:
            del self._owners[name]
        return succeed(None)

    def lookup(self, name: str) -> Deferred[str | None]:
        return succeed(self._owners.get(name))

    def list(self) -> Deferred[dict[str, str]]:
        return succeed(dict(self._owners))

    def on_lost(self, callback: LostCallback) -> None:
        pass  # nobody else can take a name from this process

    def nodes(self) -> Deferred[dict[str, NodeRecord]]:
        return succeed({})

    def degraded(self) -> str | None:
        return None
