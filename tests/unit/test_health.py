"""GET /health, GET /ready, GET /rest-api/version, the version itself and the `Server:` header."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import cast

import pytest
from twisted.internet.task import Clock

import wcs
from tests.unit.rest_client import Api
from twisted import copyright
from wcs.config import Settings
from wcs.rest.resources import build_site
from wcs.snapshot.service import SnapshotService
from wcs.streams import StreamHub

AUTH = dataclasses.replace(Settings(), disable_rest_auth=False, rest_auth_password="pw")
REPO = Path(__file__).resolve().parents[2]


def site_api(readiness: object) -> Api:
    api = Api()
    api.site = build_site(
        api.settings,
        StreamHub(),
        cast(SnapshotService, api.snapshots),
        Clock(),
        readiness=readiness,  # type: ignore[arg-type]
    )
    return api


def test_version_comes_from_the_installed_package() -> None:
    assert wcs.__version__ == metadata.version("wcs")
    assert wcs.__version__ != "0+unknown"


def test_version_without_package_metadata_says_unknown() -> None:
    code = (
        "from importlib import metadata\n"
        "def missing(name): raise metadata.PackageNotFoundError(name)\n"
        "metadata.version = missing\n"
        "import wcs; print(wcs.__version__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "0+unknown"


@pytest.mark.parametrize("settings", [Settings(), AUTH], ids=["open", "rest-auth"])
def test_health_is_ok_without_credentials(settings: Settings) -> None:
    response = Api(settings).call("GET", "/health")
    assert response.status == 200
    assert response.header("Content-Type") == "application/json"
    assert response.header("Cache-Control") == "no-store"
    assert response.json() == {"status": "ok"}


def test_ready_without_a_readiness_check_is_ready() -> None:
    response = Api(AUTH).call("GET", "/ready")
    assert response.status == 200
    assert response.json() == {"status": "ready"}


def test_ready_answers_503_with_the_reason_until_ready() -> None:
    reason: list[str | None] = ["listeners not bound: rtmp"]
    api = site_api(lambda: reason[0])
    response = api.call("GET", "/ready")
    assert response.status == 503
    assert response.json() == {"status": "not ready", "reason": "listeners not bound: rtmp"}
    reason[0] = None
    response = api.call("GET", "/ready")
    assert response.status == 200
    assert response.json() == {"status": "ready"}


def test_ready_answers_503_degraded_while_the_cluster_directory_is_unreachable() -> None:
    from wcs.rest.health import Degraded

    api = site_api(lambda: Degraded("cluster directory unreachable: Connection refused"))
    response = api.call("GET", "/ready")
    assert response.status == 503
    assert response.json() == {
        "status": "degraded",
        "reason": "cluster directory unreachable: Connection refused",
    }


@pytest.mark.parametrize("path", ["/health", "/ready"])
def test_probes_answer_get_only_and_no_subpaths(path: str) -> None:
    api = Api()
    response = api.call("POST", path, {})
    assert response.status == 405
    assert response.header("Allow") == "GET, HEAD"
    assert api.call("GET", path + "/x").status == 404


def test_rest_version_is_under_rest_auth() -> None:
    assert Api().call("GET", "/rest-api/version").json() == {"version": wcs.__version__}
    api = Api(AUTH)
    assert api.call("GET", "/rest-api/version").status == 401
    ok = api.call("GET", "/rest-api/version", headers={"Authorization": "Basic YWRtaW46cHc="})
    assert ok.status == 200
    assert ok.json() == {"version": wcs.__version__}


@pytest.mark.parametrize("path", ["/health", "/rest-api/version", "/rest-api/nosuch"])
def test_server_header_names_wcs_and_twisted_web(path: str) -> None:
    server = Api().call("GET", path).header("Server")
    assert server == f"wcs/{wcs.__version__} TwistedWeb/{copyright.version}"


def test_twistd_wcs_version_prints_both_versions() -> None:
    twistd = Path(sys.executable).parent / "twistd"
    out = subprocess.run(
        [str(twistd), "wcs", "--version"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wcs {wcs.__version__} (Twisted {copyright.version})"
