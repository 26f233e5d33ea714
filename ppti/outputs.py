"""What a run writes into output_dir (rank 0 only): embeddings, run description, optionally the full pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import atomic_write_text
from .config import TrainConfig, to_yaml
from .embeddings import write_embeddings

log = logging.getLogger("ppti")

CONFIG_FILE = "train_config.yaml"
# --save_format -> (file suffix, embeddings format) for each file written
SAVE_FORMATS = {
    "pdparams": [(".pdparams", "pdparams")],
    "safetensors": [(".safetensors", "diffusers")],
    "both": [(".pdparams", "pdparams"), (".safetensors", "diffusers")],
}


def embeddings_name(step: Optional[int]) -> str:
    return "learned_embeds" if step is None else f"learned_embeds-steps-{step}"


def save_embeddings(config: TrainConfig, rows: np.ndarray, step: Optional[int] = None) -> Path:
    """`{placeholder_token: float32 [num_vectors, dim]}`, as ppdiffusers/diffusers load_textual_inversion expect;
    written atomically. Returns the first file written."""
    out_dir = Path(config.output_dir)
    written = []
    for suffix, fmt in SAVE_FORMATS[config.save_format]:
        path = out_dir / f"{embeddings_name(step)}{suffix}"
        write_embeddings(path, {config.placeholder_token: rows.astype(np.float32)}, fmt=fmt)
        written.append(path)
    log.info("saved %s", ", ".join(str(p) for p in written))
    return written[0]


def write_run_files(config: TrainConfig, seed: int, language: str) -> None:
    """token_identifier.txt, type_of_concept.txt and the resolved config (readable back with --config)."""
    out_dir = Path(config.output_dir)
    atomic_write_text(out_dir / "token_identifier.txt", config.placeholder_token)
    atomic_write_text(out_dir / "type_of_concept.txt", config.learnable_property)
    atomic_write_text(out_dir / CONFIG_FILE, to_yaml(config, {"resolved seed": seed, "resolved language": language}))


def save_pipeline(config: TrainConfig, components, rows_layer) -> None:
    """The whole pipeline with the new tokens, so StableDiffusionPipeline.from_pretrained(output_dir) works."""
    from .tokens import install_placeholder_layer, restore_plain_embedding

    text_encoder = components.text_encoder
    restore_plain_embedding(text_encoder, rows_layer)
    try:
        components.pipeline.save_pretrained(config.output_dir)
    finally:
        install_placeholder_layer(text_encoder, rows_layer)
    log.info("saved the full pipeline to %s", config.output_dir)


def push_to_hub(config: TrainConfig) -> None:
    from huggingface_hub import create_repo, upload_folder

    repo_id = config.hub_model_id or Path(config.output_dir).resolve().name
    try:
        create_repo(repo_id, exist_ok=True, token=config.hub_token)
        upload_folder(repo_id=repo_id, folder_path=config.output_dir, token=config.hub_token,
                      ignore_patterns=["checkpoints/*", "*.ppti-tmp-*"])
    except Exception as exc:  # noqa: BLE001 - training results are safe on disk; say why the upload failed
        log.error("--push_to_hub: upload to %s failed (%s); the results are in %s", repo_id, exc, config.output_dir)
        return
    log.info("pushed %s to the Hub as %s", config.output_dir, repo_id)
