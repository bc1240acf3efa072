"""WCSService: owns the stream hub, thread pool and snapshot service; runs the listeners."""

from __future__ import annotations

import os
import re
import resource
import secrets
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from wcs import __version__
from wcs.access import Access
from wcs.cluster.directory import RedisStreamDirectory
from wcs.cluster.placement import Placement, ReusePortEndpoint
from wcs.config import ConfigError, Settings
from wcs.directory import NodeRecord
from wcs.hooks import NoHooks, RestHooks
from wcs.limits import ConnectionLimiter, connection_cap, raise_open_file_limit
from wcs.logs import LevelFilter
from wcs.metrics import MetricsResource, ServerCollector, SnapshotMetrics, new_registry
from wcs.rest.forward import ClusterSnapshots, Forwarder, Remote
from wcs.rest.health import Degraded
from wcs.rest.resources import LoginThrottle, build_site
from wcs.rest.views import StreamViews
from wcs.rtmp.protocol import RTMPServerFactory
from wcs.rtsp.auth import RtspAuthenticator
from wcs.rtsp.pull import PullManager
from wcs.rtsp.server import RTSPServerFactory
from wcs.snapshot.auto import AutoSnapshotter
from wcs.snapshot.service import SnapshotService
from wcs.streams import PublishIdleWatchdog, StreamHub
from wcs.tls import TLSConfigError, ensure_self_signed, server_context, tls_server_factory
from wcs.webrtc.signalling import SignallingFactory, websocket_site

log = Logger(namespace="wcs.service")

POOL_THREADS = 4
# Listeners whose connections count against max_connections_per_ip. The ingest ports (RTMP,
# RTSP) are exempt: many encoders may publish from behind one NAT address.
PER_IP_LISTENERS = frozenset({"http", "https", "ws", "wss"})


def generated_node_id() -> str:
    """A node id for a node not given one: the host name (made safe) and 6 random hex digits."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:50] or "wcs"
    return f"{host}-{secrets.token_hex(3)}"


def listen_description(ip: str, port: int) -> str:
    """The strports description of a TCP listener on `ip`:`port` (0: a port the OS picks)."""
    kind = "tcp6" if ":" in ip else "tcp"
    return f"{kind}:{port}:interface={quoteStringArgument(ip)}"


@implementer(IStreamServerEndpoint)
class _KeepsPort:
    """An endpoint that remembers the port it listens on, so the bound number can be read."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self.endpoint = endpoint
        self.port: IListeningPort | None = None

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def keep(port: IListeningPort) -> IListeningPort:
            self.port = port
            return port

        return self.endpoint.listen(factory).addCallback(keep)


