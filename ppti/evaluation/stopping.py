"""--early_stopping: stop once the frozen-batch loss has converged.

The rule (after DVAR, Voronov et al. 2023, "Is this loss informative?"): keep the last W = --early_stopping_window
values of eval/loss; once W values are in, stop at the first evaluation where

    std(window) / mean(window) < --early_stopping_threshold

i.e. the loss on the frozen batch no longer changes by more than that fraction of itself over W evaluations
(W x --eval_steps optimizer steps). The frozen batch makes this meaningful: the training loss, drawn from new
examples every step, never settles that way. A resumed run starts with an empty window.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np


class EarlyStopping:
    def __init__(self, window: int, threshold: float):
        self.threshold = threshold
        self.values: deque[tuple[int, float]] = deque(maxlen=window)

    def update(self, step: int, loss: float) -> Optional[str]:
        """Record eval/loss of `step`; returns why training should stop, or None."""
        self.values.append((step, loss))
        if len(self.values) < self.values.maxlen:
            return None
        losses = np.array([v for _, v in self.values], dtype=np.float64)
        mean = losses.mean()
        spread = losses.std() / mean if mean > 0 else 0.0
        if spread >= self.threshold:
            return None
        return (f"--early_stopping: eval/loss has converged: its last {len(losses)} values (steps "
                f"{self.values[0][0]}-{step}) vary by {spread:.3%} of their mean {mean:.5g}, less than "
                f"--early_stopping_threshold {self.threshold:g}")
