"""What the training loop calls every --eval_steps: frozen-batch loss, embedding norm/drift, early stopping.

Every rank computes the frozen-batch loss (same batch, same rows) and takes rank 0's value, so all ranks take the
early-stopping decision together. Rank 0 alone logs and warns.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from ..distributed import from_main_rank
from .embedding import EmbeddingWatch, vocabulary_median_norm
from .frozen import FrozenBatch
from .stopping import EarlyStopping

log = logging.getLogger("ppti")


class TrainingEvaluation:
    def __init__(self, config, stream, rows_layer, ctx, reporter):
        """`rows_layer`: the tokens.PlaceholderEmbedding (its `weight` keeps the initial rows of the placeholders)."""
        self.every, self.ctx, self.reporter, self.rows_layer = config.eval_steps, ctx, reporter, rows_layer
        self.frozen = FrozenBatch(stream, config.eval_batch_size) if self.every else None
        weight = rows_layer.weight.numpy()
        ids = rows_layer.placeholder_ids
        self.median_norm = vocabulary_median_norm(weight, ids)
        self.watch = EmbeddingWatch(weight[ids].astype(np.float32), self.median_norm, reporter, warn=ctx.is_main)
        self.stopping = (EarlyStopping(config.early_stopping_window, config.early_stopping_threshold)
                         if config.early_stopping else None)
        if self.every and ctx.is_main:
            log.info("evaluation every %d steps: eval/loss on a frozen batch of %d examples (timesteps %s), "
                     "embedding/norm (vocabulary median %.4g), embedding/drift%s", self.every, self.frozen.size,
                     self.frozen.timesteps.tolist(), self.median_norm,
                     f"; --early_stopping over {config.early_stopping_window} evaluations" if self.stopping else "")

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def __call__(self, step: int, loss_fn: Callable) -> Optional[str]:
        """Evaluate after optimizer step `step`; returns why training should stop early, or None."""
        # float32 on every rank count: N processes log exactly what 1 process logs
        loss = from_main_rank(float(np.float32(self.frozen.loss(loss_fn))), self.ctx)
        self.reporter.scalar("eval/loss", loss, step)
        self.watch.update(self.rows_layer.rows.numpy(), step)
        return self.stopping.update(step, loss) if self.stopping else None
