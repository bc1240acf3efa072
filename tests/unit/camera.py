"""A fake RTSP camera for unit tests: its address, an SDP and real H.264 RTP packets, and `Cam`,
which answers what an RTSPClientProtocol writes to a StringTransport as a camera would."""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.unit.media_fixtures import h264_sample, parameter_sets
from wcs.rtsp.client import RTSPClientProtocol
from wcs.rtsp.h264rtp import H264Packetizer
from wcs.rtsp.message import (
    InterleavedFrame,
    RtspParser,
    RtspRequest,
    build_interleaved,
    build_response,
)

URL = "rtsp://10.0.0.2:554/stream1"
BASE = "rtsp://10.0.0.2:554/stream1/"
SSRC = 0x1234ABCD
PUBLIC = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"


@functools.cache
def sample_params() -> tuple[bytes, bytes]:
    return parameter_sets(h264_sample(bframes=False, seconds=1, size="160x120"))


def camera_sdp(*, audio: bool = True, metadata: bool = True, session_control: str = "*") -> bytes:
    sps, pps = sample_params()
    sprop = ",".join(base64.b64encode(n).decode() for n in (sps, pps))
    lines = ["v=0", "o=- 1 1 IN IP4 10.0.0.2", "s=Camera", "t=0 0"]
    if session_control:
        lines.append(f"a=control:{session_control}")
    lines += [
        "m=video 0 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        f"a=fmtp:96 packetization-mode=1;profile-level-id=42C01E;sprop-parameter-sets={sprop}",
        "a=control:trackID=0",
    ]
    if audio:
        lines += [
            "m=audio 0 RTP/AVP 97",
            "a=rtpmap:97 MPEG4-GENERIC/16000/1",
            "a=fmtp:97 streamtype=5;mode=AAC-hbr;config=1408;sizelength=13;indexlength=3",
            "a=control:trackID=1",
        ]
    if metadata:
        lines += [
            "m=application 0 RTP/AVP 107",
            "a=rtpmap:107 vnd.onvif.metadata/90000",
            "a=control:trackID=2",
        ]
    return ("\r\n".join(lines) + "\r\n").encode()


def video_rtp(seconds: int = 1, ssrc: int = SSRC, seq: int = 100) -> list[bytes]:
    """Real H.264 (ffmpeg, 160x120, IDR first) as RTP packets: single NAL, STAP-A and FU-A."""
    sample = h264_sample(bframes=False, seconds=seconds, size="160x120")
    packetizer = H264Packetizer(96, ssrc, mtu=600, initial_seq=seq, timestamp_offset=0)
    out = []
    for unit in sample.units:
        pts = int(unit.pts * unit.time_base * 90000)
        out += [p.serialize() for p in packetizer.packetize(unit.data, pts)]
    return out


class Cam:
    """Reads what the client wrote to a StringTransport and answers as a camera would."""

    def __init__(self, client: RTSPClientProtocol, transport: StringTransport) -> None:
        self.client = client
        self.tr = transport
        self.parser = RtspParser()
        self.offset = 0
        self.frames: list[InterleavedFrame] = []

    def requests(self) -> list[RtspRequest]:
        value = self.tr.value()
        data, self.offset = value[self.offset :], len(value)
        out = []
        for event in self.parser.feed(data):
            if isinstance(event, RtspRequest):
                out.append(event)
            elif isinstance(event, InterleavedFrame):
                self.frames.append(event)
        return out

    def request(self, method: str | None = None) -> RtspRequest:
        reqs = self.requests()
        assert len(reqs) == 1, [(r.method, r.uri) for r in reqs]
        if method is not None:
            assert reqs[0].method == method, reqs[0]
        return reqs[0]

    def answer(
        self,
        req: RtspRequest,
        status: int = 200,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        cseq = [("CSeq", req.headers["CSeq"])]
        self.client.dataReceived(build_response(status, None, [*cseq, *headers], body))

    def send(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def rtp(self, channel: int, packets: Sequence[bytes]) -> None:
        self.client.dataReceived(b"".join(build_interleaved(channel, p) for p in packets))

    def drop(self) -> None:
        """The connection is gone (what the reactor reports after a close from either side)."""
        self.client.connectionLost(Failure(ConnectionDone()))

    # A whole exchange up to PLAY.
    def handshake(
        self,
        *,
        sdp: bytes | None = None,
        public: str = PUBLIC,
        session: str = "12345678;timeout=60",
        channels: Sequence[str | None] = (),
        content_base: str | None = BASE,
    ) -> None:
        self.answer(self.request("OPTIONS"), headers=[("Public", public)])
        describe = self.request("DESCRIBE")
        headers = [("Content-Type", "application/sdp")]
        if content_base:
            headers.append(("Content-Base", content_base))
        self.answer(describe, headers=headers, body=sdp or camera_sdp())
        i = 0
        while True:
            req = self.request()
            if req.method != "SETUP":
                break
            transport = req.headers["Transport"]
            chosen = channels[i] if i < len(channels) else None
            if chosen is not None:
                transport = f"RTP/AVP/TCP;unicast;interleaved={chosen}"
            self.answer(req, headers=[("Session", session), ("Transport", transport)])
            i += 1
        assert req.method == "PLAY"
        self.answer(req, headers=[("Session", session.partition(";")[0])])
