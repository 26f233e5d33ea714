"""The score table of a run, the recommended step, scores.csv and scores.json.

The recommended step (a trade-off between the two CLIP scores, as in Gal et al.'s Figure 9): scale each score
to [0, 1] over the saved steps (min-max; a score equal at every step counts as 1 everywhere), then take the step
closest, in Euclidean distance, to the ideal corner (1, 1) where a step would have both the best image
similarity and the best text similarity. That point is always on the Pareto front (no other step beats it on
both scores) and sits at its knee: steps that buy a little image similarity with a lot of editability (the usual
over-fitting of late steps) or the reverse lie far from the corner. Ties go to the earlier step.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..atomic import atomic_write_text
from ..runfiles import SCORES_CSV, SCORES_JSON

COLUMNS = ("step", "image_similarity", "text_similarity", "eval_loss", "norm", "drift", "file")


@dataclass(frozen=True)
class Row:
    step: int
    image_similarity: float
    text_similarity: float
    eval_loss: float
    norm: float  # mean over the vectors
    drift: float  # mean cosine distance from the initializer
    file: str
    extra: dict = field(default_factory=dict)  # further scores (judges), by column name

    def as_dict(self) -> dict:
        return {**{c: getattr(self, c) for c in COLUMNS}, **self.extra}


def _scaled(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    return [1.0 if high == low else (v - low) / (high - low) for v in values]


def pareto_front(rows: Sequence[Row]) -> list[Row]:
    """Rows no other row beats on both scores (at least as good on both, better on one)."""
    def beaten(r: Row) -> bool:
        return any(o.image_similarity >= r.image_similarity and o.text_similarity >= r.text_similarity
                   and (o.image_similarity, o.text_similarity) != (r.image_similarity, r.text_similarity)
                   for o in rows)
    return [r for r in rows if not beaten(r)]


def recommend(rows: Sequence[Row]) -> Optional[Row]:
    """The row closest to the ideal corner of the min-max scaled (image, text) similarities (see module doc)."""
    if not rows:
        return None
    image, text = _scaled([r.image_similarity for r in rows]), _scaled([r.text_similarity for r in rows])
    distances = [math.hypot(1 - i, 1 - t) for i, t in zip(image, text)]
    return min(zip(distances, [r.step for r in rows], rows))[2]


def to_json(rows: Sequence[Row], recommended: Optional[Row]) -> str:
    return json.dumps({"recommended_step": recommended.step if recommended else None,
                       "rule": "closest to (1, 1) of the min-max scaled image/text similarities",
                       "pareto_front": [r.step for r in pareto_front(rows)],
                       "rows": [r.as_dict() for r in rows]}, indent=1, ensure_ascii=False)


def to_csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    columns = list(COLUMNS) + sorted({k for r in rows for k in r.extra})
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r.as_dict())
    return out.getvalue()


def write_tables(out_dir: Path, rows: Sequence[Row], recommended: Optional[Row]) -> list[Path]:
    paths = [out_dir / SCORES_CSV, out_dir / SCORES_JSON]
    atomic_write_text(paths[0], to_csv(rows))
    atomic_write_text(paths[1], to_json(rows, recommended))
    return paths
