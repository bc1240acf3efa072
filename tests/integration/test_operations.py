"""Operating `twistd wcs`: a port in use stops start-up with a message; --rundir holds tls/."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, free_ports

pytestmark = pytest.mark.integration


def write_config(path: Path, http: int, https: int, rtmp: int) -> Path:
    path.write_text(
        "ip=127.0.0.1\n"
        f"http.port={http}\nhttps.port={https}\nrtmp.port={rtmp}\n"
        "ws.port=0\nwss.port=0\nrtsp.port=0\n"
    )
    return path


def test_port_in_use_stops_startup_with_a_message(tmp_path: Path) -> None:
    http, https = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rtmp = taken.getsockname()[1]
        config = write_config(tmp_path / "wcs.properties", http, https, rtmp)
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
    config = write_config(rundir / "wcs.properties", *free_ports(3))
    proc = subprocess.Popen(
        [
            str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", f"--rundir={rundir}",
            "wcs", "--config", str(config),
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
