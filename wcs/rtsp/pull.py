"""Camera pulls: an RTSP camera kept as a live stream (`/rtsp/startup`), reconnecting with backoff.

A :class:`Pull` owns its stream in the hub (provider "RTSP") from startup until it is
terminated; the connection to the camera may come and go underneath.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHostResolution,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wcs.directory import MAX_NAME_BYTES, StreamError, check_stream_name
from wcs.rtsp.auth import AuthError, split_userinfo
from wcs.rtsp.client import (
    AUTH,
    NETWORK,
    REDIRECT,
    REFUSED,
    ClientConfig,
    RtspClientError,
    RTSPClientProtocol,
)
from wcs.rtsp.ingest import RtpIngest, Track
from wcs.rtsp.numbers import ascii_uint
from wcs.rtsp.rtp import RtpPacket
from wcs.streams import PROVIDER_RTSP, Stream, StreamHub

__all__ = [
    "CONNECT_FAILED",
    "FAILED",
    "NOT_ALLOWED",
    "PENDING",
    "PLAYER_WAIT",
    "PLAYING",
    "RECONNECTING",
    "Connector",
    "PlayerPullError",
    "Pull",
    "PullConfig",
    "PullManager",
    "PullUriError",
    "default_stream_name",
    "host_port",
    "parse_camera_uri",
]

log = Logger(namespace="wcs.rtsp.pull")

MAX_URI_CHARS: Final = 2048
MAX_PULLS: Final = 256
MAX_REDIRECTS: Final = 5
PLAYER_WAIT: Final = 10.0  # seconds a WebSDK player waits for a camera's first media
# What REST shows for every failure before the camera answered in RTSP (name not resolved,
# refused, unreachable, timed out, reset, not an RTSP server): one text, so /rtsp/startup is
# no port scanner. The server log keeps the detail for the operator.
CONNECT_FAILED: Final = "Cannot connect to the camera"
# A camera address outside rtsp_pull_allowed_networks (decided before any packet is sent).
NOT_ALLOWED: Final = "Camera address not allowed"

# Pull (and stream) status values, WCS-like: PENDING until the first media, PLAYING while media
# flows, RECONNECTING after a drop or a failed attempt, FAILED while the camera refuses us
# (wrong credentials, 404...): the pull keeps retrying at the backoff's pace either way.
PENDING, PLAYING, RECONNECTING, FAILED = "PENDING", "PLAYING", "RECONNECTING", "FAILED"

_USERINFO = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f#]")
_NAME_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")

# connect(host, port, protocol) -> Deferred firing once connected (errback: could not connect).
Connector = Callable[[str, int, RTSPClientProtocol], "Deferred[Any]"]
# resolve(host) -> Deferred firing with the host's IP addresses (errback: it has none).
Resolver = Callable[[str], "Deferred[list[str]]"]


class PullUriError(ValueError):
    """A camera URI we refuse (REST answers 400)."""


class PlayerPullError(StreamError):
    """A WebSDK player's rtsp:// stream could not be pulled; `info` is what the player sees."""

    def __init__(self, info: str, reason: str) -> None:
        super().__init__(reason)
        self.info = info


def parse_camera_uri(uri: object) -> tuple[str, str]:
    """Check a camera URI; returns (URI without credentials, URI as given).

    Accepts ``rtsp://[user[:password]@]host[:port][/path][?query]`` with percent-encoded
    credentials; raises :class:`PullUriError` with a message for the user otherwise.
    """
    if not isinstance(uri, str) or not uri:
        raise PullUriError("'uri' is required and must be a non-empty string")
    if len(uri) > MAX_URI_CHARS:
        raise PullUriError(f"uri longer than {MAX_URI_CHARS} characters")
    if _BAD_CHARS.search(uri):
        raise PullUriError("uri contains spaces, control characters or a fragment")
    scheme = uri.partition(":")[0].lower()
    if scheme == "rtsps":
        raise PullUriError("rtsps:// (RTSP over TLS) is not supported")
    if scheme != "rtsp" or not uri[5:].startswith("//"):
        raise PullUriError("uri must start with rtsp://")
    try:
        parts = urlsplit(uri)
    except ValueError as err:  # "Invalid IPv6 URL", NFKC-normalised separators in the host
        raise PullUriError(f"uri is not a usable URL: {err}") from None
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and (not _USERINFO.fullmatch(userinfo) or not userinfo.partition(":")[0]):
        raise PullUriError("malformed credentials in uri (percent-encode ':', '@' and '/')")
    host, port = host_port(uri)
    if not host:
        raise PullUriError("uri has no host")
    if port is None:
        raise PullUriError("bad port in uri")
    try:
        clean, _, _ = split_userinfo(uri)
    except AuthError as err:
        raise PullUriError(str(err)) from None
    return clean, uri


