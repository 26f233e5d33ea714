"""Run the trainer's checks without training: a command line, or a placeholder/initializer pair against a model.

    python tools/check_config.py config --config configs/demo.yaml --max_train_steps 10
    python tools/check_config.py placeholder --model tiny-sd --placeholder_token "<cat-toy>" --initializer_token toy
    python tools/check_config.py serve      # JSON lines: {"argv": [...]} -> {"returncode": 0|2, "message": "..."}

Prints one line, `ok: ...` (exit 0) or `error: ...` (exit 2): the same message train_textual_inversion.py would stop
with. `serve` answers many questions from one process (the tokenizer stays loaded), for the web page's
"checked as you type" fields.
"""

import argparse
import json
import sys

from ppti.preflight import CheckFailed, check_config, check_placeholder
from ppti.tool_cli import quiet_build_warnings

PROG = "check_config.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise CheckFailed(f"{PROG}: {message}")


def parse_placeholder_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog=f"{PROG} placeholder", allow_abbrev=False)
    parser.add_argument("--model", required=True, help="Model folder (as --pretrained_model_name_or_path).")
    parser.add_argument("--placeholder_token", required=True)
    parser.add_argument("--initializer_token", required=True)
    parser.add_argument("--num_vectors", type=int, default=1)
    return parser.parse_args(argv)


def answer(argv: list[str]) -> tuple[int, str]:
    """(exit code, the one line to print) for `config ...` or `placeholder ...`."""
    try:
        if argv[:1] == ["config"]:
            config = check_config(argv[1:])
            return 0, f"ok: the trainer accepts this configuration (output_dir {config.output_dir})"
        if argv[:1] == ["placeholder"]:
            args = parse_placeholder_args(argv[1:])
            return 0, "ok: " + check_placeholder(args.model, args.placeholder_token, args.initializer_token,
                                                 args.num_vectors)
        return 2, f"error: {PROG}: the first word must be config, placeholder or serve (see --help)"
    except CheckFailed as exc:
        return 2, f"error: {exc}"
    except Exception as exc:  # noqa: BLE001 - a check that broke still answers in one line, never a traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        return 2, f"error: {PROG}: the check failed ({type(exc).__name__}: {first}); the trainer would say more"


def serve() -> int:
    for line in sys.stdin:
        try:
            argv = json.loads(line)["argv"]
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            code, message = 2, f'error: {PROG} serve: each line must be {{"argv": ["placeholder", ...]}}'
        else:
            code, message = answer(argv)
        print(json.dumps({"returncode": code, "message": message}, ensure_ascii=False), flush=True)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]) or not argv:
        print(f"usage: {PROG} config|placeholder|serve [FLAG ...]\n\n{__doc__}")
        return 0 if argv else 2
    quiet_build_warnings()
    if argv == ["serve"]:
        return serve()
    code, message = answer(argv)
    print(message, file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
