"""Norm and drift of the trained vectors, and the two warnings they support.

    norm   the L2 norm of each trained vector
    drift  its cosine distance from the initializer's embedding (1 - cos): 0 at the start, 1 when orthogonal

SDXL has one row set per text encoder: the first encoder's (text_encoder) rows are logged under the names above,
the second's (text_encoder_2) with the suffix "_2" (embedding/norm_2, embedding/drift_2), as outputs.py names its
files (learned_embeds_2).

Warnings (each once per run and encoder): the embedding has not moved (relative change below NOT_MOVED after an
evaluation: learning rate too low, or the placeholder is missing from the prompts), and its norm is more than
NORM_FACTOR times the vocabulary's median norm (textual-inversion vectors that grow far beyond ordinary words drown
out the rest of the prompt: the usual over-fitting).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("ppti")

NOT_MOVED = 1e-3  # ||rows - initial|| / ||initial||, per vector
NORM_FACTOR = 3.0  # warn above this multiple of the vocabulary's median norm


def norms(rows: np.ndarray) -> np.ndarray:
    """(n,) L2 norm of each vector of rows (n, D)."""
    return np.linalg.norm(rows.astype(np.float64), axis=-1)


def drift(rows: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """(n,) cosine distance 1 - cos(rows[i], initial[i])."""
    rows, initial = rows.astype(np.float64), initial.astype(np.float64)
    cos = (rows * initial).sum(-1) / np.maximum(norms(rows) * norms(initial), 1e-12)
    return 1.0 - cos


def vocabulary_median_norm(weight: np.ndarray, exclude_ids) -> float:
    """The median L2 norm of the rows of an embedding matrix (V, D), the placeholder rows left out."""
    keep = np.ones(len(weight), dtype=bool)
    keep[list(exclude_ids)] = False
    return float(np.median(norms(weight[keep])))


class EmbeddingWatch:
    """Logs norm/drift to the reporter and warns (once each) about an embedding that does not move or grows."""

    def __init__(self, initial: np.ndarray, median_norm: float, reporter, warn: bool, suffix: str = ""):
        """`suffix`: appended to the tag names ("_2" for SDXL's text_encoder_2 rows)."""
        self.initial, self.median_norm, self.reporter, self.warn = initial, median_norm, reporter, warn
        self.suffix = suffix
        self.warned: set[str] = set()

    def update(self, rows: np.ndarray, step: int) -> tuple[float, float]:
        """Log and check the rows (n, D) of `step`; returns the mean (norm, drift) over the vectors."""
        n, d = norms(rows), drift(rows, self.initial)
        norm_tag, drift_tag = f"embedding/norm{self.suffix}", f"embedding/drift{self.suffix}"
        self.reporter.scalar(norm_tag, float(n.mean()), step)
        self.reporter.scalar(drift_tag, float(d.mean()), step)
        if len(rows) > 1:  # one curve per vector of a multi-vector placeholder
            for i in range(len(rows)):
                self.reporter.scalar(f"{norm_tag}/{i}", float(n[i]), step)
                self.reporter.scalar(f"{drift_tag}/{i}", float(d[i]), step)
        if self.warn:
            self.check(rows, n, step)
        return float(n.mean()), float(d.mean())

    def check(self, rows: np.ndarray, n: np.ndarray, step: int) -> None:
        moved = float((norms(rows - self.initial) / np.maximum(norms(self.initial), 1e-12)).max())
        if moved < NOT_MOVED and "still" not in self.warned:
            self.warned.add("still")
            log.warning("embedding/drift%s: after %d steps the embedding has barely moved (relative change %.1e): "
                        "the learning rate is too low (--learning_rate) or the placeholder is missing from the "
                        "prompts (--templates)", self.suffix, step, moved)
        if n.max() > NORM_FACTOR * self.median_norm and "norm" not in self.warned:
            self.warned.add("norm")
            log.warning("embedding/norm%s: at step %d the embedding's norm is %.3g, %.1fx the vocabulary's median "
                        "norm %.3g: it may drown out the rest of the prompt (over-fitting). Compare the saved steps "
                        "with tools/evaluate.py, or lower --learning_rate", self.suffix, step, n.max(),
                        n.max() / self.median_norm, self.median_norm)
