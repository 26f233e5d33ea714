"""What a run writes into output_dir (rank 0 only): embeddings, run description, optionally the full pipeline."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .atomic import TMP_MARK, atomic_dir, atomic_write_text, write_errors
from .config import ConfigError, TrainConfig, _looks_like_hub_id, to_yaml
from .embeddings import write_embeddings
from .runfiles import (CHECKPOINTS_DIR, CONCEPT_FILE, CONFIG_FILE, EMBEDDINGS_STEM, SAVED_SUFFIXES, TOKEN_FILE,
                       VALIDATION_DIR, embeddings_name)

log = logging.getLogger("ppti")

# What a run leaves in output_dir besides learned_embeds* and its logs: any of them means "a run was here".
RUN_FILES = (CONFIG_FILE, TOKEN_FILE, CONCEPT_FILE, CHECKPOINTS_DIR, VALIDATION_DIR, "model_index.json")
PIPELINE_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker", "feature_extractor")
LOG_PREFIXES = ("vdlrecords.", "events.out.tfevents.")  # VisualDL, TensorBoard
# --save_format -> (file suffix, embeddings format) for each file written
SAVE_FORMATS = {
    "pdparams": [(".pdparams", "pdparams")],
    "safetensors": [(".safetensors", "diffusers")],
    "both": [(".pdparams", "pdparams"), (".safetensors", "diffusers")],
}


def save_embeddings(config: TrainConfig, rows: np.ndarray | Sequence[np.ndarray], step: Optional[int] = None) -> Path:
    """`{placeholder_token: float32 [num_vectors, dim]}` per text encoder (`rows` one array, or one per encoder),
    as ppdiffusers/diffusers load_textual_inversion expect; written atomically. Returns the first file written."""
    out_dir = Path(config.output_dir)
    written = []
    row_sets = [rows] if isinstance(rows, np.ndarray) else list(rows)
    for suffix, fmt in SAVE_FORMATS[config.save_format]:
        for encoder, encoder_rows in enumerate(row_sets):
            path = out_dir / f"{embeddings_name(step, encoder)}{suffix}"
            write_embeddings(path, {config.placeholder_token: encoder_rows.astype(np.float32)}, fmt=fmt)
            written.append(path)
    log.info("saved %s", ", ".join(str(p) for p in written))
    return written[0]


def previous_run(config: TrainConfig) -> list[Path]:
    """The files and folders of an earlier (finished or partial) run in --output_dir; empty for a new folder. Logs
    count only in a --logging_dir inside --output_dir: one outside (absolute, ../logs) is shared by other runs."""
    out_dir = Path(config.output_dir)
    if not out_dir.is_dir():
        return []
    found = sorted(p for p in out_dir.iterdir() if p.name in RUN_FILES or p.name.startswith(EMBEDDINGS_STEM))
    if (out_dir / "model_index.json").is_file():  # a pipeline saved by --no-only_save_embeds
        found += [out_dir / name for name in PIPELINE_FOLDERS if (out_dir / name).is_dir()]
    logs = config.logging_path
    if logs.is_dir() and logs.resolve().is_relative_to(out_dir.resolve()):  # (a log folder outside is shared)
        found += sorted(p for p in logs.iterdir() if p.name.startswith(LOG_PREFIXES))
    return found


def check_output_dir(config: TrainConfig) -> None:
    """The output-folder rule, before any model loads: a folder holding an earlier run is refused unless the run
    continues it (--resume_from_checkpoint) or replaces it (--overwrite_output_dir), so two runs never mix; the
    model and image folders are never output folders."""
    out_dir = Path(config.output_dir).resolve()
    for flag in ("pretrained_model_name_or_path", "train_data_dir"):
        if Path(getattr(config, flag)).resolve() == out_dir:
            raise ConfigError(f"--output_dir {config.output_dir} is the --{flag} folder; write the run into a "
                              "folder of its own, e.g. outputs/my-concept")
    found = previous_run(config)
    if found and not config.overwrite_output_dir and not config.resume_from_checkpoint:
        names = ", ".join(str(p.relative_to(config.output_dir)) for p in found[:4]) + (", ..." if found[4:] else "")
        raise ConfigError(
            f"--output_dir {config.output_dir} holds an earlier run ({names}); add --overwrite_output_dir to replace "
            "it (its files are removed first), --resume_from_checkpoint latest to continue it, or choose another "
            "--output_dir")


def remove_previous_run(config: TrainConfig, paths: Optional[Sequence[Path]] = None) -> None:
    """Delete an earlier run's files (--overwrite_output_dir, or --resume_from_checkpoint with no checkpoint to
    continue): `paths` (default: previous_run), files ppti did not write stay."""
    for path in previous_run(config) if paths is None else paths:
        with write_errors(path):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    log.info("removed the earlier run's files from %s", config.output_dir)


def write_run_files(config: TrainConfig, seed: int, language: str, earlier: Sequence[Path] = ()) -> None:
    """token_identifier.txt, type_of_concept.txt and the resolved config (readable back with --config), after
    removing `earlier`: what previous_run found before this run set up (see check_output_dir; empty for a resumed
    run). Listed before set-up, not now: by now this run's own log file may exist (tensorboardX creates it at once)."""
    out_dir = Path(config.output_dir)
    if earlier:
        remove_previous_run(config, earlier)
    atomic_write_text(out_dir / TOKEN_FILE, config.placeholder_token)
    atomic_write_text(out_dir / CONCEPT_FILE, config.learnable_property)
    atomic_write_text(out_dir / CONFIG_FILE, to_yaml(config, {"resolved seed": seed, "resolved language": language}))


