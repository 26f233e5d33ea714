"""Every command line the documentation shows parses with the real parser of that command.

Commands are read from README.md, README_zh.md, docs/*.md and docs/zh/*.md: the lines of ```bash (or unlabelled)
code blocks, with `\\` continuations joined and `&&`/`;`/`|` chains split, and inline code spans that start with
`python`. Each `python [-u] SCRIPT.py ARGS`, `python -m paddle.distributed.launch ... SCRIPT.py ARGS` and console
script (`ppti-...`, from pyproject.toml) is parsed by the script's own argparse parser: the trainer's
`ppti.config.build_parser()`, and for tools/ and benchmarks/ the parser their `build_parser`/`parse_args`/`main`
builds, stopped right after argparse has parsed (no model loads, no file is read or written). So a renamed or
removed flag, a wrong choice or a renamed script fails here instead of in a user's terminal; a deprecated old name
(which still parses, with a note) fails too, so the docs show the current names.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", REPO / "README_zh.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "docs" / "zh").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
OPERATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {">", ">>", "<", ">&", "<&", "2>", "&>"}
LAUNCH = "paddle.distributed.launch"
# Scripts run as plain programs without argparse: their positional arguments are the whole interface.
PLAIN_SCRIPTS = {"docs/quickstart_figure.py": 2}


@dataclass(frozen=True)
class Command:
    where: str  # "docs/sdxl.md:12"
    argv: tuple[str, ...]  # e.g. ("python", "-u", "train_textual_inversion.py", "--config", ...)

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


# --- reading the commands out of the markdown ------------------------------------------------------------------

def _shell_words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _simple_commands(text: str) -> list[list[str]]:
    """`a && b; c | d > f` -> [[a], [b], [c], [d]] (redirections dropped, env assignments kept out)."""
    commands, current, skip_next = [], [], False
    for word in _shell_words(text):
        if skip_next:
            skip_next = False
        elif word in OPERATORS:
            commands.append(current)
            current = []
        elif word in REDIRECTS or re.fullmatch(r"\d*[<>]+&?", word):
            skip_next = True  # the redirection's target
        else:
            current.append(word)
    commands.append(current)
    out = []
    for words in commands:
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # FOO=bar python ...
            words = words[1:]
        if words:
            out.append(words)
    return out


def _is_python(words: list[str]) -> bool:
    return bool(words) and (words[0] in ("python", "python3") or words[0].startswith("ppti-"))


def extract_commands(path: Path) -> list[Command]:
    rel = path.relative_to(REPO)
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Command] = []
    fence_lang = None  # None outside a fence
    pending, pending_line = "", 0
    prose: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence_lang = stripped[3:].strip().lower() if fence_lang is None else None
            continue
        if fence_lang is None:
            prose.append((number, line))
            continue
        if fence_lang not in SHELL_FENCES:
            continue
        text = re.sub(r"^\$ ", "", stripped)
        if not pending:
            pending_line = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        pending += text
        for words in _simple_commands(pending):
            if _is_python(words):
                found.append(Command(f"{rel}:{pending_line}", tuple(words)))
        pending = ""
    # inline code spans in prose (they may wrap onto the next line)
    text = "\n".join(line for _, line in prose)
    starts = [number for number, _ in prose]
    for match in re.finditer(r"`([^`]+)`", text):
        span = " ".join(match.group(1).split())
        if re.match(r"(python3?|ppti-[a-z-]+) ", span):
            line_number = starts[text.count("\n", 0, match.start())]
            for words in _simple_commands(span):
                if _is_python(words):
                    found.append(Command(f"{rel}:{line_number}", tuple(words)))
    return found


def all_commands() -> list[Command]:
    return [command for path in DOC_FILES for command in extract_commands(path)]


# --- parsing one command with its program's real parser ------------------------------------------------------

class _Parsed(BaseException):
    """Raised right after argparse parsed, so that nothing after parsing (loading, checking files) runs.
    A BaseException, so that a tool's own `except Exception` cannot swallow it."""


