"""The world model that ships with the repository (`models/toy-world/`) and its CLIP (`models/toy-world-clip/`),
each checked against its sha256 manifest before use, and the ways to run the world: the pipeline, its judge, and
sampling to uint8 arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..manifest import ManifestError, verify_manifest

WORLD_DIR = Path(__file__).resolve().parents[2] / "models" / "toy-world"
CLIP_DIR = WORLD_DIR.with_name("toy-world-clip")  # the world's CLIP (clip.py), for tools/evaluate.py --clip_model
NUM_INFERENCE_STEPS = 25
GUIDANCE_SCALE = 7.5  # the validation grid's setting (ppti/validation.py)


def checked(folder: Path = WORLD_DIR) -> Path:
    """`folder` after verifying every file against its manifest.json (ManifestError names the problem)."""
    return _verified(Path(folder), "model_index.json", "no toy world", "")


def checked_clip(folder: Path = CLIP_DIR) -> Path:
    """The world's CLIP folder after verifying every file against its manifest.json (ManifestError names the
    problem): give it to ClipScorer or tools/evaluate.py --clip_model."""
    folder = Path(folder)
    return _verified(folder, "config.json", "no toy-world CLIP",
                     " --make clip --seed 0" + (" --language zh" if folder.name.endswith("-zh") else ""))


def _verified(folder: Path, marker: str, missing: str, build_flags: str) -> Path:
    if not (folder / marker).is_file():
        raise ManifestError(f"{folder}: {missing} here; build one with "
                            f"`python tools/make_toy_world.py {folder}{build_flags}`")
    verify_manifest(folder)
    return folder


def load_pipeline(folder: Path = WORLD_DIR, check: bool = True):
    """ppdiffusers StableDiffusionPipeline of the world (verified against its manifest unless check=False, for a
    world still being built), progress bars off."""
    from ppdiffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(checked(folder) if check else folder), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_world_judge(folder: Path = WORLD_DIR):
    from .judge import load_judge

    return load_judge(checked(folder) / "judge")


def initial_latents(seeds: Sequence[int], channels: int = 8) -> np.ndarray:
    """float32 [len(seeds), channels, 8, 8] standard-normal starting latents, one numpy generator per seed (the same
    numbers in every framework, so Paddle and PyTorch pipelines can start from identical noise)."""
    return np.stack([np.random.default_rng(int(s)).standard_normal((channels, 8, 8)) for s in seeds]).astype(np.float32)


def sample(pipe, prompts: Sequence[str], seeds: Sequence[int], batch_size: int = 32) -> np.ndarray:
    """uint8 [len(prompts), 32, 32, 3]: prompt i drawn from `initial_latents([seeds[i]])`."""
    import paddle

    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        latents = paddle.to_tensor(initial_latents(seeds[start:start + batch_size], pipe.unet.config.in_channels))
        images = pipe(chunk, num_inference_steps=NUM_INFERENCE_STEPS, guidance_scale=GUIDANCE_SCALE,
                      latents=latents, height=32, width=32, output_type="np").images
        out.append(np.round(np.asarray(images) * 255).astype(np.uint8))
    return np.concatenate(out)
