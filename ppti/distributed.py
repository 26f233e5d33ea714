"""Data-parallel context, read once: rank, world size, who writes files.

Under `python -m paddle.distributed.launch` every process runs the same script; rank 0 alone logs and writes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import paddle
import paddle.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    world_size = dist.get_world_size()
    if world_size > 1:
        dist.init_parallel_env()
    return DistContext(rank=dist.get_rank(), world_size=world_size)


def wrap_data_parallel(model, ctx: DistContext):
    """paddle.DataParallel over the model when several ranks run (it all-reduces only trainable parameters)."""
    return paddle.DataParallel(model) if ctx.enabled else model


def unwrap(model):
    return model._layers if isinstance(model, paddle.DataParallel) else model


def no_sync(model, skip_sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps."""
    if skip_sync and isinstance(model, paddle.DataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
