"""Test-only: record what paddle.DataParallel communicates for a real ppti run, on every rank.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/dist_scripts/comm_probe.py OUT_DIR [train flags]

Builds the run exactly as training does (`ppti.train.setup`) while recording
  - every tensor broadcast while DataParallel wraps the text encoder (its one-off parameter/buffer sync), and
  - the parameters handed to DataParallel's gradient reducer: the reducer all-reduces the gradients of these
    tensors and of nothing else (paddle/distributed/parallel.py: `core.EagerReducer(trainable_parameters, ...)`),
then writes OUT_DIR/rank-R.json with what a test needs to compare them against.
"""

import json
import sys
from pathlib import Path

import paddle
import paddle.distributed as dist
import paddle.distributed.parallel as parallel

from ppti.atomic import atomic_write_text
from ppti.config import parse_config
from ppti.distributed import init_distributed
from ppti.train import setup


def record_communication() -> dict:
    """Wrap the two calls DataParallel makes; returns the dict they fill in."""
    seen: dict = {"broadcast_numels": [], "reducer_param_shapes": []}
    real_broadcast, real_reducer = dist.broadcast, parallel.core.EagerReducer

    def broadcast(tensor, *args, **kwargs):
        seen["broadcast_numels"].append(int(tensor.numel()))
        return real_broadcast(tensor, *args, **kwargs)

    def reducer(parameters, *args, **kwargs):
        seen["reducer_param_shapes"] += [list(p.shape) for p in parameters]
        return real_reducer(parameters, *args, **kwargs)

    dist.broadcast = broadcast  # sync_params_buffers calls paddle.distributed.broadcast(...)
    parallel.core.EagerReducer = reducer  # DataParallel.init_reducer calls core.EagerReducer(...)
    return seen


def main(out_dir: str, argv: list[str]) -> None:
    ctx = init_distributed()
    seen = record_communication()
    run = setup(parse_config(argv), ctx)
    text_encoder = run.conditioning  # what DataParallel wraps (run.text_encoder is the wrapper)
    parameter_names = {name for name, _ in text_encoder.named_parameters()}
    seen.update(
        wrapped=isinstance(run.text_encoder, paddle.DataParallel),
        rows_shape=list(run.rows.rows.shape),
        embedding_matrix_shape=list(run.rows.weight.shape),
        persistable_buffer_numels=[int(v.numel()) for k, v in text_encoder.state_dict().items()
                                   if k not in parameter_names],
    )
    atomic_write_text(Path(out_dir) / f"rank-{ctx.rank}.json", json.dumps(seen))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
