"""Hostile RTSP clients against a real `twistd wcs` over sockets: a request trickled a byte at a
time, an SDP with a superscript digit, client ports of 0; each is answered or closed with a
reason, and a real publisher on the same server never notices."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.integration.conftest import Server, read_until_closed
from wcs.rtsp.message import RtspParser, RtspResponse, build_request

pytestmark = pytest.mark.integration

DEADLINE = 10.0  # wcs.rtsp.server.REQUEST_DEADLINE

SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n"
)


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.ports["rtsp"]), timeout=10)


def exchange(s: socket.socket, request: bytes) -> RtspResponse:
    """Send one request and read its whole answer."""
    s.sendall(request)
    parser = RtspParser()
    while True:
        chunk = s.recv(65536)
        assert chunk, "the server closed the connection"
        events = parser.feed(chunk)
        if events:
            (response,) = events
            assert isinstance(response, RtspResponse)
            return response


def test_a_trickled_request_is_closed_at_its_deadline(server: Server) -> None:
    """Finding 13: a byte per second kept RTSP connections open forever."""
    request = build_request("OPTIONS", "*", [("CSeq", "1"), ("User-Agent", "x" * 64)])
    with connect(server) as s:
        s.settimeout(DEADLINE + 10)
        stop = threading.Event()

        def trickle() -> None:
            for i in range(len(request) - 1):  # never the last byte
                try:
                    s.send(request[i : i + 1])
                except OSError:
                    return
                if stop.wait(1.0):
                    return

        started = time.monotonic()
        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            answer = read_until_closed(s)
        finally:
            stop.set()
            sender.join(5)
        closed_after = time.monotonic() - started
    assert answer.startswith(b"RTSP/1.0 408 Request Timeout\r\n"), answer
    assert DEADLINE - 1 <= closed_after <= DEADLINE + 5, closed_after
    server.wait_for_log(r"closing connection: request not complete 10 s after its first byte")


def test_superscript_digits_in_an_announce_get_400_and_the_connection_stays(
    server: Server,
) -> None:
    """Finding 6: the ValueError reached the reactor and the publisher got no answer."""
    replacements = [
        ("m=video 0 RTP/AVP 96", "m=video \u00b2 RTP/AVP 96"),
        ("m=video 0 RTP/AVP 96", "m=video 0 RTP/AVP \u00b2"),
        ("rtpmap:96 H264/90000", "rtpmap:96 H264/\u00b2"),
    ]
    with connect(server) as s:
        for old, new in replacements:
            request = build_request(
                "ANNOUNCE",
                f"rtsp://127.0.0.1:{server.ports['rtsp']}/live/sup",
                [("CSeq", "1"), ("Content-Type", "application/sdp")],
                SDP.replace(old, new).encode(),
            )
            answer = exchange(s, request)
            assert answer.status == 400 and answer.reason.startswith("Bad SDP"), answer
        assert exchange(s, build_request("OPTIONS", "*", [("CSeq", "2")])).status == 200
    server.wait_for_log(r"ANNOUNCE of \S+/live/sup refused: Bad SDP: line \d+: bad")
    assert not any("Traceback" in line or "Unhandled" in line for line in server.lines)


def test_client_port_zero_is_461(server: Server) -> None:
    """Finding 21: client_port=0-0 was accepted (and took a pair from the UDP pool)."""
    url = f"rtsp://127.0.0.1:{server.ports['rtsp']}/live/zero"
    with connect(server) as s:
        announce = build_request(
            "ANNOUNCE", url, [("CSeq", "1"), ("Content-Type", "application/sdp")], SDP.encode()
        )
        assert exchange(s, announce).status == 200
        for cseq, ports in enumerate(("0-0", "5001-5000", "0"), 2):
            setup = build_request(
                "SETUP",
                url + "/streamid=0",
                [("CSeq", str(cseq)), ("Transport", f"RTP/AVP/UDP;unicast;client_port={ports}")],
            )
            answer = exchange(s, setup)
            assert answer.status == 461 and answer.reason.startswith("Bad client_port"), answer
        setup = build_request(
            "SETUP",
            url + "/streamid=0",
            [("CSeq", "9"), ("Transport", "RTP/AVP/UDP;unicast;client_port=5000-5001")],
        )
        assert exchange(s, setup).status == 200