def host_port(url: str) -> tuple[str, int | None]:
    """(host, port) of an rtsp:// URL: port 554 when absent, None when it is not 1..65535 in
    ASCII digits; the host is "" when the URL has none or cannot be parsed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "", None
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.startswith("["):
        _, bracket, rest = hostport.partition("]")
        text = rest[1:] if bracket and rest.startswith(":") else None if rest else ""
    else:
        _, colon, text = hostport.rpartition(":")
        text = text if colon else ""
    if text == "":
        return host, 554
    port = ascii_uint(text, 65535) if text is not None else None
    return host, port if port else None


def default_stream_name(clean_uri: str) -> str:
    """The stream name of a pull started without toStream.

    WCS names such a stream by its URI; our names cannot hold "/" (they are folder names), so the
    name is the URI without scheme and credentials, with "/" (and "\\", controls) turned into
    "_": ``rtsp://cam:554/live/ch1`` -> ``cam:554_live_ch1``. Over 255 bytes it is cut and ends
    with a hash of the URI, so it stays unique.
    """
    rest = re.sub(r"(?i)^rtsp://", "", clean_uri)
    name = _NAME_UNSAFE.sub("_", rest).strip("_") or "rtsp"
    if name in (".", ".."):
        name = "rtsp_" + name
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_NAME_BYTES:
        digest = hashlib.sha256(clean_uri.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        head = encoded[: MAX_NAME_BYTES - 13].decode("utf-8", "ignore")
        name = f"{head}_{digest}"
    return name


@dataclass(frozen=True)
class PullConfig:
    """Reconnection policy and the camera session's timeouts."""

    initial_delay: float = 1.0
    max_delay: float = 30.0
    # A session that played at least this long was good: the next retry starts from initial_delay.
    stable_after: float = 10.0
    connect_timeout: float = 10.0
    client: ClientConfig = field(default_factory=ClientConfig)


def tcp_connector(reactor: Any, timeout: float) -> Connector:
    """Connect over TCP (names resolved, IPv4 and IPv6) with a connect timeout."""

    def connect(host: str, port: int, protocol: RTSPClientProtocol) -> Deferred[Any]:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        return endpoint.connect(_QuietFactory(protocol))

    return connect


