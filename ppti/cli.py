"""`train_textual_inversion.py` (and the `ppti-train` console script): the process's entry point. It sets up
console logging, and configuration errors and user-fixable problems become one clear line, not a traceback from
deep inside Paddle."""

from __future__ import annotations

import sys
from typing import Optional

from .config import ConfigError, parse_config
from .tool_cli import EXIT_BAD_INPUT, quiet_build_warnings

EXIT_TRAINING_FAILED = 1


def main(argv: Optional[list[str]] = None) -> int:
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    quiet_build_warnings()  # import-time noise from Paddle's build tooling, irrelevant to training
    # Paddle and ppdiffusers import slowly: only after the configuration is known to be valid.
    from .atomic import WriteError
    from .data import DataError
    from .distributed import init_distributed
    from .models import ModelError
    from .reporting import setup_console
    from .signals import TrainingInterrupted
    from .tokens import TokenError
    from .train import TrainingError, train

    try:
        ctx = init_distributed()  # (under paddle.distributed.launch: this rank joins the group)
        setup_console(ctx.is_main)  # rank 0 logs INFO, the other ranks warnings and errors only
        train(config, ctx)
    except (ConfigError, DataError, ModelError, TokenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WriteError as exc:  # a full disk, a read-only or foreign folder: the previous files are intact
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except TrainingInterrupted as exc:  # SIGINT/SIGTERM: the current step was saved
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