def save_pipeline(config: TrainConfig, components, conditioning) -> None:
    """The whole pipeline with the new tokens, so StableDiffusion(XL)Pipeline.from_pretrained(output_dir) works."""
    from .tokens import install_placeholder_layer, restore_plain_embedding

    pairs = [(slot.text_encoder, layer) for slot, layer in zip(conditioning.slots, conditioning.row_layers)]
    for text_encoder, layer in pairs:
        restore_plain_embedding(text_encoder, layer)
    try:
        with atomic_dir(config.output_dir) as tmp:  # ppdiffusers writes the files itself: into a temporary folder
            components.pipeline.save_pretrained(str(tmp))
    finally:
        for text_encoder, layer in pairs:
            install_placeholder_layer(text_encoder, layer)
    log.info("saved the full pipeline to %s", config.output_dir)


# --push_to_hub publishes an allow-list, never the whole folder: the embeddings, the model card, the run description
# (train_config.yaml holds no credential: config.SECRET_FIELDS), the validation grids and, with
# --no-only_save_embeds, the pipeline. Never logs, checkpoints, the web page's files (webui/) or evaluation outputs.
README_FILE = "README.md"
PUBLISHED_FILES = (README_FILE, CONFIG_FILE, TOKEN_FILE, CONCEPT_FILE)
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SECRET_SCAN_BYTES = 16 * 2**20  # files up to this size are searched for the token before upload (weights are not)


def publishable_files(config: TrainConfig) -> list[tuple[str, Path]]:
    """(name in the repository, file) of what --push_to_hub uploads: regular files only (a symlink is never
    followed out of output_dir), nothing under the log folder or a temporary name."""
    out_dir = Path(config.output_dir)
    root, logs = out_dir.resolve(), config.logging_path.resolve()

    def allowed(path: Path) -> bool:
        real = path.resolve()
        return (path.is_file() and not path.is_symlink() and real.is_relative_to(root)
                and not real.is_relative_to(logs) and TMP_MARK not in path.as_posix())

    chosen = [p for p in sorted(out_dir.iterdir()) if p.name in PUBLISHED_FILES
              or (p.name.startswith(EMBEDDINGS_STEM) and p.suffix in SAVED_SUFFIXES)]
    grids = out_dir / VALIDATION_DIR
    if grids.is_dir() and not grids.is_symlink():
        chosen += sorted(p for p in grids.rglob("*") if p.suffix.lower() in GRID_SUFFIXES)
    if config.saves_full_pipeline and (out_dir / "model_index.json").is_file():
        chosen.append(out_dir / "model_index.json")
        for name in PIPELINE_FOLDERS:
            if (out_dir / name).is_dir() and not (out_dir / name).is_symlink():
                chosen += sorted((out_dir / name).rglob("*"))
    return [(p.relative_to(out_dir).as_posix(), p) for p in chosen if allowed(p)]