def reactor_resolver(reactor: Any) -> Resolver:
    """Resolve through the reactor's name resolver (getaddrinfo in a thread; IP literals as
    they are)."""

    def resolve(host: str) -> Deferred[list[str]]:
        d: Deferred[list[str]] = Deferred()
        reactor.nameResolver.resolveHostName(_Addresses(d), host)
        return d

    return resolve


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self, done: Deferred[list[str]]) -> None:
        self.done = done
        self.addresses: list[str] = []

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, IPv4Address | IPv6Address) and address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        if self.addresses:
            self.done.callback(self.addresses)
        else:
            self.done.errback(OSError("the name resolves to no address"))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(networks: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings (as Settings.rtsp_pull_allowed_networks holds them) to networks."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def address_allowed(address: str, networks: Sequence[Network]) -> bool:
    """Whether an IP address is in one of `networks` (an IPv4-mapped IPv6 address counts as
    its IPv4 address); anything that is not an IP address is not allowed."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return any(ip in net or (mapped is not None and mapped in net) for net in networks)


class _QuietFactory(Factory):
    """Hands out one protocol, without a "Starting factory" log line per reconnect attempt."""

    noisy = False

    def __init__(self, protocol: RTSPClientProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> RTSPClientProtocol:
        return self._protocol


class Pull:
    """One camera kept as one live stream, for as long as it is wanted."""

    def __init__(
        self,
        manager: PullManager,
        uri: str,
        url: str,
        stream: Stream,
        clock: IReactorTime,
        connector: Connector,
        config: PullConfig,
    ) -> None:
        self.manager = manager
        self.uri = uri  # without credentials: shown, logged, matched
        self._url = url  # with credentials: used to connect, never shown
        self._current_url = url
        self.stream = stream
        self.name = stream.name
        self.clock = clock
        self.connector = connector
        self.config = config
        self.status = PENDING
        self.info = ""
        self.wanted = True
        self.attempts = 0  # failed attempts since the last good session (the backoff exponent)
        self.sessions = 0  # connections that reached PLAY
        self.reconnects = 0
        self.redirects = 0
        self.client: RTSPClientProtocol | None = None
        self._connecting: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._ingest: RtpIngest | None = None
        self._got_media = False
        self._closing_client: RTSPClientProtocol | None = None
        self._playing_waiters: list[Deferred[Pull]] = []
        self._attempt_waiters: list[Deferred[Pull]] = []  # failed by the next failed attempt

    def __repr__(self) -> str:
        return f"<Pull {self.name!r} {self.uri} {self.status}>"

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if not self.wanted:
            return
        host, port = host_port(self._current_url)
        try:
            if not host or port is None:
                raise ValueError(
                    f"no host or a bad port in {split_userinfo_safe(self._current_url)}"
                )
            client = RTSPClientProtocol(
                self._current_url, self, self.clock, self.config.client, label=self.uri
            )
        except (AuthError, ValueError) as err:  # a redirect to something that is not rtsp://
            self._session_failed(RtspClientError(str(err), REFUSED))
            return
        self.client = client
        self._got_media = False
        log.info(
            "RTSP pull {stream_name}: connecting to {host}:{port}",
            stream_name=self.name,
            host=host,
            port=port,
        )
        d = self.manager.connect(host, port, client)
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed, errbackArgs=(client,))

    def _connected(self, _: object) -> None:
        self._connecting = None

    def _connect_failed(self, failure: Failure, client: RTSPClientProtocol) -> None:
        self._connecting = None
        if self.client is not client:
            return
        self.client = None
        if not self.wanted:
            return
        if isinstance(failure.value, RtspClientError):  # the address is not allowed
            self._session_failed(failure.value)
            return
        detail = (failure.getErrorMessage() or repr(failure.value)).rstrip(".")
        self._session_failed(RtspClientError(CONNECT_FAILED, NETWORK), detail)

    def stop(self) -> Deferred[None]:
        """Stop for good: TEARDOWN, no more reconnects; fires when the connection is closed.

        The stream is ended by whoever stops the pull (its end is what stops a pull, see
        :meth:`PullManager.startup`).
        """
        if not self.wanted:
            client = self._closing_client
            return client.stop() if client is not None else succeed(None)
        self.wanted = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._fail_waiters("pull stopped")
        client, self.client = self.client, None
        log.info("RTSP pull {stream_name}: stopped ({uri})", stream_name=self.name, uri=self.uri)
        if self._connecting is not None:
            d, self._connecting = self._connecting, None
            d.cancel()  # the connection attempt: nothing to tear down
            return succeed(None)
        if client is None:
            return succeed(None)
        self._closing_client = client
        d = client.stop()
        d.addBoth(self._closed, client)
        return d

    def _closed(self, result: object, client: RTSPClientProtocol) -> object:
        # The last reference from the pull to its client (whose sink is the pull).
        if self._closing_client is client:
            self._closing_client = None
        return result

    def when_playing(self, *, fail_fast: bool = False) -> Deferred[Pull]:
        """Fires with this pull once media flows (at once if it does); errbacks if stopped,
        and with `fail_fast` also when the next attempt fails."""
        if self.status == PLAYING:
            return succeed(self)
        d: Deferred[Pull] = Deferred()
        if not self.wanted:
            d.errback(RtspClientError("pull stopped", REFUSED))
            return d
        (self._attempt_waiters if fail_fast else self._playing_waiters).append(d)
        return d

    def _fail_waiters(self, reason: str) -> None:
        waiters, self._playing_waiters = self._playing_waiters, []
        self._fail_attempt_waiters(reason)
        for d in waiters:
            d.errback(RtspClientError(reason, REFUSED))

    def _fail_attempt_waiters(self, reason: str) -> None:
        waiters, self._attempt_waiters = self._attempt_waiters, []
        for d in waiters:
            d.errback(RtspClientError(reason, REFUSED))

    # -- PullSink: what the client reports ------------------------------------------------------
    def session_ready(self, client: RTSPClientProtocol, tracks: list[Track]) -> None:
        if client is not self.client:
            return
        self._ingest = RtpIngest(self.stream, tracks, reliable=True)

    def session_playing(self, client: RTSPClientProtocol) -> None:
        if client is self.client:
            self.sessions += 1
            self.redirects = 0

    def rtp(self, index: int, packet: RtpPacket) -> None:
        ingest = self._ingest
        if ingest is None:
            return
        if not self._got_media:
            self._got_media = True
            self._set_status(PLAYING, "")
            log.info(
                "RTSP pull {stream_name}: media flowing from {uri}",
                stream_name=self.name,
                uri=self.uri,
            )
            waiters = self._playing_waiters + self._attempt_waiters
            self._playing_waiters, self._attempt_waiters = [], []
            for d in waiters:
                d.callback(self)
        ingest.rtp_packet(index, packet)

    def rtcp(self, index: int, data: bytes) -> bool:
        ingest = self._ingest
        return ingest.rtcp(index, data) if ingest is not None else False

    def session_closed(self, client: RTSPClientProtocol, error: RtspClientError | None) -> None:
        if client is not self.client and self.client is not None:
            return
        self.client = None
        self._ingest = None
        # Whatever was cached came from the camera before the drop: no snapshot may show it.
        self.stream.clear_video()
        if not self.wanted:
            return
        if client.playing_since is not None and self._got_media:
            played = self.clock.seconds() - client.playing_since
            if played >= self.config.stable_after:
                self.attempts = 0
        error = error or RtspClientError("the camera closed the session", NETWORK)
        if not client.answered:
            # Nothing has answered in RTSP yet: whatever it was (closed, silent, some other
            # protocol), REST says the same as for a refused connection.
            self._session_failed(RtspClientError(CONNECT_FAILED, NETWORK), error.reason)
            return
        self._session_failed(error)

    # -- reconnecting ---------------------------------------------------------------------------
    def _session_failed(self, error: RtspClientError, detail: str = "") -> None:
        """An attempt failed with `error` (what REST shows); `detail` is for the log only."""
        if not self.wanted:
            return
        if error.kind == REDIRECT and error.location and self.redirects < MAX_REDIRECTS:
            self.redirects += 1
            self._current_url = _with_credentials(error.location, self._url)
            log.info(
                "RTSP pull {stream_name}: redirected to {location}",
                stream_name=self.name,
                location=split_userinfo_safe(error.location),
            )
            self._retry = self.clock.callLater(0, self._connect)
            return
        self._current_url = self._url
        self.redirects = 0
        delay = min(self.config.max_delay, self.config.initial_delay * 2**self.attempts)
        self.attempts = min(self.attempts + 1, 30)
        status = FAILED if error.kind in (AUTH, REFUSED) else RECONNECTING
        self._set_status(status, error.reason)
        self._fail_attempt_waiters(error.reason)
        self.reconnects += 1
        log.warn(
            "RTSP pull {stream_name}: {reason}{detail}; reconnecting in {delay:g} s",
            stream_name=self.name,
            reason=error.reason,
            detail=f" ({detail})" if detail else "",
            delay=delay,
        )
        self._retry = self.clock.callLater(delay, self._connect)

    def _set_status(self, status: str, info: str) -> None:
        self.status = status
        self.info = info
        if not self.stream.ended:
            self.stream.status = status


def split_userinfo_safe(url: str) -> str:
    """`url` without credentials, for logs; the URL text itself if it cannot be parsed."""
    try:
        return split_userinfo(url)[0]
    except AuthError:
        return url.rpartition("@")[2][:200]


def _with_credentials(location: str, original: str) -> str:
    """A redirect target with the original credentials when it carries none (same camera)."""
    try:
        _, user, _ = split_userinfo(location)
        _, ouser, _ = split_userinfo(original)
    except AuthError:
        return location
    if user is not None or ouser is None:
        return location
    userinfo = urlsplit(original).netloc.rpartition("@")[0]
    scheme, sep, rest = location.partition("://")
    return f"{scheme}{sep}{userinfo}@{rest}"


def _stop(holder: list[Pull]) -> None:
    if holder:
        holder[0].stop()


class PullManager:
    """All camera pulls of the server, by stream name.

    ``startup`` registers the stream at once (status PENDING) and connects in the background;
    the stream stays registered across camera drops until ``terminate`` (or /stream/terminate,
    or server stop), which sends TEARDOWN.
    """

    def __init__(
        self,
        hub: StreamHub,
        reactor: Any,
        *,
        connector: Connector | None = None,
        config: PullConfig = PullConfig(),
        max_pulls: int = MAX_PULLS,
        allowed_networks: Iterable[str] = (),
        resolver: Resolver | None = None,
    ) -> None:
        self.hub = hub
        self.reactor = reactor
        self.config = config
        self.connector = connector or tcp_connector(reactor, config.connect_timeout)
        self.max_pulls = max_pulls
        # Where pulls may connect (Settings.rtsp_pull_allowed_networks); empty: anywhere.
        self.allowed_networks = parse_networks(allowed_networks)
        self._resolver = resolver
        self._pulls: dict[str, Pull] = {}
        self._starting = 0  # pulls whose name the directory has not answered for yet
        self.ended_reconnects = 0  # reconnects of pulls that have ended (the metrics' total)

    def connect(self, host: str, port: int, client: RTSPClientProtocol) -> Deferred[Any]:
        """Connect `client` to the camera at host:port. With allowed networks, the name is
        resolved first and only an allowed address is connected to (so a redirect or a DNS
        answer cannot lead a pull elsewhere); errbacks with RtspClientError(NOT_ALLOWED) when
        there is none, before any packet goes to the camera."""
        try:
            if not self.allowed_networks:
                return self.connector(host, port, client)
            resolver = self._resolver or reactor_resolver(self.reactor)
            d = resolver(host)
        except Exception as err:  # e.g. a host name the resolver refuses outright
            return fail(err)
        networks = self.allowed_networks

        def resolved(addresses: list[str]) -> Deferred[Any]:
            allowed = [a for a in addresses if address_allowed(a, networks)]
            if not allowed:
                log.info(
                    "RTSP pull to {host} refused: {addresses} outside rtsp_pull_allowed_networks",
                    host=host,
                    addresses=", ".join(addresses),
                )
                return fail(RtspClientError(NOT_ALLOWED, REFUSED))
            return self.connector(allowed[0], port, client)

        return d.addCallback(resolved)

    def startup(self, uri: str, to_stream: str | None = None) -> Deferred[Pull]:
        """Pull `uri` as stream `to_stream` (default: :func:`default_stream_name`), once the
        directory gave the name to this server.

        Fails with PullUriError (bad URI), wcs.directory.InvalidName (bad name) or NameInUse.
        """
        try:
            clean, url = parse_camera_uri(uri)
            if to_stream is None or to_stream == "":
                name = default_stream_name(clean)
            else:
                name = check_stream_name(to_stream)
            if len(self._pulls) + self._starting >= self.max_pulls:
                raise PullUriError(f"at most {self.max_pulls} camera pulls at once")
        except (PullUriError, StreamError) as err:
            return fail(err)
        holder: list[Pull] = []
        self._starting += 1
        # /stream/terminate of the stream stops the pull (TEARDOWN, no reconnect). A pull has
        # its own reconnect policy: the publish idle watchdog leaves it alone.
        published = self.hub.publish(
            name, PROVIDER_RTSP, on_terminate=lambda: _stop(holder), watch_idle=False
        )

        def start(stream: Stream) -> Pull:
            self._starting -= 1
            stream.status = PENDING
            pull = Pull(self, clean, url, stream, self.reactor, self.connector, self.config)
            holder.append(pull)
            self._pulls[name] = pull
            # However the stream ends (terminate, hub shutdown), the pull ends with it.
            stream.on_end(lambda s: self._ended(pull, holder))
            log.info("RTSP pull {stream_name}: started for {uri}", stream_name=name, uri=clean)
            pull.start()
            return pull

        def refused(failure: Failure) -> Failure:
            self._starting -= 1
            return failure

        return published.addCallbacks(start, refused)

    def stream_for_player(self, uri: str, timeout: float = PLAYER_WAIT) -> Deferred[Stream]:
        """The live stream of camera `uri` for a WebSDK player (`playStream` of an rtsp:// name):
        an existing pull's, or a new pull's once media flows. A pull started here that fails
        its first attempt (or `timeout`) is stopped again: nobody is left to watch it."""
        found = self.find(uri)
        started_here = found is None
        start = self.startup(uri) if found is None else succeed(found)

        def wrong_uri(failure: Failure) -> Failure:
            failure.trap(PullUriError)
            return Failure(PlayerPullError("Rtsp has wrong format", failure.getErrorMessage()))

        def started(pull: Pull) -> Deferred[Stream]:
            d = pull.when_playing(fail_fast=started_here)
            d.addTimeout(timeout, self.reactor)

            def failed(failure: Failure) -> Failure:
                if started_here and pull.wanted:
                    self.terminate(pull.name)
                reason = failure.getErrorMessage() or "timed out"
                if failure.check(defer.TimeoutError):
                    reason = f"no media within {timeout:g} s"
                return Failure(PlayerPullError(f"Failed to play RTSP stream: {reason}", reason))

            return d.addCallbacks(lambda p: p.stream, failed)

        return start.addCallbacks(started, wrong_uri)

    def find(self, key: str) -> Pull | None:
        """A pull by stream name, or by camera URI (with or without credentials)."""
        pull = self._pulls.get(key)
        if pull is not None:
            return pull
        try:
            clean, _ = parse_camera_uri(key)
        except PullUriError:
            return None
        for pull in self._pulls.values():
            if pull.uri == clean:
                return pull
        return None

    def resolve(self, name: str) -> str:
        """The local stream name for `name`: a pulled camera URI maps to its stream's name."""
        if name in self._pulls or not name.lower().startswith("rtsp://"):
            return name
        pull = self.find(name)
        return pull.name if pull is not None else name

    def find_all(self) -> list[Pull]:
        return list(self._pulls.values())

    def terminate(self, key: str) -> Pull | None:
        """Stop the pull `key` (name or URI): TEARDOWN, stream ended. None when there is none."""
        pull = self.find(key)
        if pull is None:
            return None
        pull.stream.terminate()  # -> _on_terminate (TEARDOWN) and the stream's end
        return pull

    def stop_all(self) -> Deferred[None]:
        """Server stop: every pull sends TEARDOWN; fires when all connections are closed."""
        pulls = list(self._pulls.values())
        for pull in pulls:
            pull.stream.terminate()
        d: Deferred[Any] = DeferredList([p.stop() for p in pulls], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def _ended(self, pull: Pull, holder: list[Pull]) -> None:
        if self._pulls.get(pull.name) is pull:
            del self._pulls[pull.name]
            self.ended_reconnects += pull.reconnects
        # The stream's on_terminate must not keep the ended pull (and its stream) alive.
        holder.clear()
        pull.stop()

    def __len__(self) -> int:
        return len(self._pulls)
