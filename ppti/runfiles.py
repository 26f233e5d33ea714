"""The names of what a training run leaves in its output_dir, in one place: the trainer writes them, the tools and
the web page find them. Standard library only: the web page's environment (.venv-webui) has no Paddle and imports
this module.

    output_dir/
        learned_embeds.pdparams              the final rows (--save_format: .pdparams and/or .safetensors)
        learned_embeds-steps-N.pdparams      the rows of step N (every --save_steps)
        learned_embeds_2[-steps-N].pdparams  SDXL: the second text encoder's rows, next to each file above
        learned_embeds-best.pdparams         tools/evaluate.py --copy_best (SDXL: learned_embeds_2-best too)
        train_config.yaml, token_identifier.txt, type_of_concept.txt
        checkpoints/checkpoint-N/            full training state (ppti/checkpoint.py)
        validation/step-N.png                validation grids
        evaluation/                          tools/evaluate.py: scores.csv, scores.json, scores.png, contact_sheet.png
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

EMBEDDINGS_STEM = "learned_embeds"
# The rows of text encoder i go to learned_embeds{ROW_FILE_SUFFIXES[i]}.*: one file per text encoder, the layout
# diffusers' SDXL trainer writes (learned_embeds_2 for text_encoder_2) and ppdiffusers loads with two calls.
ROW_FILE_SUFFIXES = ("", "_2")
# An SDXL pair per text encoder, in order: (Embedding.part, the pipeline's text encoder, its tokenizer)
SDXL_ENCODERS = (("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2", "tokenizer_2"))
# Suffixes of the run's own embedding files (the trainer's --save_format), preferred first.
SAVED_SUFFIXES = (".pdparams", ".safetensors")
# What tools/evaluate.py scores: any format it reads, preferred first when a step has several.
EMBEDDING_SUFFIXES = (".pdparams", ".safetensors", ".bin", ".pt")

CONFIG_FILE = "train_config.yaml"
TOKEN_FILE = "token_identifier.txt"
CONCEPT_FILE = "type_of_concept.txt"
CHECKPOINTS_DIR = "checkpoints"
VALIDATION_DIR = "validation"
EVALUATION_DIR = "evaluation"
BEST_FILE = f"{EMBEDDINGS_STEM}-best.pdparams"
SCORES_CSV, SCORES_JSON, SCORES_PLOT, CONTACT_SHEET = "scores.csv", "scores.json", "scores.png", "contact_sheet.png"

STEP_FILE = re.compile(r"^learned_embeds-steps-(\d+)(\.\w+)$")  # the first text encoder's file of each saved step
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def embeddings_name(step: Optional[int] = None, encoder: int = 0) -> str:
    """The file stem of the rows of text encoder `encoder` at `step` (None: the final file)."""
    stem = f"{EMBEDDINGS_STEM}{ROW_FILE_SUFFIXES[encoder]}"
    return stem if step is None else f"{stem}-steps-{step}"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def validation_grid_name(step: int) -> str:
    return f"step-{step}.png"


def saved_steps(run_dir: Path, suffixes: Sequence[str] = SAVED_SUFFIXES) -> list[tuple[int, Path]]:
    """(step, file) of every learned_embeds-steps-N file in a training output_dir, by step; of a step saved in
    several formats, the first of `suffixes` (files with other suffixes are ignored)."""
    by_step: dict[int, Path] = {}
    for path in Path(run_dir).iterdir():
        match = STEP_FILE.match(path.name)
        if match and match.group(2) in suffixes:
            step = int(match.group(1))
            if step not in by_step or suffixes.index(path.suffix) < suffixes.index(by_step[step].suffix):
                by_step[step] = path
    return sorted(by_step.items())


def embeddings_file(run_dir: Path, step: Optional[int] = None,
                    suffixes: Sequence[str] = SAVED_SUFFIXES) -> Optional[Path]:
    """The run's final (or step `step`'s) first-encoder file, the first of `suffixes` present; None if absent."""
    stem = embeddings_name(step)
    return next((p for p in (Path(run_dir) / f"{stem}{s}" for s in suffixes) if p.is_file()), None)


def is_sdxl_run(run_dir: Path) -> bool:
    """An SDXL run saves a second file per step for text_encoder_2."""
    return any(Path(run_dir).glob(f"{EMBEDDINGS_STEM}{ROW_FILE_SUFFIXES[1]}*"))


def second_encoder_stem(stem: str) -> str:
    """The clip_g (text_encoder_2) file's stem next to a clip_l file's: `learned_embeds_2[-steps-N|-best]` for
    ppti's and diffusers' `learned_embeds[-steps-N|-best]`, and `X_2` for any other stem X (including names that
    merely start with `learned_embeds_`, such as `learned_embeds_cat`)."""
    if stem == EMBEDDINGS_STEM or stem.startswith(f"{EMBEDDINGS_STEM}-"):
        return f"{EMBEDDINGS_STEM}{ROW_FILE_SUFFIXES[1]}{stem[len(EMBEDDINGS_STEM):]}"
    return f"{stem}{ROW_FILE_SUFFIXES[1]}"


def second_encoder_path(path: Path) -> Path:
    """The clip_g (text_encoder_2) file next to a clip_l file: see second_encoder_stem."""
    path = Path(path)
    return path.with_name(second_encoder_stem(path.stem) + path.suffix)


def is_first_encoder_file(path: Path) -> bool:
    """A run's learned_embeds[-steps-N|-best] file of the first text encoder (which may have an SDXL partner)."""
    stem = Path(path).stem
    return stem == EMBEDDINGS_STEM or stem.startswith(f"{EMBEDDINGS_STEM}-")


def load_line(path: Path) -> str:
    """The line that loads a run's embedding file into a ppdiffusers pipeline; for an SDXL run's file (its
    second-encoder partner exists, see second_encoder_path) one line per text encoder."""
    path = Path(path)
    second = second_encoder_path(path)
    if not second.is_file():
        return f'pipe.load_textual_inversion("{path}")'
    return "\n".join(f'pipe.load_textual_inversion("{p}", text_encoder=pipe.{encoder}, tokenizer=pipe.{tokenizer})'
                     for p, (_, encoder, tokenizer) in zip((path, second), SDXL_ENCODERS))
