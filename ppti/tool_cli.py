"""What the tools/*.py command lines share: a parser whose refusals are one line with exit code 2, and quiet
imports. Imports no Paddle, so bad arguments are refused at once."""

from __future__ import annotations

import argparse
import sys
import warnings

EXIT_BAD_INPUT = 2


class ToolParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        """One line on stderr and exit code 2, like every other refusal of the tools."""
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def tool_parser(prog: str, doc: str) -> ToolParser:
    """A parser described by the tool's module docstring: its first line, the rest as the epilog (examples)."""
    return ToolParser(prog=prog, description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="\n".join(doc.splitlines()[1:]), allow_abbrev=False)  # (a prefix could pick a wrong flag)


def quiet_build_warnings() -> None:
    """Import-time noise from Paddle's build tooling, irrelevant to the tools."""
    warnings.filterwarnings("ignore", message="No ccache found")
    warnings.filterwarnings("ignore", message="Setuptools is replacing distutils")


def render_problems(args, positive: tuple[str, ...]) -> list[str]:
    """The checks every rendering tool makes: `positive` counts >= 1, --seed in range, --model present."""
    from pathlib import Path

    from .config import _looks_like_hub_id

    problems = [f"--{name} must be >= 1 (got {getattr(args, name)})" for name in positive if getattr(args, name) < 1]
    if args.seed is not None and not 0 <= args.seed < 2**32:
        problems.append(f"--seed must be in [0, 2**32) (got {args.seed})")
    if not Path(args.model).exists() and not _looks_like_hub_id(args.model):
        problems.append(f"--model {args.model}: no such directory")
    return problems
