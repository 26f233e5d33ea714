"""The Compare tab's evaluation: what tools/evaluate.py left in RUN_DIR/evaluation/, and the command that writes it.

The page's environment cannot import Paddle (nor ppti.evaluate), so scores.json is read here as the data it is:
`{"recommended_step": N, "rows": [{"step", "image_similarity", "text_similarity", "eval_loss", "norm", "drift",
"file"}, ...]}` (ppti/evaluation/scores.py writes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from ppti import runfiles  # (standard library only: the page cannot import Paddle)

from .workspace import WorkspaceError

COLUMNS = ("step", "image_similarity", "text_similarity", "eval_loss", "norm", "drift", "file")
EVALUATE_TIMEOUT = 4 * 3600  # every saved step x (reconstruction + edit prompts) x images, on CPU if need be


@dataclass(frozen=True)
class Evaluation:
    run_dir: Path
    recommended_step: Optional[int]
    rows: list[dict]
    plot: Optional[Path]  # evaluation/scores.png
    contact_sheet: Optional[Path]  # evaluation/contact_sheet.png

    @property
    def recommended(self) -> Optional[dict]:
        return next((r for r in self.rows if r["step"] == self.recommended_step), None)

    def load_line(self) -> Optional[str]:
        """The line that loads the recommended file: the one tools/evaluate.py prints (both use ppti.runfiles)."""
        row = self.recommended
        return runfiles.load_line(self.run_dir / row["file"]) if row else None


def read_evaluation(run_dir: Path) -> Optional[Evaluation]:
    """The run's evaluation, None if it has none; WorkspaceError (one line) if scores.json is not what evaluate.py
    writes."""
    folder = run_dir / runfiles.EVALUATION_DIR
    path = folder / runfiles.SCORES_JSON
    if not path.is_file():
        return None
    redo = "press Evaluate to write it again"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WorkspaceError(f"{path}: not readable ({str(exc).splitlines()[0]}); {redo}") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    recommended = data.get("recommended_step") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and _is_int(r.get("step")) for r in rows) \
            or not (recommended is None or _is_int(recommended)):
        raise WorkspaceError(f"{path}: not a tools/evaluate.py scores file (expected recommended_step and rows "
                             f"with a step each); {redo}")
    for row in rows:  # the file names are shown and joined to the run folder: plain names only
        name = str(row.get("file", ""))
        if not name or Path(name).name != name or name in (".", ".."):
            raise WorkspaceError(f"{path}: file {name!r} of step {row['step']} is not a file name of the run; {redo}")
    picture = folder / runfiles.SCORES_PLOT
    sheet = folder / runfiles.CONTACT_SHEET
    return Evaluation(run_dir, recommended, rows, picture if picture.is_file() else None,
                      sheet if sheet.is_file() else None)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def scores_frame(evaluation: Optional[Evaluation]) -> pd.DataFrame:
    """The table the page shows: one row per scored file, the recommended one starred."""
    columns = ["", *COLUMNS]
    if evaluation is None:
        return pd.DataFrame(columns=columns)
    records = []
    for row in sorted(evaluation.rows, key=lambda r: r["step"]):
        values = [_cell(row.get(c)) for c in COLUMNS]
        records.append(["★" if row["step"] == evaluation.recommended_step else "", *values])
    return pd.DataFrame(records, columns=columns)


def _cell(value):
    return round(value, 4) if isinstance(value, float) else value


def evaluate_args(run_dir: Path, model: str, clip_model: Optional[str], num_images: int,
                  num_inference_steps: int) -> list[str]:
    """tools/evaluate.py's arguments for the run (outputs in RUN_DIR/evaluation/, its default)."""
    args = [str(run_dir), "--model", model, "--num_images", str(int(num_images)),
            "--num_inference_steps", str(int(num_inference_steps))]
    return args + (["--clip_model", clip_model] if clip_model else [])