def model_card(config: TrainConfig, repo_id: str, names: Sequence[str]) -> str:
    """README.md for the Hub when output_dir has none: what the concept is and how to load it."""
    base = config.pretrained_model_name_or_path
    header = ["---", "library_name: ppdiffusers",
              "tags: [stable-diffusion, text-to-image, textual-inversion, ppti, paddlepaddle]", "inference: false"]
    header += [f"base_model: {base}"] if _looks_like_hub_id(base) else []
    grids = [name for name in names if name.startswith(VALIDATION_DIR + "/")]
    body = [f"# Textual inversion: {config.placeholder_token}", "",
            f"A {config.learnable_property} concept learned with ppti (PaddlePaddle) from "
            f"{'`' + base + '`' if _looks_like_hub_id(base) else 'a local Stable Diffusion model'}; use "
            f"`{config.placeholder_token}` in a prompt.", "", "```python",
            f"pipe.load_textual_inversion(\"{repo_id}\")  # ppdiffusers or diffusers", "```", ""]
    body += [f"![{name}]({name})" for name in grids]
    return "\n".join(header + ["---", ""] + body) + "\n"


def known_tokens(config: TrainConfig) -> list[str]:
    """Every Hub token this process could use: --hub_token, HF_TOKEN (and its old name), the saved login."""
    import os

    found = [config.hub_token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import get_token

        found.append(get_token())
    except Exception:  # noqa: BLE001 - no saved login, or an older huggingface_hub: nothing more to check
        pass
    return sorted({t for t in found if t and len(t) >= 8})


def files_holding(tokens: Sequence[str], files: Sequence[tuple[str, Path]]) -> list[str]:
    """Names of the files (up to SECRET_SCAN_BYTES each) in which one of `tokens` appears."""
    needles = [t.encode() for t in tokens]
    return [name for name, path in files if path.stat().st_size <= SECRET_SCAN_BYTES
            and any(n in path.read_bytes() for n in needles)]


def push_to_hub(config: TrainConfig) -> None:
    """Upload publishable_files (plus a model card) as one commit. The token comes from --hub_token, else the Hub's
    own login (HF_TOKEN, huggingface-cli login); a file holding it is never sent."""
    from huggingface_hub import CommitOperationAdd, create_commit, create_repo

    repo_id = config.hub_model_id or Path(config.output_dir).resolve().name
    files = publishable_files(config)
    leaking = files_holding(known_tokens(config), files)
    if leaking:
        log.error("--push_to_hub: upload to %s failed (nothing sent: %s holds the Hub token; remove it and push "
                  "again); the results are in %s", repo_id, ", ".join(leaking), config.output_dir)
        return
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files]
    if not any(name == README_FILE for name, _ in files):
        card = model_card(config, repo_id, [name for name, _ in files])
        operations.append(CommitOperationAdd(path_in_repo=README_FILE, path_or_fileobj=card.encode("utf-8")))
    try:
        create_repo(repo_id, exist_ok=True, token=config.hub_token)
        create_commit(repo_id, operations, commit_message=f"ppti: textual inversion {config.placeholder_token}",
                      token=config.hub_token)
    except Exception as exc:  # noqa: BLE001 - training results are safe on disk; say why the upload failed
        log.error("--push_to_hub: upload to %s failed (%s); the results are in %s", repo_id, exc, config.output_dir)
        return
    log.info("pushed %d files of %s to the Hub as %s: %s", len(operations), config.output_dir, repo_id,
             ", ".join(op.path_in_repo for op in operations))
