"""No module imports from a test module: shared fakes and fixtures live in modules of their own
(tests/unit/fakes.py, camera.py, rest_client.py...), so each test file can change on its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# bench/ reuses the integration fixtures, so it is held to the same rule.
CHECKED = ("tests", "bench")
TEST_MODULE = re.compile(r"^tests\.(unit|integration)\.test_[^.]*$")


def package_of(path: Path) -> list[str]:
    """The dotted package a file belongs to (a package's __init__ belongs to itself)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return parts[:-1]


def imported_modules(source: str, package: list[str]) -> list[str]:
    """Every module an import statement in `source` may name, relative imports resolved against
    `package`. `from a import b` names both a and a.b, since b may be a module."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            if node.module:
                base = [*base, node.module]
            module = ".".join(base)
            found += [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return found


def imports_of_test_modules(source: str, package: str = "tests.unit") -> list[str]:
    return [m for m in imported_modules(source, package.split(".")) if TEST_MODULE.match(m)]


@pytest.mark.parametrize(
    "source",
    [
        "from tests.unit.test_rest import Api",
        "import tests.integration.test_hooks",
        "from tests.unit import test_rest",
        "from .test_rest import Api",
        "from . import test_rest",
        "def f():\n    from tests.unit.test_rtsp_client import Cam",
    ],
)
def test_an_import_from_a_test_module_is_found(source: str) -> None:
    assert imports_of_test_modules(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "from tests.unit.fakes import FakeReactor",
        "from tests.unit import fakes, camera",
        "from .rest_client import Api",
        "from tests.integration.conftest import Server",
        "from tests.fuzz import target",
        "import test_helpers",
    ],
)
def test_an_import_from_a_shared_module_is_allowed(source: str) -> None:
    assert imports_of_test_modules(source) == []


def test_no_module_imports_from_a_test_module() -> None:
    files = sorted(f for top in CHECKED for f in (REPO / top).rglob("*.py"))
    assert len(files) > 40  # the walk found the tests
    offenders = {
        str(f.relative_to(REPO)): found
        for f in files
        if (found := imports_of_test_modules(f.read_text(), ".".join(package_of(f))))
    }
    assert offenders == {}, "move what these share to tests/unit/fakes.py or a module beside it"
