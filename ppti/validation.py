"""Validation images: the prompt rendered with fixed seeds by the pipeline already in memory."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import paddle
from PIL import Image

from .atomic import atomic_path

log = logging.getLogger("ppti")


def image_grid(images: list[Image.Image]) -> Image.Image:
    """Images side by side in a near-square grid."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid


def render(pipeline, prompt: str, num_images: int, seed: int, height: int, width: int,
           num_inference_steps: int = 25) -> list[Image.Image]:
    """num_images images of the prompt; image i uses seed + i, so grids are comparable across steps."""
    pipeline.set_progress_bar_config(disable=True)  # the training bar is the one to watch
    images = []
    for i in range(num_images):
        generator = paddle.Generator().manual_seed(seed + i)
        out = pipeline(prompt, num_inference_steps=num_inference_steps, generator=generator,
                       height=height, width=width)
        images.append(out.images[0])
    return images


def run_validation(pipeline, prompt: str, num_images: int, seed: int, height: int, width: int,
                   out_dir: Path, step: int, reporter) -> Path:
    """Render, save `out_dir/step-N.png` atomically and log the grid; returns the PNG path."""
    log.info("validation at step %d: %d image(s) of %r", step, num_images, prompt)
    grid = image_grid(render(pipeline, prompt, num_images, seed, height, width))
    path = out_dir / f"step-{step}.png"
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    reporter.image("validation", np.asarray(grid), step)
    return path
