"""The test tiers (tests/tiers.py) stay true to the suite: every test named there exists, every marker is registered,
and the quick tier (-m "not slow") keeps at least one test of every test file that is not slow as a whole."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import tiers

TESTS = Path(__file__).resolve().parent
REGISTERED = {line.split(":")[0] for line in tomllib.loads(
    (TESTS.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]["markers"]}


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")}


def test_every_marker_is_registered():
    used = set(tiers.BY_FILE) | set(tiers.BY_TEST) | {"slow"}
    assert used <= REGISTERED, f"register in pyproject.toml [tool.pytest.ini_options] markers: {used - REGISTERED}"
    assert set(tiers.IMPLY_SLOW) <= REGISTERED


def test_every_named_file_and_test_exists():
    """A renamed test would silently move into the quick tier: rename it in tests/tiers.py too."""
    stale = []
    for marker, files in tiers.BY_FILE.items():
        stale += [f"{marker}: {name}" for name in files if not (TESTS / name).is_file()]
    for marker, names in tiers.BY_TEST.items():
        for name in names:
            file, _, function = name.partition("::")
            if not (TESTS / file).is_file() or function not in defined_tests(TESTS / file):
                stale.append(f"{marker}: {name}")
    assert not stale, "no such test file or function (update tests/tiers.py): " + ", ".join(stale)


def test_the_quick_tier_keeps_a_test_of_every_file():
    """Whole files may be slow only for a reason listed in BY_FILE (browser, torch, ...); every other test file keeps
    at least one quick test, so the quick tier runs every module's main path."""
    whole = {name for files in tiers.BY_FILE.values() for name in files}
    empty = []
    for path in sorted(TESTS.glob("test_*.py")):
        functions = defined_tests(path)
        if path.name in whole or not functions:
            continue
        if all("slow" in tiers.markers_of(path.name, name) for name in functions):
            empty.append(path.name)
    assert not empty, f"every test of these files is slow; keep the cheapest main-path test quick: {empty}"


def test_markers_of_applies_the_tables_and_implies_slow():
    file = next(iter(tiers.BY_FILE["browser"]))
    assert {"browser", "slow"} <= tiers.markers_of(file, "test_anything")
    assert tiers.markers_of("test_no_such_file.py", "test_x") == set()
