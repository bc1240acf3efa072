"""Operating `twistd wcs`: a port in use or an unusable TLS pair stops start-up with a message;
--rundir holds tls/; bad TLS handshakes are closed with one warning, never a traceback."""

from __future__ import annotations

import select
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, TWISTD, WCS_EPHEMERAL, Server, read_until_closed
from wcs.tls import HANDSHAKE_TIMEOUT, ensure_self_signed

pytestmark = pytest.mark.integration


def write_config(path: Path, *, extra: str = "") -> Path:
    """HTTP, HTTPS and RTMP at their defaults (--ephemeral-ports moves them to ports the OS
    picks), unless `extra` sets them; WS, WSS and RTSP disabled."""
    path.write_text("ip=127.0.0.1\nws.port=0\nwss.port=0\nrtsp.port=0\n" + extra)
    return path


def run_twistd(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "twistd"), *TWISTD, *WCS_EPHEMERAL, "--config", str(config)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_port_in_use_stops_startup_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rtmp = taken.getsockname()[1]
        # Only the RTMP listener, on the port held here: no other port to find free and race for.
        only_rtmp = f"http.port=\nhttps.port=\nrtmp.port={rtmp}\n"
        config = write_config(tmp_path / "wcs.properties", extra=only_rtmp)
        proc = subprocess.run(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "--logfile=-",
                "wcs",
                "--config",
                str(config),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert f"cannot listen on rtmp port 127.0.0.1:{rtmp}" in output, output
    assert "wcs ready" not in output


def test_tls_files_are_made_in_rundir(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    rundir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = write_config(rundir / "wcs.properties")
    proc = subprocess.Popen(
        [
            str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", f"--rundir={rundir}",
            "wcs", "--ephemeral-ports", "--config", str(config),
        ],
        cwd=elsewhere,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    watchdog = threading.Timer(30, proc.kill)  # a server that never gets ready must not hang us
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "wcs ready" in line:
                break
        else:
            raise AssertionError("server did not start")
        assert (rundir / "tls" / "server.crt").is_file()
        assert not (elsewhere / "tls").exists()
    finally:
        watchdog.cancel()
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_mismatched_tls_pair_stops_startup_naming_both_files(tmp_path: Path) -> None:
    cert, _ = ensure_self_signed(str(tmp_path / "a"))
    _, key = ensure_self_signed(str(tmp_path / "b"))
    extra = f"https.cert={cert}\nhttps.key={key}\n"
    config = write_config(tmp_path / "wcs.properties", extra=extra)
    proc = run_twistd(config, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"the certificate {cert} and the private key {key} do not match" in output, output
    assert "wcs ready" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("broken", ["cert", "key"])
def test_unusable_tls_file_stops_startup_naming_it(tmp_path: Path, broken: str) -> None:
    cert, key = ensure_self_signed(str(tmp_path / "a"))
    bad = Path(cert if broken == "cert" else key)
    bad.write_text("-----BEGIN NONSENSE-----\n")
    extra = f"https.cert={cert}\nhttps.key={key}\n"
    config = write_config(tmp_path / "wcs.properties", extra=extra)
    proc = run_twistd(config, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"{bad} holds no PEM" in output, output
    assert "wcs ready" not in output
    assert "Traceback" not in output


def test_bad_tls_handshakes_are_closed_with_a_warning(server: Server) -> None:
    """Garbage, plain HTTP and silence on the HTTPS and WSS ports: each connection is closed
    (silence at the handshake deadline) with a warning line, and no traceback is logged."""
    ports = {"https": server.ports["https"], "wss": server.ports["wss"]}
    mark = server.log_mark()
    silent = {label: socket.create_connection(("127.0.0.1", port)) for label, port in ports.items()}
    opened = time.monotonic()
    try:
        for label, port in ports.items():
            for junk in (b"\x00" * 64 + b"garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.settimeout(10)
                    s.sendall(junk)
                    read_until_closed(s)  # the server closes it (an alert at most)
            server.wait_for_log(rf"TLS 127\.0\.0\.1:\d+ on {label}: handshake failed: ", start=mark)
        # Silence: closed at the deadline, not at the HTTP idle timeout (60 s).
        for label, s in silent.items():
            readable, _, _ = select.select([s], [], [], HANDSHAKE_TIMEOUT + 10)
            assert readable, f"a silent TLS connection on {label} was never closed"
            assert read_until_closed(s) == b""  # aborted: a reset or EOF, no bytes
            assert time.monotonic() - opened < HANDSHAKE_TIMEOUT + 10
            server.wait_for_log(
                rf"on {label}: closing: no handshake within 10 s", start=mark, timeout=15
            )
    finally:
        for s in silent.values():
            s.close()
    # HTTPS still serves real clients (WCS's JSON 404: no streams yet).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    status, body = server.rest("/rest-api/stream/find_all", base=server.https, context=context)
    assert (status, isinstance(body, dict)) == (404, True), body
    log = "\n".join(server.lines[mark:])
    assert "Traceback" not in log
    assert "Unhandled Error" not in log
