"""WCSService: owns the stream registry, thread pool and snapshot service; runs the listeners."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from wcs.access import Access
from wcs.config import Settings
from wcs.hooks import NoHooks, RestHooks
from wcs.limits import ConnectionLimiter, connection_cap, raise_open_file_limit
from wcs.rest.resources import build_site
from wcs.rtmp.protocol import RTMPServerFactory
from wcs.rtsp.auth import RtspAuthenticator
from wcs.rtsp.pull import PullManager
from wcs.rtsp.server import RTSPServerFactory
from wcs.snapshot.auto import AutoSnapshotter
from wcs.snapshot.service import SnapshotService
from wcs.streams import PublishIdleWatchdog, StreamRegistry
from wcs.tls import TLSConfigError, ensure_self_signed, server_context, tls_server_factory
from wcs.webrtc.signalling import SignallingFactory, websocket_site

log = Logger(namespace="wcs.service")

POOL_THREADS = 4
# Listeners whose connections count against max_connections_per_ip. The ingest ports (RTMP,
# RTSP) are exempt: many encoders may publish from behind one NAT address.
PER_IP_LISTENERS = frozenset({"http", "https", "ws", "wss"})


class ListenerService(Service):
    """Listens on one TCP port while running; remembers the bound port.

    The factory is made at start, after twistd has changed into --rundir, so relative paths
    (TLS files) resolve there. A port that cannot be bound stops start-up with a message.
    """

    def __init__(
        self,
        reactor: Any,
        label: str,
        ip: str,
        port: int,
        make_factory: Callable[[], IProtocolFactory],
    ) -> None:
        self.name = label
        self.label = label
        self._reactor = reactor
        self._ip = ip
        self._port_number = port
        self._make_factory = make_factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        endpoint_cls = TCP6ServerEndpoint if ":" in self._ip else TCP4ServerEndpoint
        endpoint = endpoint_cls(self._reactor, self._port_number, interface=self._ip)
        outcome: list[IListeningPort | Failure] = []
        endpoint.listen(self._make_factory()).addBoth(outcome.append)
        # TCP endpoints bind synchronously: the outcome is known now, before the reactor runs.
        if outcome and isinstance(outcome[0], Failure):
            reason = outcome[0].getErrorMessage()
            log.critical(
                "wcs cannot listen on {label} port {port}: {reason}",
                label=self.label,
                port=self._port_number,
                reason=reason,
            )
            raise SystemExit(
                f"wcs: cannot listen on {self.label} port {self._ip}:{self._port_number}: {reason}"
            )
        if outcome:
            port = outcome[0]
            assert not isinstance(port, Failure)
            self.port = port

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None

    @property
    def bound_port(self) -> int | None:
        return self.port.getHost().port if self.port is not None else None  # type: ignore[attr-defined]


class WCSService(MultiService):
    """The whole server: one registry in the middle, front-ends in, consumers out."""

    def __init__(self, settings: Settings, reactor: Any) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.registry = StreamRegistry(max_picture_pixels=settings.max_picture_pixels)
        self.idle_watchdog = PublishIdleWatchdog(
            self.registry, reactor, settings.publish_idle_timeout_ms
        )
        self.pool = ThreadPool(minthreads=1, maxthreads=POOL_THREADS, name="wcs-pool")
        self.snapshots = SnapshotService(
            self.registry,
            self.run_in_pool,
            reactor,
            interval_ms=settings.snapshot_taking_interval_ms,
            attempts=settings.snapshot_taking_attempts,
            # ~8 % of a core per hot 720p30 stream: about a third of the machine at most.
            max_hot=4 * (os.cpu_count() or 2),
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
            self.registry, reactor, allowed_networks=settings.rtsp_pull_allowed_networks
        )
        self.auto: AutoSnapshotter | None = None
        # One count over every listener; its cap is fitted to the open-file limit at start.
        self.connections = ConnectionLimiter(
            reactor, settings.max_connections, settings.max_connections_per_ip
        )
        self._tls_options: ssl.CertificateOptions | None = None
        self.listeners: list[ListenerService] = []
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

    def _build_listeners(self) -> None:
        s = self.settings
        site = build_site(s, self.registry, self.snapshots, self.reactor, pulls=self.pulls)
        self.signalling = signalling = SignallingFactory(
            self.registry,
            self.snapshots,
            self.reactor,
            rtsp_pull=self.pulls.stream_for_player,
            resolve_name=self.pulls.resolve,
            run_in_pool=self.run_in_pool,
            access=self.access,
        )

        def ws_site(tls: bool) -> IProtocolFactory:
            factory = websocket_site(signalling, s)
            return self._tls_wrap(factory, "wss") if tls else factory

        wanted: list[tuple[str, int | None, Callable[[], IProtocolFactory]]] = [
            ("http", s.http_port, lambda: site),
            ("https", s.https_port, lambda: self._tls_wrap(site, "https")),
            (
                "rtmp",
                s.rtmp_port,
                lambda: RTMPServerFactory(self.registry, self.reactor, access=self.access),
            ),
            ("rtsp", s.rtsp_port, self._rtsp_factory),
            ("ws", s.ws_port, lambda: ws_site(False)),
            ("wss", s.wss_port, lambda: ws_site(True)),
        ]
        for label, port, make in wanted:
            if port:
                limited = self._limited(label, make)
                listener = ListenerService(self.reactor, label, s.ip, port, limited)
                listener.setServiceParent(self)
                self.listeners.append(listener)

    def _rtsp_factory(self) -> IProtocolFactory:
        s = self.settings
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
        return RTSPServerFactory(
            self.registry,
            self.reactor,
            ip=s.ip,
            max_udp_pairs=s.rtsp_udp_max_pairs,
            udp_port_range=s.rtsp_udp_port_range,
            play_auth=play_auth,
            publish_auth=publish_auth,
            access=self.access,
        )

    def _limited(
        self, label: str, make: Callable[[], IProtocolFactory]
    ) -> Callable[[], IProtocolFactory]:
        """`make`, its factory counted against the connection caps (the outermost wrapper)."""
        per_ip = label in PER_IP_LISTENERS
        return lambda: self.connections.wrap(make(), label, per_ip=per_ip)

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
                self.registry,
                self.snapshots,
                root=Path(s.snapshot_auto_dir),
                naming=s.snapshot_auto_naming,
                rate=s.snapshot_auto_rate,
                retention=s.snapshot_auto_retention,
            )
            self.auto.start()
        self.fit_connections_to_open_files()
        super().startService()  # the listeners: raises SystemExit if a port cannot be bound
        self.pool.start()
        self.idle_watchdog.start()
        self.reactor.addSystemEventTrigger("during", "shutdown", self.pool.stop)
        self.reactor.callWhenRunning(self._handle_sigterm)
        self.reactor.callWhenRunning(self._ready)

    def _handle_sigterm(self) -> None:
        # twistd re-raises SIGTERM at exit (status -15); an operator's SIGTERM is a normal stop,
        # so stop the reactor ourselves and let the process exit 0 after a clean shutdown.
        def on_sigterm(signum: int, frame: object) -> None:
            log.info("SIGTERM received, stopping")
            self.reactor.callFromThread(self.reactor.stop)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _ready(self) -> None:
        ports = ", ".join(f"{lst.label}={lst.bound_port}" for lst in self.listeners)
        log.info("wcs ready: {ports} (pid {pid})", ports=ports or "no listeners", pid=os.getpid())

    def stopService(self) -> Deferred[None] | None:
        # Publishers first, so encoders see a clean disconnect and no stream outlives the server.
        # Shutdown waits (each bounded by its own timeouts) for camera pulls to send TEARDOWN
        # and for WebRTC peers to close and release their UDP sockets.
        self.idle_watchdog.stop()
        waiting = [self.pulls.stop_all(), self.signalling.close_all()]
        self.registry.terminate_all()
        stopped = super().stopService()
        if stopped is not None:
            waiting.append(stopped)
        return DeferredList(waiting, consumeErrors=True).addCallback(lambda _: None)
