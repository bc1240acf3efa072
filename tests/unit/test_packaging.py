"""A real, non-editable install (pip --target) finds the `twistd wcs` plugin.

The checkout is copied first so the build writes nothing into it, and the subprocesses run outside
it with the checkout removed from sys.path (the venv's editable install puts it there), so what is
found is what pip installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "node_modules",
    "dropin.cache",
    ".*_cache",
    ".hypothesis",
)


def copy_checkout(dest: Path) -> None:
    """The files git knows about (tracked or new, not ignored); a filtered copy without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(REPO, dest, ignore=_IGNORE)
        return
    for name in listed.decode().split("\0"):
        src = REPO / name
        if not name or not src.is_file():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    copy_checkout(src)
    target = root / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            str(src),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def run_isolated(code: str, target: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Python with PYTHONPATH=target and the checkout taken off sys.path before anything loads."""
    prelude = textwrap.dedent(
        f"""
        import os, sys
        _repo = os.path.realpath({str(REPO)!r})
        sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != _repo]
        """
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layout_of_the_install(installed: Path) -> None:
    assert (installed / "twisted" / "plugins" / "wcs_plugin.py").is_file()
    # An __init__.py in either would shadow the real twisted package or its plugins package.
    assert not (installed / "twisted" / "__init__.py").exists()
    assert not (installed / "twisted" / "plugins" / "__init__.py").exists()
    assert (installed / "wcs" / "tap.py").is_file()
    assert (installed / "wcs" / "rtmp" / "protocol.py").is_file()
    assert (installed / "wcs" / "rtsp" / "ingest.py").is_file()
    assert (installed / "wcs" / "web" / "demo" / "two-way-streaming.html").is_file()
    assert (installed / "wcs" / "web" / "demo" / "stream-snapshot.js").is_file()
    assert (installed / "wcs" / "rest" / "openapi.json").is_file()
    assert (installed / "wcs" / "web" / "demo" / "wall.js").is_file()
    assert not (installed / "tests").exists()
    assert not (installed / "bench").exists()


def test_plugin_is_found_from_the_install(installed: Path) -> None:
    code = """
        import importlib, json
        from twisted.plugin import getPlugins
        from twisted.application.service import IServiceMaker
        import twisted, twisted.plugins
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "wcs"]
        tap = importlib.import_module(makers[0].module) if makers else None
        print(json.dumps({
            "count": len(makers),
            "module": makers[0].module if makers else None,
            "tap_file": getattr(tap, "__file__", None),
            "plugin_file": sys.modules["twisted.plugins.wcs_plugin"].__file__,
            "twisted_file": twisted.__file__,
            "plugin_paths": list(twisted.plugins.__path__),
        }))
    """
    result = run_isolated(code, installed, installed.parent)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["count"] == 1
    assert found["module"] == "wcs.tap"
    assert Path(found["tap_file"]).resolve() == (installed / "wcs" / "tap.py").resolve()
    assert Path(found["plugin_file"]).resolve().is_relative_to(installed.resolve())
    # The real twisted still comes from the environment, not from the install's twisted/ dir.
    assert not Path(found["twisted_file"]).resolve().is_relative_to(installed.resolve())
    plugin_paths = [Path(p).resolve() for p in found["plugin_paths"]]
    assert (installed / "twisted" / "plugins").resolve() in plugin_paths
    assert (REPO / "twisted" / "plugins").resolve() not in plugin_paths


def test_twistd_help_lists_wcs(installed: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(installed))
    plain = subprocess.run(
        [sys.executable, "-m", "twisted", "--help"],
        cwd=installed,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0, plain.stderr
    assert any(line.split()[:1] == ["wcs"] for line in plain.stdout.splitlines())

    # The same with the checkout off sys.path: the listing comes from the install alone.
    code = """
        import runpy
        sys.argv = ["twistd", "--help"]
        runpy.run_module("twisted", run_name="__main__")
    """
    isolated = run_isolated(code, installed, installed)
    assert isolated.returncode == 0, isolated.stderr
    lines = [line.split() for line in isolated.stdout.splitlines()]
    wcs_lines = [line for line in lines if line[:1] == ["wcs"]]
    assert len(wcs_lines) == 1
    assert "WCS-compatible" in " ".join(wcs_lines[0])
