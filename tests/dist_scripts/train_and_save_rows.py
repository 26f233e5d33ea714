"""Test-only: a real ppti training on every rank, then each rank saves the rows it holds.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/dist_scripts/train_and_save_rows.py OUT_DIR [flags]

Runs `ppti.train.run_training` (what train_textual_inversion.py runs) and writes OUT_DIR/rank-R-rows.npy, so a test
can check that every rank ends with the same embedding.
"""

import sys
from pathlib import Path

import numpy as np
import paddle.distributed as dist

from ppti.config import parse_config
from ppti.distributed import init_distributed
from ppti.reporting import setup_console
from ppti.train import run_training


def main(out_dir: str, argv: list[str]) -> None:
    config = parse_config(argv)
    ctx = init_distributed()
    setup_console(ctx.is_main)  # (as train_textual_inversion.py does)
    result = run_training(config, ctx)
    np.save(Path(out_dir) / f"rank-{dist.get_rank()}-rows.npy", result.rows)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
