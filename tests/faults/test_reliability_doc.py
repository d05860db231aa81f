"""docs/reliability.md stays true to the suite: every test it names exists, every variable it
names is a setting, and every promise it marks pending is a strict xfail (and no other is)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.faults.targets import Settings

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
SETTINGS = {name.upper() for name in Settings.model_fields}


def _strict_xfail(decorator: str) -> bool:
    if "xfail" not in decorator:
        return False
    assert "strict=True" in decorator, f"an xfail that is not strict: {decorator}"
    return True


def _tests_in(path: Path) -> dict[str, bool]:
    """Test function name -> whether it carries an xfail marker."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name: any(_strict_xfail(ast.unparse(d)) for d in node.decorator_list)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


SUITE = {
    name: xfail
    for path in sorted((REPO / "tests" / "faults").glob("test_*.py"))
    for name, xfail in _tests_in(path).items()
}


def test_every_test_file_and_test_named_exists() -> None:
    for path in set(re.findall(r"`(tests/[\w/]+\.py)", DOC)):
        assert (REPO / path).exists(), path
    for name in set(re.findall(r"\b(test_\w+)`", DOC)) - {"test_isolation", "test_ws_admission"}:
        assert name in SUITE, name


def test_every_variable_named_is_a_setting() -> None:
    for variable in set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", DOC)):
        assert variable in SETTINGS, variable


def test_pending_promises_are_exactly_the_xfails() -> None:
    # The doc's convention: **pending** (`test_name`, `test_other`).
    pending = {
        name
        for names in re.findall(r"\*\*pending\*\*\s*\(([^)]*)\)", DOC)
        for name in re.findall(r"\b(test_\w+)`", names)
    }
    xfails = {name for name, xfail in SUITE.items() if xfail}
    assert pending == xfails
