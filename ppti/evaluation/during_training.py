"""What the training loop calls every --eval_steps: frozen-batch loss, embedding norm/drift, early stopping.

Every rank computes the frozen-batch loss (same batch, same rows) and takes rank 0's value, so all ranks take the
early-stopping decision together. Rank 0 alone logs and warns.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from ..distributed import from_main_rank
from ..runfiles import ROW_FILE_SUFFIXES
from .embedding import EmbeddingWatch, vocabulary_median_norm
from .frozen import FrozenBatch
from .stopping import EarlyStopping

log = logging.getLogger("ppti")


class TrainingEvaluation:
    def __init__(self, config, stream, row_layers, ctx, reporter):
        """`row_layers`: the tokens.PlaceholderEmbedding of each text encoder (its `weight` keeps the initial rows of
        the placeholders); SDXL's second one is logged as embedding/norm_2, embedding/drift_2."""
        self.every, self.ctx, self.reporter, self.row_layers = config.eval_steps, ctx, reporter, list(row_layers)
        self.frozen = FrozenBatch(stream, config.eval_batch_size) if self.every else None
        self.watches = [self.watch_of(layer, ROW_FILE_SUFFIXES[i]) for i, layer in enumerate(self.row_layers)]
        self.median_norm = self.watches[0].median_norm
        self.stopping = (EarlyStopping(config.early_stopping_window, config.early_stopping_threshold)
                         if config.early_stopping else None)
        if self.every and ctx.is_main:
            log.info("evaluation every %d steps: eval/loss on a frozen batch of %d examples (timesteps %s), "
                     "embedding/norm (vocabulary median %.4g), embedding/drift%s", self.every, self.frozen.size,
                     self.frozen.timesteps.tolist(), self.median_norm,
                     f"; --early_stopping over {config.early_stopping_window} evaluations" if self.stopping else "")

    def watch_of(self, layer, suffix: str) -> EmbeddingWatch:
        weight, ids = layer.weight.numpy(), layer.placeholder_ids
        return EmbeddingWatch(weight[ids].astype(np.float32), vocabulary_median_norm(weight, ids), self.reporter,
                              warn=self.ctx.is_main, suffix=suffix)

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def __call__(self, step: int, loss_fn: Callable) -> Optional[str]:
        """Evaluate after optimizer step `step`; returns why training should stop early, or None."""
        # float32 on every rank count: N processes log exactly what 1 process logs
        loss = from_main_rank(float(np.float32(self.frozen.loss(loss_fn))), self.ctx)
        self.reporter.scalar("eval/loss", loss, step)
        for watch, layer in zip(self.watches, self.row_layers):
            watch.update(layer.rows.numpy(), step)
        return self.stopping.update(step, loss) if self.stopping else None
