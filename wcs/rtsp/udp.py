"""The UDP ports of RTSP publish sessions: a bounded pool of consecutive RTP/RTCP port pairs,
each delivering its datagrams to the session that holds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol

__all__ = ["MAX_UDP_PAIRS", "UdpPair", "UdpPoolExhausted", "UdpPortPool"]

# Pairs of UDP ports (RTP + RTCP) the whole server may hold for UDP tracks at once.
MAX_UDP_PAIRS: Final = 256
# With ephemeral ports, how often to retry when the port after the one the kernel gave is taken.
UDP_BIND_ATTEMPTS: Final = 16


class UdpPoolExhausted(Exception):
    """No UDP port pair is free (the pool's limit is reached or nothing can be bound)."""


class _UdpReceiver(DatagramProtocol):
    """Hands every datagram of one port to a callback (the session the port belongs to)."""

    noisy = False

    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.on_datagram(datagram, addr)


@dataclass(eq=False)
class UdpPair:
    """Two bound UDP ports (RTP on `rtp_port`, RTCP on `rtcp_port` = rtp_port + 1) of one track."""

    rtp_port: int
    rtcp_port: int
    ports: tuple[IListeningPort, IListeningPort]
    pool: UdpPortPool
    released: bool = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        for port in self.ports:
            port.stopListening()
        self.pool.in_use -= 1


class UdpPortPool:
    """Bounded RTP/RTCP port pairs on `interface`: ephemeral ports, or pairs from `port_range`.

    ffmpeg sends RTCP to the RTP port + 1 whatever the server_port says, so pairs are consecutive.
    """

    def __init__(
        self,
        reactor: Any,
        interface: str,
        *,
        max_pairs: int = MAX_UDP_PAIRS,
        port_range: tuple[int, int] | None = None,
    ) -> None:
        if max_pairs < 1:
            raise ValueError("max_pairs must be at least 1")
        if port_range is not None and not 0 < port_range[0] < port_range[1] <= 65535:
            raise ValueError(f"bad UDP port range {port_range}")
        self.reactor = reactor
        self.interface = interface
        self.max_pairs = max_pairs
        self.port_range = port_range
        self.in_use = 0
        self._cursor = port_range[0] if port_range else 0

    def allocate(
        self,
        on_rtp: Callable[[bytes, tuple[str, int]], None],
        on_rtcp: Callable[[bytes, tuple[str, int]], None],
    ) -> UdpPair:
        """Bind a pair and deliver its datagrams to the callbacks; raises UdpPoolExhausted."""
        if self.in_use >= self.max_pairs:
            raise UdpPoolExhausted(f"all {self.max_pairs} UDP port pairs are in use")
        for rtp_port in self._candidates():
            rtp = self._listen(rtp_port, on_rtp)
            if rtp is None:
                continue
            bound = rtp.getHost().port  # type: ignore[attr-defined]
            rtcp = self._listen(bound + 1, on_rtcp) if bound < 65535 else None
            if rtcp is None:
                rtp.stopListening()
                continue
            self.in_use += 1
            return UdpPair(bound, bound + 1, (rtp, rtcp), self)
        raise UdpPoolExhausted("no free pair of consecutive UDP ports")

    def _candidates(self) -> list[int]:
        if self.port_range is None:
            return [0] * UDP_BIND_ATTEMPTS
        low, high = self.port_range
        start = low + (low & 1)  # RTP on even ports (RFC 3550 11)
        evens = list(range(start, high, 2))  # high - 1 is the last possible RTP port
        # Start after the last pair handed out, so a just-released pair is not reused at once.
        first = next((i for i, p in enumerate(evens) if p >= self._cursor), 0)
        return evens[first:] + evens[:first]

    def _listen(
        self, port: int, callback: Callable[[bytes, tuple[str, int]], None]
    ) -> IListeningPort | None:
        try:
            listening: IListeningPort = self.reactor.listenUDP(
                port, _UdpReceiver(callback), interface=self.interface
            )
        except CannotListenError:
            return None
        if self.port_range is not None:
            self._cursor = port + 2 - (port & 1)
        return listening
