"""etc/wcs.service, the unit operators install: systemd's own checks pass on it (`systemd-analyze
verify` and `security --offline`), it runs what docs/operations.md says, and its hardening still
lets the server write where it writes (the working directory with tls/ and the auto snapshots)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from tests.integration.conftest import BIN
from wcs.config import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "etc" / "wcs.service"
SHIPPED_TWISTD = "/opt/wcs/.venv/bin/twistd"
EXEC_START = f"{SHIPPED_TWISTD} -n --pidfile= wcs --config /etc/wcs/flashphoner.properties"
# systemd rates a unit's exposure from 0.0 (locked down) to 10.0; up to 4.9 it calls it "OK".
EXPOSURE_LIMIT = 3.0
EXPOSURE = re.compile(r"Overall exposure level for wcs\.service: (\d+\.\d+)")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is missing: `make system-deps` installs Debian's systemd"
    return path


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value given (systemd keys may repeat); comments skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting outside any section: {raw!r}"
        assert not line.endswith("\\"), "no continuation lines: keep the checks below simple"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def render(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart= on this venv's twistd: `verify` refuses a missing binary."""
    text = UNIT.read_text() if text is None else text
    assert SHIPPED_TWISTD in text
    unit = tmp_path / "wcs.service"
    unit.write_text(text.replace(SHIPPED_TWISTD, str(BIN / "twistd")))
    return unit


def verify(unit: Path) -> tuple[int, list[str]]:
    """Exit status and the lines `systemd-analyze verify` says about this unit (it also warns
    about unknown keys and bad values, with exit status 0)."""
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in said if unit.name in line]


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    assert verify(render(tmp_path)) == (0, [])


@pytest.mark.parametrize(
    "before, after, said",
    [
        ("ProtectHome=yes", "ProtectHom=yes", "Unknown key 'ProtectHom'"),
        ("Restart=on-failure", "Restart=sometimes", "ignoring: sometimes"),
        ("Type=simple", "Type=simplest", "ignoring: simplest"),
    ],
)
def test_verify_would_catch_a_broken_unit(
    tmp_path: Path, before: str, after: str, said: str
) -> None:
    text = UNIT.read_text()
    assert f"\n{before}\n" in text
    _, lines = verify(render(tmp_path, text.replace(f"\n{before}\n", f"\n{after}\n")))
    assert any(said in line for line in lines), lines


def test_hardening_is_rated_ok_by_systemd(tmp_path: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(render(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    m = EXPOSURE.search(result.stdout)
    assert m, result.stdout[-2000:]
    assert float(m[1]) <= EXPOSURE_LIMIT, result.stdout


def test_runs_twistd_wcs_in_the_foreground(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    assert service["Type"] == ["simple"]
    assert service["ExecStart"] == [EXEC_START]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_a_dedicated_user_with_only_the_low_port_capability(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = unit["Service"]
    assert service["User"] == ["wcs"]
    assert service["Group"] == ["wcs"]
    assert service["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert service["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]


def test_the_server_can_write_its_working_directory_and_auto_snapshots(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = unit["Service"]
    writable = [PurePosixPath(p) for v in service["ReadWritePaths"] for p in v.split()]
    # systemd creates /var/lib/<StateDirectory> and /run/<RuntimeDirectory> owned by User=.
    (state,) = service["StateDirectory"]
    (runtime,) = service["RuntimeDirectory"]
    workdir = PurePosixPath(service["WorkingDirectory"][0])
    assert workdir == PurePosixPath("/var/lib") / state
    assert PurePosixPath("/run") / runtime in writable
    # The default snapshot_auto_dir is relative: it resolves against the working directory.
    snapshots = workdir / Settings().snapshot_auto_dir
    assert any(snapshots.is_relative_to(p) for p in writable), (snapshots, writable)
    assert any(workdir.is_relative_to(p) for p in writable)  # tls/ is created there too
