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


class _DeprecatedName(argparse.Action):
    """An old flag name: stores into the new flag's destination (through `convert`), with a one-line note."""

    def __init__(self, option_strings, dest, new_name: str, convert=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_name, self.convert = new_name, convert

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.convert(values) if self.convert else values
        shown = value if isinstance(value, str) else " ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{parser.prog}: note: {option_string} is deprecated and will be removed; use {self.new_name} "
              f"{shown}", file=sys.stderr)
        setattr(namespace, self.dest, value)


def deprecated_name(parser: argparse.ArgumentParser, old: str, new: str, convert=None, choices=None) -> None:
    """Accept `old` for the flag `new` (one name per meaning across the tools): same type and destination, hidden
    from --help, and a one-line note on stderr when used. `convert` maps an old value to the new flag's (e.g. the
    old --dtype fp32 to --mixed_precision no); `choices` are the old flag's values."""
    action = parser._option_string_actions[new]
    parser.add_argument(old, dest=action.dest, action=_DeprecatedName, new_name=new, convert=convert,
                        type=action.type, nargs=action.nargs, metavar=action.metavar,
                        choices=choices if choices is not None else action.choices,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


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
