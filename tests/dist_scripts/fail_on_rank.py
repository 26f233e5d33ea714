"""Test-only: train_textual_inversion.py with a failure injected on one rank.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/dist_scripts/fail_on_rank.py RANK WHEN [train flags]

WHEN = data: on RANK, --train_data_dir names a folder that does not exist (a machine without the data), so that
             rank stops during setup while the others load the model and then wait for it;
WHEN = step: RANK raises in its 3rd micro-step, while the other ranks wait for it in the gradient all-reduce;
WHEN = nan:  RANK's loss (alone) is NaN in its 3rd micro-step;
WHEN = signal: RANK (alone) receives SIGTERM in its 3rd micro-step (the others must stop after the same step);
WHEN = kill: RANK is killed (SIGKILL, as the out-of-memory killer does) in its 3rd micro-step: it says nothing.
"""

import os
import signal
import sys
from pathlib import Path

import ppti.train
from ppti.cli import main

FAILING_MICRO_STEP = 3


def inject(when: str, argv: list[str]) -> list[str]:
    """The arguments this rank runs with, after arranging its failure."""
    if when == "data":
        i = argv.index("--train_data_dir")
        return argv[: i + 1] + [str(Path(argv[i + 1]) / "missing-on-this-rank")] + argv[i + 2:]
    real_loss, calls = ppti.train.micro_step_loss, [0]

    def failing_loss(run, batch):
        calls[0] += 1
        if calls[0] != FAILING_MICRO_STEP:
            return real_loss(run, batch)
        if when == "nan":
            return real_loss(run, batch) * float("nan")
        if when == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if when == "signal":
            os.kill(os.getpid(), signal.SIGTERM)
            return real_loss(run, batch)
        raise RuntimeError("injected failure")

    ppti.train.micro_step_loss = failing_loss
    return argv


if __name__ == "__main__":
    failing_rank, when, args = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if int(os.environ.get("PADDLE_TRAINER_ID", "0")) == failing_rank:
        args = inject(when, args)
    sys.exit(main(args))
