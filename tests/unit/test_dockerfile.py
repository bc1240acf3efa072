"""The Dockerfile, read with BuildKit's own parser (no container runtime here): the image exposes
every listener of the default configuration, checks /health on the HTTP port, runs `twistd wcs`
with the config it copies in, as a user that is not root; .dockerignore keeps what the build
copies and leaves the rest out."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path, PurePosixPath

import dockerfile
import pytest
from dockerfile import Command

from wcs.config import Settings, load_settings
from wcs.web.resources import WEBSDK_ENV, WEBSDK_PACKAGE

REPO = Path(__file__).resolve().parents[2]
CONFIG = "etc/flashphoner.properties"
HEALTH_URL = re.compile(r"http://(?:127\.0\.0\.1|localhost):(\d+)/health\b")


def stages(commands: tuple[Command, ...]) -> list[list[Command]]:
    out: list[list[Command]] = []
    for command in commands:
        if command.cmd == "FROM":
            out.append([])
        assert out, f"an instruction before the first FROM: {command.original}"
        out[-1].append(command)
    return out


@pytest.fixture(scope="module")
def parsed() -> tuple[Command, ...]:
    return dockerfile.parse_file(str(REPO / "Dockerfile"))


@pytest.fixture(scope="module")
def final(parsed: tuple[Command, ...]) -> list[Command]:
    """The instructions of the image that runs (the last stage)."""
    return stages(parsed)[-1]


def only(stage: list[Command], cmd: str) -> Command:
    found = [c for c in stage if c.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd}, found {[c.original for c in found]}"
    return found[0]


def env_of(stage: list[Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in stage:
        if command.cmd == "ENV":
            pairs = command.value
            env.update(zip(pairs[::2], pairs[1::2], strict=True))
    return env


def copies(stage: list[Command]) -> list[tuple[str | None, tuple[str, ...], str]]:
    """(from stage or None for the build context, sources, destination) of each COPY."""
    out = []
    for command in stage:
        if command.cmd == "COPY":
            origin = next(
                (f.split("=", 1)[1] for f in command.flags if f.startswith("--from=")), None
            )
            *sources, dest = command.value
            out.append((origin, tuple(sources), dest))
    return out


def default_ports() -> set[int]:
    """Every listener port the default configuration enables."""
    defaults = Settings()
    ports = {
        getattr(defaults, f.name)
        for f in dataclasses.fields(Settings)
        if f.name.endswith("_port") and getattr(defaults, f.name)
    }
    assert {8081, 1935, 554} <= ports  # the walk found the listeners
    return ports


def test_default_ports_are_those_of_the_shipped_config() -> None:
    shipped, _ = load_settings(str(REPO / CONFIG))
    assert {
        getattr(shipped, f.name) for f in dataclasses.fields(Settings) if f.name.endswith("_port")
    } - {None} == default_ports()


def test_base_is_python_slim(parsed: tuple[Command, ...], final: list[Command]) -> None:
    assert final[0].value[0].startswith("python:3.11-slim")
    python_stages = [s for s in stages(parsed) if s[0].value[0].startswith("python:")]
    # The venv copied across stages was built by the same interpreter.
    assert {s[0].value[0] for s in python_stages} == {final[0].value[0]}


def test_every_default_port_is_exposed(final: list[Command]) -> None:
    exposed: set[int] = set()
    for command in final:
        if command.cmd == "EXPOSE":
            for item in command.value:
                port, _, proto = item.partition("/")
                assert proto in ("", "tcp"), item  # every listener is TCP
                exposed.add(int(port))
    assert exposed == default_ports()


def test_healthcheck_asks_health_on_the_http_port(final: list[Command]) -> None:
    check = only(final, "HEALTHCHECK")
    assert check.value[0] == "CMD" and check.json, check.original
    m = HEALTH_URL.search(" ".join(check.value[1:]))
    assert m, check.original
    assert int(m[1]) == Settings().http_port
    # The request gives up before Docker does, so a hung server reads as unhealthy, not killed.
    flags = dict(f.removeprefix("--").split("=", 1) for f in check.flags)
    waits = re.search(r"timeout=(\d+)\)", " ".join(check.value))
    assert waits and flags["timeout"].endswith("s"), check.original
    assert int(waits[1]) < int(flags["timeout"][:-1])


def test_runs_as_a_user_that_is_not_root(final: list[Command]) -> None:
    users = [c for c in final if c.cmd == "USER"]
    assert users, "no USER: the container would run as root"
    user, _, group = users[-1].value[0].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0")
    # Numeric (Kubernetes' runAsNonRoot needs it), and the image creates that uid and gid.
    runs = " ".join(c.value[0] for c in final if c.cmd == "RUN")
    assert re.search(rf"useradd\b[^&;]*--uid {user}\b", runs), runs
    if group:
        assert re.search(rf"groupadd\b[^&;]*--gid {group}\b", runs), runs


def test_cmd_runs_twistd_wcs_with_the_copied_config(final: list[Command]) -> None:
    cmd = only(final, "CMD")
    assert cmd.json, "the exec form, so that twistd gets SIGTERM itself"
    assert cmd.value[:-1] == ("twistd", "-n", "--pidfile=", "wcs", "--config")
    assert (None, (CONFIG,), cmd.value[-1]) in copies(final)
    assert not any(c.cmd == "ENTRYPOINT" for c in final)


def test_twistd_comes_from_the_venv_built_in_the_first_stage(
    parsed: tuple[Command, ...], final: list[Command]
) -> None:
    path = env_of(final)["PATH"].split(":")
    venv = str(PurePosixPath(path[0]).parent)
    build = stages(parsed)[0]
    name = build[0].value[2]  # FROM image AS name
    assert (name, (venv,), venv) in copies(final)
    assert any(c.cmd == "RUN" and f"{venv}/bin/pip install" in c.value[0] for c in build)


def test_the_demo_pages_find_the_websdk(parsed: tuple[Command, ...], final: list[Command]) -> None:
    target = env_of(final)[WEBSDK_ENV]
    websdk = next(s for s in stages(parsed) if s[0].value[1:] == ("AS", "websdk"))
    workdir = only(websdk, "WORKDIR").value[0]
    source = str(PurePosixPath(workdir) / WEBSDK_PACKAGE.as_posix())
    assert ("websdk", (source,), target) in copies(final)


# --- .dockerignore -----------------------------------------------------------------------------


def ignore_patterns() -> list[tuple[bool, str]]:
    """(exclude?, pattern) in file order; comments and blank lines skipped."""
    out = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        out.append((not negated, line.lstrip("!").strip("/")))
    return out


def excluded(path: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders wins
    (`*` does not cross `/`; `**` does)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for exclude, pattern in patterns:
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, p) for p in prefixes):
            verdict = exclude
    return verdict


def test_ignore_matcher() -> None:
    patterns = [(True, "*"), (False, "wcs"), (True, "**/__pycache__"), (False, "a/b.txt")]
    assert excluded("tests/unit/test_x.py", patterns)
    assert not excluded("wcs/rest/openapi.json", patterns)
    assert excluded("wcs/rest/__pycache__/x.pyc", patterns)
    assert not excluded("a/b.txt", patterns)
    assert excluded("a/c.txt", patterns)


def tracked_files() -> list[str]:
    return (
        subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
        )
        .stdout.decode()
        .split("\0")
    )


def test_dockerignore_keeps_what_the_build_copies(parsed: tuple[Command, ...]) -> None:
    patterns = ignore_patterns()
    sources = [src for s in stages(parsed) for o, srcs, _ in copies(s) if o is None for src in srcs]
    needed = [
        f
        for f in tracked_files()
        if any(f == s or f.startswith(s.rstrip("/") + "/") for s in sources)
    ]
    assert "wcs/rest/openapi.json" in needed and "twisted/plugins/wcs_plugin.py" in needed
    assert [f for f in needed if excluded(f, patterns)] == []


@pytest.mark.parametrize(
    "path",
    [".git/config", ".venv/bin/python", "node_modules/x/package.json", "tests/unit/test_rest.py",
     "bench/scale.py", "tls/server.key", "snapshots/cam1/000030.png", "wcs/__pycache__/tap.pyc",
     "twisted/plugins/dropin.cache"],
)  # fmt: skip
def test_dockerignore_leaves_the_rest_out(path: str) -> None:
    assert excluded(path, ignore_patterns())