class WCSService(MultiService):
    """The whole server: one hub in the middle, front-ends in, consumers out."""

    def __init__(self, settings: Settings, reactor: Any, worker: Placement | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        # Under `--workers N`: this process's place (its shared ports are bound with SO_REUSEPORT).
        self.worker = worker
        self.node_id = settings.cluster_node_id or generated_node_id()
        # The shared stream directory when this node is part of a cluster (docs/cluster.md).
        self.cluster: RedisStreamDirectory | None = None
        if settings.cluster_redis_url:
            self.cluster = RedisStreamDirectory(
                settings.cluster_redis_url,
                self.node_id,
                reactor,
                record=self.node_record,
                ttl_ms=settings.cluster_ttl_ms,
                fail_open=settings.cluster_fail_open,
            )
            self.hub = StreamHub(
                max_picture_pixels=settings.max_picture_pixels,
                directory=self.cluster,
                node=self.node_id,
            )
        else:
            self.hub = StreamHub(max_picture_pixels=settings.max_picture_pixels)
        self._started_ms = int(time.time() * 1000)
        self._cpu_mark = (time.monotonic(), self._cpu_seconds())
        self.idle_watchdog = PublishIdleWatchdog(
            self.hub, reactor, settings.publish_idle_timeout_ms
        )
        self.pool = ThreadPool(minthreads=1, maxthreads=POOL_THREADS, name="wcs-pool")
        # Prometheus metrics (GET /metrics): this service's own registry.
        self.metrics = new_registry()
        self.snapshots = SnapshotService(
            self.hub,
            self.run_in_pool,
            reactor,
            interval_ms=settings.snapshot_taking_interval_ms,
            attempts=settings.snapshot_taking_attempts,
            # ~8 % of a core per hot 720p30 stream: about a third of the machine at most.
            max_hot=4 * (os.cpu_count() or 2),
            stats=SnapshotMetrics(self.metrics),
        )
        # Who may connect, publish and play: the publish password and the REST hooks.
        hooks = (
            RestHooks(
                reactor,
                settings.rest_hook_url,
                settings.rest_hook_timeout_ms / 1000.0,
                settings.rest_hook_fail_open,
            )
            if settings.rest_hook_url
            else NoHooks()
        )
        self.access = Access(reactor, hooks=hooks, publish_password=settings.publish_password)
        # Camera pulls (/rtsp/startup): made before the listeners, whose site hands it out.
        self.pulls = PullManager(
            self.hub, reactor, allowed_networks=settings.rtsp_pull_allowed_networks
        )
        self.auto: AutoSnapshotter | None = None
        # The REST view of streams; it watches the hub before any consumer does.
        self.views = StreamViews(self.hub)
        # Whether a snapshot can be taken now, and why not (REST /stream/find).
        self.views.describe("video", self.snapshots.video_json)
        # One count over every listener; its cap is fitted to the open-file limit at start.
        self.connections = ConnectionLimiter(
            reactor, settings.max_connections, settings.max_connections_per_ip
        )
        self.metrics.register(
            ServerCollector(
                self.hub,
                self.snapshots,
                pulls=self.pulls,
                auto=lambda: self.auto,
                factories=lambda: self.factories,
                refused=lambda: self.connections.refused,
                per_stream=settings.metrics_per_stream,
                cluster=lambda: self.cluster,
                forwarder=lambda: self.forwarder,
            )
        )
        self._tls_options: ssl.CertificateOptions | None = None
        # The listeners, by label: planned here, made and bound at start (see _listen).
        self.descriptions: dict[str, str] = {}
        self._wanted: dict[str, tuple[int, Callable[[], IProtocolFactory]]] = {}
        self.factories: dict[str, IProtocolFactory] = {}
        self.listeners: dict[str, StreamServerEndpointService] = {}
        self.ports: dict[str, IListeningPort] = {}
        self._stopping = False
        # Set by wcs.tap under twistd: how SIGHUP re-reads the file (raises ConfigError), the
        # log level filter it may change, and the observer handed to twistd's application.
        self.reload_source: Callable[[], Settings] | None = None
        self.log_filter: LevelFilter | None = None
        self.log_observer: ILogObserver | None = None
        # What a reload retargets: the HTTP(S) and WebSocket sites and the RTSP factory.
        self.sites: list[Any] = []
        self.rtsp_factory: RTSPServerFactory | None = None
        self._build_listeners()

    def run_in_pool(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Blocking work (decode, PNG, disk) goes here, never on the reactor thread."""
        return deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)

    def _tls_wrap(self, factory: IProtocolFactory, label: str) -> IProtocolFactory:
        if self._tls_options is None:
            s = self.settings
            try:
                if s.https_cert and s.https_key:
                    cert, key = s.https_cert, s.https_key
                else:
                    cert, key = ensure_self_signed()
                self._tls_options = server_context(cert, key)
            except (OSError, TLSConfigError) as err:
                raise SystemExit(f"wcs: cannot use https.cert/https.key: {err}") from None
        return tls_server_factory(self._tls_options, factory, self.reactor, label)

    def _build_forwarding(self) -> None:
        """With a cluster: requests for a stream another node owns go to that node."""
        s = self.settings
        self.forwarder: Forwarder | None = None
        if s.cluster_redis_url is None:
            self.remote = Remote.local_only()
            return
        auth = None if s.disable_rest_auth else (s.rest_auth_user, s.rest_auth_password or "")
        self.forwarder = Forwarder(
            self.hub.node,
            self.hub.directory,
            self.reactor,
            s.cluster_forward_timeout_ms / 1000.0,
            auth=auth,
        )
        self.remote = Remote(self.serves_here, self.forwarder)

    def serves_here(self, name: str) -> bool:
        """Whether stream `name` is live in this process (not forwarded to another node)."""
        return self.hub.get(name) is not None

    def _build_listeners(self) -> None:
        s = self.settings
        self._build_forwarding()
        site = build_site(
            s,
            self.hub,
            self.snapshots,
            self.reactor,
            pulls=self.pulls,
            bound_ports=lambda: self.bound_ports,
            views=self.views,
            readiness=self.not_ready_reason,
            remote=self.remote,
        )
        self.sites.append(site)
        site.resource.putChild(
            b"metrics", MetricsResource(self.metrics, s, LoginThrottle(self.reactor))
        )
        self.signalling = signalling = SignallingFactory(
            self.hub,
            (
                self.snapshots
                if self.forwarder is None
                else ClusterSnapshots(self.snapshots, self.serves_here, self.forwarder)
            ),
            self.reactor,
            rtsp_pull=self.pulls.stream_for_player,
            resolve_name=self.pulls.resolve,
            run_in_pool=self.run_in_pool,
            access=self.access,
            views=self.views,
        )

        def ws_site(tls: bool) -> IProtocolFactory:
            factory = websocket_site(signalling, s)
            self.sites.append(getattr(factory, "wrappedFactory", None))
            return self._tls_wrap(factory, "wss") if tls else factory

        wanted: list[tuple[str, int | None, Callable[[], IProtocolFactory]]] = [
            ("http", s.http_port, lambda: site),
            ("https", s.https_port, lambda: self._tls_wrap(site, "https")),
            (
                "rtmp",
                s.rtmp_port,
                lambda: RTMPServerFactory(self.hub, self.reactor, access=self.access),
            ),
            ("rtsp", s.rtsp_port, self._rtsp_factory),
            ("ws", s.ws_port, lambda: ws_site(False)),
            ("wss", s.wss_port, lambda: ws_site(True)),
        ]
        if self.worker is not None:
            # The shared HTTP port reaches any worker: other nodes forward to this private one.
            wanted.append(("cluster", 0, lambda: site))
        for label, port, make in wanted:
            # None is a disabled listener; 0 (tests) binds a port the OS picks.
            if port is not None:
                self.descriptions[label] = listen_description(s.ip, port)
                self._wanted[label] = (port, self._limited(label, make))

    def rtsp_auths(self, s: Settings) -> tuple[RtspAuthenticator | None, RtspAuthenticator | None]:
        """RTSP (play, publish) authentication for settings `s`."""
        # Playback is guarded by the REST credentials when REST auth is on.
        play_auth = (
            None
            if s.disable_rest_auth or s.rest_auth_password is None
            else RtspAuthenticator(s.rest_auth_user, s.rest_auth_password, self.reactor)
        )
        # Publishing with the publish password: any user name, over Digest or Basic.
        publish_auth = (
            None
            if s.publish_password is None
            else RtspAuthenticator(None, s.publish_password, self.reactor, realm="wcs-publish")
        )
        return play_auth, publish_auth

    def _rtsp_factory(self) -> IProtocolFactory:
        s = self.settings
        play_auth, publish_auth = self.rtsp_auths(s)
        self.rtsp_factory = RTSPServerFactory(
            self.hub,
            self.reactor,
            ip=s.ip,
            max_udp_pairs=s.rtsp_udp_max_pairs,
            udp_port_range=s.rtsp_udp_port_range,
            play_auth=play_auth,
            publish_auth=publish_auth,
            access=self.access,
        )
        return self.rtsp_factory

    def _limited(
        self, label: str, make: Callable[[], IProtocolFactory]
    ) -> Callable[[], IProtocolFactory]:
        """`make`, its factory counted against the connection caps (the outermost wrapper)."""
        per_ip = label in PER_IP_LISTENERS
        return lambda: self.connections.wrap(make(), label, per_ip=per_ip)

    def _make_factories(self) -> None:
        """Each listener's factory, kept in `factories`. At start, not in __init__: twistd has
        changed into --rundir by then, so relative TLS paths resolve there. An unusable TLS
        pair raises SystemExit."""
        for label, (_, make) in self._wanted.items():
            self.factories[label] = make()

    def _listen(self) -> None:
        """Bind every listener, in order, each a strports service child of this one. A port
        that cannot be bound stops start-up with a message."""
        s = self.settings
        for label, description in self.descriptions.items():
            port_number = self._wanted[label][0]
            factory = self.factories[label]
            if self.worker is not None and label != "cluster":
                # Every worker listens on the supervisor's port number (SO_REUSEPORT).
                listener = StreamServerEndpointService(
                    ReusePortEndpoint(self.reactor, s.ip, port_number), factory
                )
                listener._raiseSynchronously = True
            else:
                listener = strports.service(description, factory, reactor=self.reactor)
            kept = _KeepsPort(listener.endpoint)
            listener.endpoint = kept
            listener.setName(label)
            listener.setServiceParent(self)
            self.listeners[label] = listener
            try:
                # A strports service raises a failed listen here, and TCP endpoints bind
                # synchronously: the outcome is known before the reactor runs. Whatever the
                # failure, it stops start-up.
                listener.privilegedStartService()
            except Exception as err:
                reason = Failure(err).getErrorMessage()
                log.critical(
                    "wcs cannot listen on {label} port {port}: {reason}",
                    label=label,
                    port=port_number,
                    reason=reason,
                )
                raise SystemExit(
                    f"wcs: cannot listen on {label} port {s.ip}:{port_number}: {reason}"
                ) from None
            assert kept.port is not None
            self.ports[label] = kept.port

    @property
    def bound_ports(self) -> dict[str, int]:
        """The port number each listening listener is bound to, by label."""
        return {label: port.getHost().port for label, port in self.ports.items()}  # type: ignore[attr-defined]

    def advertise_url(self) -> str:
        """This process's REST base URL for other nodes. A worker advertises its private
        `cluster` listener (the shared HTTP port reaches a random worker)."""
        s = self.settings
        ports = self.bound_ports
        host = "127.0.0.1" if s.ip in ("0.0.0.0", "::") else s.ip
        if ":" in host:
            host = f"[{host}]"
        if "cluster" in ports:  # a worker's
            if s.cluster_advertise_url:
                # The configured host (as other machines reach it), this worker's own port (plain
                # HTTP: the cluster listener has no TLS).
                authority = s.cluster_advertise_url.partition("://")[2].split("/", 1)[0]
                host = authority if authority.endswith("]") else authority.rsplit(":", 1)[0]
            return f"http://{host}:{ports['cluster']}"
        if s.cluster_advertise_url:
            return s.cluster_advertise_url
        return f"http://{host}:{ports.get('http', 0)}"

    @staticmethod
    def _cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def node_record(self) -> NodeRecord:
        """This node as the cluster directory shows it; load is the CPU share (1.0 = one core)
        since the previous record."""
        now, cpu = time.monotonic(), self._cpu_seconds()
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        load = (cpu - cpu_then) / (now - then) if now > then else 0.0
        return NodeRecord(
            url=self.advertise_url(),
            version=__version__,
            started_ms=self._started_ms,
            streams=len(self.hub),
            load=round(load, 3),
        )

    def not_ready_reason(self) -> str | None:
        """Why the server cannot serve (GET /ready answers 503 with it), or None."""
        if self._stopping:
            return "stopping"
        unbound = [label for label in self.descriptions if label not in self.ports]
        if unbound:
            return "listeners not bound: " + ", ".join(unbound)
        if not self.pool.started:
            return "worker pool not running"
        degraded = self.cluster.degraded() if self.cluster is not None else None
        if degraded is not None:
            return Degraded(degraded)
        return None

    def fit_connections_to_open_files(self) -> int:
        """Raise the soft open-file limit to the hard one and lower the connection cap to leave
        descriptors for files, pulls and UDP sockets; returns the cap."""
        s = self.settings
        open_files = raise_open_file_limit()
        cap = connection_cap(s.max_connections, open_files)
        self.connections.max_connections = cap
        log.info(
            "open-file limit {open_files}; at most {cap} connections over all listeners "
            "({per_ip} per client address on the HTTP, HTTPS, WS and WSS ports)",
            open_files=open_files,
            cap=cap,
            per_ip=s.max_connections_per_ip,
        )
        if cap < s.max_connections:
            log.warn(
                "max_connections {wanted} lowered to {cap} to fit the open-file limit "
                "{open_files}; raise the hard limit (LimitNOFILE= under systemd) to allow more",
                wanted=s.max_connections,
                cap=cap,
                open_files=open_files,
            )
        return cap

    def startService(self) -> None:
        s = self.settings
        if s.snapshot_auto_enabled:
            # Here, not in __init__: snapshot_auto_dir is relative to twistd's --rundir.
            self.auto = AutoSnapshotter(
                self.hub,
                self.snapshots,
                root=Path(s.snapshot_auto_dir),
                naming=s.snapshot_auto_naming,
                rate=s.snapshot_auto_rate,
                retention=s.snapshot_auto_retention,
            )
            self.views.describe("autoSnapshot", self.auto.describe)
            self.auto.start()
        self.fit_connections_to_open_files()
        self._make_factories()  # raises SystemExit if the TLS pair is unusable
        self._listen()  # raises SystemExit if a port cannot be bound
        super().startService()  # the listeners are bound already: this marks them running
        joined: Deferred[None] | None = None
        if self.cluster is not None:
            # After the listeners bind: the node record carries the bound HTTP port.
            joined = self.cluster.start()
        self.pool.start()
        self.idle_watchdog.start()
        self.reactor.addSystemEventTrigger("during", "shutdown", self.pool.stop)
        self.reactor.callWhenRunning(self._handle_sigterm)
        self.reactor.callWhenRunning(self._handle_sighup)
        if joined is None:
            self.reactor.callWhenRunning(self._ready)
        else:
            # A cluster node is ready once its first refresh has put its record in the
            # directory (or found Redis unreachable: degraded, see /ready), so that other nodes
            # can forward to it as soon as the line is out.
            joined.addCallback(lambda _: self._ready())

    def _handle_sigterm(self) -> None:
        # twistd re-raises SIGTERM at exit (status -15); an operator's SIGTERM is a normal stop,
        # so stop the reactor ourselves and let the process exit 0 after a clean shutdown.
        def on_sigterm(signum: int, frame: object) -> None:
            log.info("SIGTERM received, stopping")
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, on_sigterm)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.log_observer is not None and isinstance(parent, Componentized):
            # twistd's application: its logger starts with this observer (level, format).
            parent.setComponent(ILogObserver, self.log_observer)

    def _handle_sighup(self) -> None:
        # After twistd's own handlers (the reactor is running): SIGHUP reloads, never kills.
        def on_sighup(signum: int, frame: object) -> None:
            self.reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_sighup)

    def reload(self) -> None:
        """Re-read the configuration file: apply what can change live, log the rest."""
        from wcs import reload

        if self.reload_source is None:
            log.warn("SIGHUP: no configuration file (--config) to reload")
            return
        try:
            loaded = self.reload_source()
        except ConfigError as err:
            log.error(
                "config not reloaded, the running settings stay: wcs: configuration error: {error}",
                error=str(err),
            )
            return
        try:
            applied, ignored = reload.apply(self, loaded)
        except Exception:
            # A bug, not the file: say so, and keep serving with what was applied.
            log.failure("config reload failed")
            return
        if applied:
            log.info("config reloaded: {keys}", keys=", ".join(applied), log_always=True)
        if ignored:
            log.warn("config keys ignored until restart: {keys}", keys=", ".join(ignored))
        if not applied and not ignored:
            log.info("config reloaded: no changes", log_always=True)

    def _ready(self) -> None:
        ports = ", ".join(f"{label}={port}" for label, port in self.bound_ports.items())
        # Tests and scripts read the port list: "wcs ready: label=port, ... (pid N)", the
        # version after it.
        log.info(
            "wcs ready: {ports} (pid {pid}) version {version}",
            ports=ports or "no listeners",
            pid=os.getpid(),
            version=__version__,
            log_always=True,
        )

    def stopService(self) -> Deferred[None] | None:
        # Publishers first, so encoders see a clean disconnect and no stream outlives the server.
        # Shutdown waits (each bounded by its own timeouts) for camera pulls to send TEARDOWN
        # and for WebRTC peers to close and release their UDP sockets.
        self._stopping = True
        self.idle_watchdog.stop()
        waiting = [self.pulls.stop_all(), self.signalling.close_all()]
        self.hub.terminate_all()
        if self.cluster is not None:
            # After terminate_all: the names go back before the node record does (bounded).
            waiting.append(self.cluster.stop())
        stopped = super().stopService()
        self.ports.clear()
        if stopped is not None:
            waiting.append(stopped)
        return DeferredList(waiting, consumeErrors=True).addCallback(lambda _: None)
