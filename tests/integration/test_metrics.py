"""GET /metrics on a real twistd, scraped with Prometheus's own text parser during a live ffmpeg
RTMP publish: the values move, totals survive the stream's end, stream names stay out of the
labels unless metrics_per_stream=true, and REST auth applies unless metrics_auth=false."""

from __future__ import annotations

import base64
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Clip, Server, publishing, start_server

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    headers = {}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode("utf-8", "replace")


def parse(text: str) -> Samples:
    """Every sample of the exposition, by name and labels (the parser refuses a bad text)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def scrape(server: Server, base: str | None = None, auth: tuple[str, str] | None = None) -> Samples:
    status, headers, text = get((base or server.http) + "/metrics", auth)
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain; version=")
    return parse(text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll a condition on the server's metrics (each try is a scrape), never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path)
    try:
        yield srv
    finally:
        assert srv.stop() == 0


def test_metrics_move_during_a_live_rtmp_publish(
    metrics_server: Server, clips: dict[str, Clip]
) -> None:
    server = metrics_server
    name = "metrics_cam_7"
    before = scrape(server)
    assert value(before, "wcs_streams_live", provider="Flash", video_codec="none") == 0
    assert value(before, "wcs_ingest_bytes_total", provider="Flash") == 0
    assert ("process_cpu_seconds_total", ()) in before

    with publishing(server, name, clips["baseline"].path):
        first: Samples = {}

        def live() -> bool:
            nonlocal first
            first = scrape(server)
            return value(first, "wcs_streams_live", provider="Flash", video_codec="H264") == 1

        wait_for(live, "the stream live in the metrics")
        assert value(first, "wcs_streams_published_total", provider="Flash") == 1
        assert value(first, "wcs_connections", listener="rtmp") == 1
        assert value(first, "wcs_connections_accepted_total", listener="rtmp") >= 1
        bytes_first = value(first, "wcs_ingest_bytes_total", provider="Flash")
        assert bytes_first > 0
        frames_first = value(first, "wcs_ingest_frames_total", provider="Flash", kind="video")

        wait_for(
            lambda: value(scrape(server), "wcs_ingest_bytes_total", provider="Flash") > bytes_first,
            "ingest bytes to grow",
        )
        later = scrape(server)
        assert value(later, "wcs_ingest_frames_total", provider="Flash", kind="video") > (
            frames_first
        )

        status, body = server.snapshot(name)
        assert status == 200, body
        status, body = server.snapshot("no_such_stream")
        assert status == 404, body
        status, _, _ = get(f"{server.http}/rest-api/stream/snapshot?streamName={name}")
        assert status == 200

        after = scrape(server)
        assert value(after, "wcs_snapshot_requests_total", endpoint="rest", result="ok") == 1
        assert value(after, "wcs_snapshot_requests_total", endpoint="rest", result="not_found") == 1
        assert value(after, "wcs_snapshot_requests_total", endpoint="image", result="ok") == 1
        answered = value(after, "wcs_snapshot_request_seconds_count", decoder="cold") + value(
            after, "wcs_snapshot_request_seconds_count", decoder="hot"
        )
        assert answered == 3
        # The first request found the stream cold (nothing decoded it before).
        assert value(after, "wcs_snapshot_request_seconds_count", decoder="cold") >= 1
        assert value(after, "wcs_decode_seconds_count") >= 1
        assert value(after, "wcs_decoder_frames_decoded_total") >= 1
        assert value(after, "wcs_readers") >= 0
        # By default no label carries a stream name.
        _, _, text = get(server.http + "/metrics")
        assert name not in text

        # The HTTPS port serves the same exposition.
        over_tls = scrape(server, base=server.https)
        assert value(over_tls, "wcs_streams_live", provider="Flash", video_codec="H264") == 1
        bytes_live = value(over_tls, "wcs_ingest_bytes_total", provider="Flash")

    server.wait_for_log(rf"stream {name} ended")
    ended = scrape(server)
    assert value(ended, "wcs_streams_live", provider="Flash", video_codec="H264") == 0
    # An ended stream's counts stay in the totals (Prometheus counters never go back).
    assert value(ended, "wcs_ingest_bytes_total", provider="Flash") >= bytes_live
    assert value(ended, "wcs_decoder_frames_decoded_total") >= value(
        after, "wcs_decoder_frames_decoded_total"
    )
    # The encoder's unpublish ends the stream before its TCP close reaches the server: the
    # connection count drops when it does (seen 1 in a clean run that scraped in between).
    wait_for(
        lambda: value(scrape(server), "wcs_connections", listener="rtmp") == 0,
        "the RTMP connection to close",
    )


def test_metrics_per_stream_carry_the_stream_name(tmp_path: Path, clips: dict[str, Clip]) -> None:
    server = start_server(tmp_path, "metrics_per_stream=true\n")
    try:
        name = "per_stream_cam"
        with publishing(server, name, clips["baseline"].path):
            wait_for(
                lambda: (
                    value(
                        scrape(server),
                        "wcs_stream_ingest_bytes_total",
                        stream=name,
                        provider="Flash",
                    )
                    > 0
                ),
                "the stream's own series",
            )
    finally:
        assert server.stop() == 0


def test_metrics_are_under_rest_auth_unless_metrics_auth_is_false(tmp_path: Path) -> None:
    auth = "disable_rest_auth=false\nrest_auth_user=ops\nrest_auth_password=s3cret\n"
    (tmp_path / "a").mkdir()
    server = start_server(tmp_path / "a", auth)
    try:
        status, headers, _ = get(server.http + "/metrics")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="wcs"'
        status, _, text = get(server.http + "/metrics", ("ops", "wrong"))
        assert status == 401 and "wcs_" not in text
        samples = scrape(server, auth=("ops", "s3cret"))
        assert ("wcs_streams_published_total", (("provider", "Flash"),)) in samples
        samples = scrape(server, base=server.https, auth=("ops", "s3cret"))
        assert ("wcs_readers", ()) in samples
    finally:
        assert server.stop() == 0

    (tmp_path / "b").mkdir()
    server = start_server(tmp_path / "b", auth + "metrics_auth=false\n")
    try:
        assert ("wcs_readers", ()) in scrape(server)
        # The REST API itself still asks for the credentials.
        status, _ = server.rest("/rest-api/stream/find_all")
        assert status == 401
    finally:
        assert server.stop() == 0
