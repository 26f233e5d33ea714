"""Validation images: the prompts rendered with fixed seeds by the pipeline already in memory.

One grid per validation, `output_dir/validation/step-N.png`: a row per prompt, a column per seed. Image i of every
prompt uses seed + i at every validation, so grids of different steps differ only by what the embedding learned.
Rendering never disturbs training: the global random generators and the train/eval mode of every model are
restored afterwards (training examples come from their own stream anyway, see data.py).
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import paddle
from PIL import Image

from .atomic import atomic_path
from .config import NUM_INFERENCE_STEPS
from .precision import unet_takes_text_encoder_output
from .runfiles import validation_grid_name

log = logging.getLogger("ppti")



def validation_due(step: int, validation_steps: Optional[int], validation_epochs: int, gradient_accumulation_steps: int,
                   micro_batches_per_epoch: int) -> bool:
    """Whether optimizer step `step` validates: every --validation_steps steps, and at the step an epoch that is a
    multiple of --validation_epochs ends. A function of the step alone, so a resumed run validates where the
    uninterrupted one would have."""
    if validation_steps and step % validation_steps == 0:
        return True
    epoch_before = (step - 1) * gradient_accumulation_steps // micro_batches_per_epoch
    epoch_after = step * gradient_accumulation_steps // micro_batches_per_epoch
    return epoch_after > epoch_before and epoch_after % validation_epochs == 0


def warn_missing_placeholder(prompts: Sequence[str], placeholder_token: str) -> None:
    """A validation prompt without the placeholder renders the base model only: almost always a typo."""
    for prompt in prompts:
        if placeholder_token not in prompt:
            log.warning("--validation_prompt %r does not contain the placeholder token %r: its images will not "
                        "show the concept", prompt, placeholder_token)


def image_grid(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """rows[r][c] pasted at row r, column c (all images the size of the first)."""
    w, h = rows[0][0].size
    cols = max(len(row) for row in rows)
    grid = Image.new("RGB", (cols * w, len(rows) * h), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * w, r * h))
    return grid


@contextlib.contextmanager
def seeded_generator(seed: int) -> Iterator[str]:
    """A ppdiffusers generator for `seed` (ppdiffusers names generators by string), removed afterwards."""
    from ppdiffusers.utils.paddle_utils import get_rng_state_tracker

    tracker = get_rng_state_tracker()
    name = tracker.manual_seed(seed, generator_name=f"ppti-{seed}-{uuid.uuid4().hex}")
    try:
        yield name
    finally:
        tracker.remove(name)


def render(pipeline, prompt: str, num_images: int, seed: int, height: Optional[int], width: Optional[int],
           num_inference_steps: int = NUM_INFERENCE_STEPS, guidance_scale: float = 7.5,
           negative_prompt: Optional[str] = None) -> list[Image.Image]:
    """num_images images of the prompt; image i uses seed + i whatever was rendered before."""
    pipeline.set_progress_bar_config(disable=True)  # the training bar is the one to watch
    images = []
    for i in range(num_images):
        with seeded_generator(seed + i) as generator, unet_takes_text_encoder_output(pipeline.unet):
            out = pipeline(prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, generator=generator, height=height, width=width)
        images.append(out.images[0])
    return images


@contextlib.contextmanager
def training_state_preserved(models: Sequence) -> Iterator[None]:
    """Restore the global random generators (Python, numpy, Paddle CPU and device) and each sub-layer's
    train/eval mode on exit: ppdiffusers reseeds Paddle's global generator when it creates a generator."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cpu_state = paddle.get_rng_state("cpu")
    device_state = paddle.get_rng_state() if paddle.get_device() != "cpu" else None
    modes = [(layer, layer.training) for model in models for layer in model.sublayers(include_self=True)]
    try:
        yield
    finally:
        for layer, training in modes:
            layer.training = training
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        paddle.set_rng_state(cpu_state, "cpu")
        if device_state is not None:
            paddle.set_rng_state(device_state)


def run_validation(pipeline, prompts: Sequence[str], num_images: int, seed: int, height: int, width: int,
                   out_dir: Path, step: int, reporter) -> Path:
    """Render every prompt, save `out_dir/step-N.png` atomically and log the grid; returns the PNG path."""
    log.info("validation at step %d: %d image(s) of %s", step, num_images, " | ".join(repr(p) for p in prompts))
    with training_state_preserved([pipeline.unet, pipeline.vae, pipeline.text_encoder]):
        grid = image_grid([render(pipeline, prompt, num_images, seed, height, width) for prompt in prompts])
    path = out_dir / validation_grid_name(step)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    reporter.image("validation", np.asarray(grid), step)
    return path
