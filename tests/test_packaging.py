"""pyproject.toml packages everything: every package folder and its data files, a console script per command line
(each one's --help works), and no module edits sys.path to find ppti (the install does that).

.ci/run also installs the project non-editable into a fresh venv and runs every console script's --help there."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
SCRIPTS = PYPROJECT["project"]["scripts"]


def package_folder(name: str) -> Path:
    mapped = SETUPTOOLS.get("package-dir", {})
    return REPO / mapped[name] if name in mapped else REPO / name.replace(".", "/")


def test_every_package_folder_and_data_file_is_installed():
    listed = set(SETUPTOOLS["packages"])
    found = {str(p.parent.relative_to(REPO)).replace("/", ".") for root in ("ppti", "ppti_webui")
             for p in (REPO / root).rglob("__init__.py")} | {"ppti.tools"}
    assert found == listed, f"add to / remove from [tool.setuptools] packages: {sorted(found ^ listed)}"
    data = SETUPTOOLS.get("package-data", {})
    missing = []
    for package in listed:
        folder = package_folder(package)
        for path in folder.iterdir():
            if path.is_file() and path.suffix not in (".py", ".pyc") and not any(
                    fnmatch.fnmatch(path.name, pattern) for pattern in data.get(package, [])):
                missing.append(str(path.relative_to(REPO)))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_a_console_script_for_the_trainer_and_every_tool():
    tools = sorted(p.stem for p in (REPO / "tools").glob("*.py") if '__name__ == "__main__"' in p.read_text())
    expected = {"ppti-train": "ppti.cli:main",
                **{f"ppti-{name.replace('_', '-')}": f"ppti.tools.{name}:main" for name in tools}}
    assert SCRIPTS == expected
    for target in SCRIPTS.values():  # what the generated script imports and calls
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_installed_console_script_shows_its_help(script):
    """The scripts of this venv (`pip install -e .`, which requirements.txt does) run from any folder."""
    path = shutil.which(script, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{script} is not installed in this venv: pip install -e .")
    done = subprocess.run([path, "--help"], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout and "Traceback" not in done.stderr, done.stderr[-2000:]


def _edits_sys_path(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            return True
    return False


def test_no_sys_path_edits_outside_the_test_configuration():
    """Scripts and the library find ppti because it is installed; only tests/ may arrange imports for itself."""
    files = [REPO / "train_textual_inversion.py", *(REPO / "docs").rglob("*.py"),
             *(REPO / "tests" / "dist_scripts").glob("*.py")]
    for folder in ("ppti", "ppti_webui", "tools", "benchmarks", "scripts"):
        files += (REPO / folder).rglob("*.py")
    offenders = [str(p.relative_to(REPO)) for p in files if _edits_sys_path(p)]
    assert not offenders, offenders