@contextlib.contextmanager
def _stop_after_parsing():
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(real_parse_args(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args):
        yield


def _console_scripts() -> dict[str, str]:
    """`ppti-convert` -> `ppti.tools.convert:main`, from pyproject.toml (none if there is no pyproject yet)."""
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        return {}
    import tomllib

    return tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("scripts", {})


def _load_script_module(script: str):
    """tools/convert.py -> the module (imported as tools.convert when tools/ is a package)."""
    path = REPO / script
    dotted = script[:-3].replace("/", ".")
    if (path.parent / "__init__.py").exists():
        return importlib.import_module(dotted)
    spec = importlib.util.spec_from_file_location(f"_docs_cmd_{dotted.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse_with(entry, argv: list[str]) -> str | None:
    """Run `entry(argv)` until argparse has parsed; None if the arguments were accepted, else the refusal."""
    stderr = io.StringIO()
    try:
        with _stop_after_parsing(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            entry(argv)
    except _Parsed:
        # a deprecated name still parses (tools print "note: --old is deprecated ... use --new"); docs show the new one
        notes = [line for line in stderr.getvalue().splitlines() if "deprecated" in line]
        return "; ".join(notes) or None
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            return None
        return stderr.getvalue().strip() or f"exit code {exc.code}"
    except Exception as exc:  # the trainer's ConfigError, check_config's CheckFailed, ...
        return f"{type(exc).__name__}: {exc}"
    return "the command returned without parsing its arguments (is it still an argparse command?)"


def _trainer_entry(argv: list[str]) -> None:
    from ppti.config import build_parser

    build_parser().parse_args(argv)


def _module_entry(module):
    for name in ("build_parser", "parse_args", "main"):
        function = getattr(module, name, None)
        if callable(function):
            if name == "build_parser":
                return lambda argv: function().parse_args(argv)
            return function
    raise AssertionError(f"{module.__name__} has no build_parser, parse_args or main")


def program_and_args(argv: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """("python", "-u", "-m", "paddle.distributed.launch", "--gpus", "0,1", "x.py", "--a") -> ("x.py", ["--a"]);
    a console script -> ("ppti-...", args); (None, []) for python -m pip/venv/pytest and other programs."""
    words = list(argv)
    if words[0].startswith("ppti-"):
        return words[0], words[1:]
    words = words[1:]
    while words and words[0] in ("-u", "-B"):
        words = words[1:]
    if words[:1] == ["-m"]:
        if words[1:2] != [LAUNCH]:
            return None, []  # python -m pip / venv / pytest: not ours
        words = words[2:]
        while words and not words[0].endswith(".py"):  # the launcher's own options
            words = words[1:]
    return (words[0], words[1:]) if words else (None, [])


def check_command(command: Command) -> str | None:
    """None if the documented command parses, else why not."""
    program, argv = program_and_args(command.argv)
    if program is None:
        return None if "-m" in command.argv and LAUNCH not in command.argv else "no script to run"
    if program.startswith("ppti-"):
        target = _console_scripts().get(program)
        if target is None:
            return f"{program} is not a console script of pyproject.toml"
        module_name, _, function = target.partition(":")
        if module_name == "ppti.cli":
            return _parse_with(_trainer_entry, argv)
        return _parse_with(getattr(importlib.import_module(module_name), function), argv)
    if not program.endswith(".py"):
        return f"expected a script path, got {program!r}"
    if not (REPO / program).is_file():
        return f"{program}: no such script in the repository"
    if program in PLAIN_SCRIPTS:
        expected = PLAIN_SCRIPTS[program]
        return None if len(argv) == expected else f"{program} takes {expected} arguments, got {len(argv)}"
    if program == "train_textual_inversion.py":
        problem = _parse_with(_trainer_entry, argv)
        if problem is None and "--config" in argv:
            config = argv[argv.index("--config") + 1]
            if config.startswith("configs/") and not (REPO / config).is_file():
                return f"--config {config}: no such file in the repository"
        return problem
    if program == "tools/check_config.py" and argv[:1] == ["serve"]:
        return None  # reads JSON lines from stdin; no flags
    return _parse_with(_module_entry(_load_script_module(program)), argv)


# --- the tests --------------------------------------------------------------------------------------------------

COMMANDS = all_commands()


def test_commands_are_found_in_every_kind_of_place():
    """The extractor sees the trainer (plain, continued over lines, under the launcher), the tools and benchmarks, in
    both READMEs and in docs/ and docs/zh/: an extractor that silently found nothing would pass everything."""
    programs = {program_and_args(c.argv)[0] for c in COMMANDS}
    for expected in ("train_textual_inversion.py", "tools/generate.py", "tools/evaluate.py", "tools/convert.py",
                     "tools/selfcheck.py", "tools/webui.py", "tools/make_tiny_model.py", "tools/judge_grid.py",
                     "tools/check_config.py", "tools/make_toy_world.py", "benchmarks/bench_train.py",
                     "benchmarks/concept_recovery.py"):
        assert expected in programs, f"no documented command runs {expected}"
    wheres = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "README_zh.md"} <= wheres
    assert any(w.startswith("docs/zh/") for w in wheres) and any(w.startswith("docs/") for w in wheres)
    assert any(LAUNCH in c.argv for c in COMMANDS), "no multi-card launch command found"
    cat_toy = [c for c in COMMANDS if c.where.startswith("README.md") and "--scale_lr" in c.argv]
    assert cat_toy and "--output_dir=textual_inversion_cat" in cat_toy[0].argv, "continued lines were not joined"


def test_the_readmes_show_the_same_commands():
    """README.md and README_zh.md stay in step: the same command lines, in the same order."""
    def argvs(name):
        return [c.argv for c in COMMANDS if c.where.split(":")[0] == name]

    assert argvs("README.md") == argvs("README_zh.md")


def test_each_docs_page_has_a_chinese_twin_with_the_same_commands():
    """docs/X.md and docs/zh/X.md stay in step (the order may differ: the Chinese page may show its example first)."""
    for page in sorted((REPO / "docs").glob("*.md")):
        twin = REPO / "docs" / "zh" / page.name
        assert twin.is_file(), f"docs/{page.name} has no docs/zh/{page.name}"
        english = sorted(c.argv for c in extract_commands(page))
        chinese = sorted(c.argv for c in extract_commands(twin))
        assert english == chinese, f"docs/{page.name} and docs/zh/{page.name} show different commands"


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses(command):
    problem = check_command(command)
    assert problem is None, f"{command}\n  -> {problem}"


@pytest.mark.parametrize("line, refusal", [
    ("python -u train_textual_inversion.py --config configs/demo.yaml --max_steps 10", "max_steps"),
    ("python -u train_textual_inversion.py --config configs/nope.yaml", "configs/nope.yaml"),
    ("python tools/generate.py --model tiny-sd --prompt x -o a.png --n_images 2", "n_images"),
    ("python tools/convert.py out --to onnx", "onnx"),
    ("python -m paddle.distributed.launch --nproc_per_node 2 train_textual_inversion.py --resolutoin 64", "resolutoin"),
    ("python tools/no_such_tool.py --x", "no such script"),
    ("python benchmarks/bench_train.py --size huge", "huge"),
    ("python tools/generate.py --model tiny-sd --embeddings r --prompt x -o a.png --steps 25", "deprecated"),
])
def test_a_wrong_flag_in_a_documented_command_fails(line, refusal):
    """The check refuses what the real parser refuses (a renamed flag, a wrong choice, a missing script), and a
    deprecated old name, which still parses but should not be what the docs teach."""
    [words] = _simple_commands(line)
    problem = check_command(Command("example", tuple(words)))
    assert problem is not None and refusal in problem, problem


def test_extraction_of_continuations_chains_and_inline_spans(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `python tools/convert.py a --to\n  torch` then:\n\n"
        "```bash\n"
        "export A=1\n"
        "python -u train_textual_inversion.py \\\n  --max_train_steps 3 \\\n  --seed 1   # a comment\n"
        ". .venv/bin/activate && python tools/selfcheck.py --nproc 2 > log.txt\n"
        "```\n\n"
        "```python\npython = 1\n```\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    argvs = [c.argv for c in extract_commands(page)]
    assert argvs == [
        ("python", "-u", "train_textual_inversion.py", "--max_train_steps", "3", "--seed", "1"),
        ("python", "tools/selfcheck.py", "--nproc", "2"),
        ("python", "tools/convert.py", "a", "--to", "torch"),
    ]


def _github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped (CJK characters kept), spaces -> hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.*)", line)):
            anchors.add(_github_anchor(m.group(1)))
    return anchors


def test_links_between_the_readmes_and_docs_resolve():
    """Every relative link (file and #anchor) in the READMEs and docs/ points at something that exists, and every
    docs/ page is linked from both READMEs (the topics that moved out of them stay reachable)."""
    broken = []
    for page in DOC_FILES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
    for readme, folder in (("README.md", "docs"), ("README_zh.md", "docs/zh")):
        text = (REPO / readme).read_text(encoding="utf-8")
        unlinked = [p.name for p in sorted((REPO / folder).glob("*.md")) if f"]({folder}/{p.name}" not in text]
        assert not unlinked, f"{readme} does not link {folder}/: {unlinked}"
