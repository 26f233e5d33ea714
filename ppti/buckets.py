"""Aspect-ratio buckets (`--buckets`): images keep their aspect ratio, at about the area of --resolution².

Sizes   every width w from --bucket_min_side to --bucket_max_side in steps of 64, with the height (a multiple of 64
        in the same range) closest to resolution² / w; a size is kept when its area is within 10% of
        resolution², in both orientations (512: 512x512, 448x576, 384x640, ... and 576x448, 640x384, ...).
Images  each goes to the bucket whose aspect ratio is closest to its own (compared in log scale, so 2:1 and 1:2
        are equally far from 1:1). Crop rule: the largest centred region with the bucket's aspect ratio is kept
        and resized to the bucket -- only the small mismatch between the image's and the bucket's aspect ratio
        is cut, from both ends of the longer side (`data.center_crop_to_aspect`). The crop is fixed, so every image
        still has exactly two variants (as is, flipped) and the latent cache holds each at its bucket size.
Batches each epoch, every bucket's examples (its images x --repeats) are shuffled and cut into global batches of
        world_size x train_batch_size; each bucket's incomplete last global batch is dropped (a different part
        every epoch, since the shuffle changes); then the global batches are shuffled. Rank r takes the r-th slice
        of a global batch, so every micro-batch on every rank is one bucket and all ranks of a step share it.
        Everything is drawn from (seed, epoch): resume and any card count with the same global batch see the
        same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

STEP = 64  # bucket sides are multiples of this (the VAE's 8 x the UNet's 3 downsamplings)
AREA_TOLERANCE = 0.10  # a bucket's area is within 10% of resolution²


def default_sides(resolution: int) -> tuple[int, int]:
    """(min side, max side) when --bucket_min_side/--bucket_max_side are not given: half and twice the
    resolution, on the 64 grid."""
    return max(STEP, resolution // 2 // STEP * STEP), max(STEP, resolution * 2 // STEP * STEP)


def bucket_sizes(resolution: int, min_side: int, max_side: int) -> list[tuple[int, int]]:
    """(height, width) of every bucket, widest last; empty when no size fits the constraints."""
    target = resolution * resolution
    sizes = []
    for width in range(math.ceil(min_side / STEP) * STEP, max_side + 1, STEP):
        height = max(STEP, round(target / width / STEP) * STEP)
        if min_side <= height <= max_side and abs(width * height / target - 1) <= AREA_TOLERANCE:
            sizes += [(height, width), (width, height)]  # both orientations, whichever width found them
    return sorted(set(sizes), key=lambda hw: hw[1] / hw[0])


def closest_bucket(width: int, height: int, sizes: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is closest to width/height (in log scale; the first on a tie)."""
    aspect = math.log(width / height)
    return min(range(len(sizes)), key=lambda i: abs(math.log(sizes[i][1] / sizes[i][0]) - aspect))


@dataclass(frozen=True)
class Buckets:
    """The bucket of every image and what the example stream needs to batch by bucket."""

    sizes: list[tuple[int, int]]  # (height, width) per bucket
    image_bucket: np.ndarray  # (num_images,) bucket index of each image
    latent_shapes: list[tuple[int, int, int]]  # (C, h, w) per bucket
    global_batch: int  # world_size x train_batch_size: the unit a bucket's examples are cut into
    repeats: int

    def examples_per_bucket(self) -> list[int]:
        """Examples of each bucket per epoch (its images x repeats), before the incomplete batches are dropped."""
        return (np.bincount(self.image_bucket, minlength=len(self.sizes)) * self.repeats).tolist()

    def latent_shape(self, image: int) -> tuple[int, int, int]:
        return self.latent_shapes[int(self.image_bucket[image])]

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """(micro_batches_per_epoch x global_batch,) image indices of this epoch, one bucket per global batch."""
        rng = np.random.default_rng([seed, epoch])
        chunks = []
        for bucket in range(len(self.sizes)):
            images = np.repeat(np.flatnonzero(self.image_bucket == bucket), self.repeats)
            shuffled = rng.permutation(images)
            usable = len(shuffled) // self.global_batch * self.global_batch
            chunks += np.split(shuffled[:usable], usable // self.global_batch) if usable else []
        if not chunks:
            return np.zeros([0], dtype=np.int64)
        return np.concatenate([chunks[i] for i in rng.permutation(len(chunks))])

    def summary(self) -> str:
        """'64x256: 1 image, 128x128: 3 images' (height x width), with what an epoch drops or never trains."""
        counts = np.bincount(self.image_bucket, minlength=len(self.sizes))
        parts = []
        for (h, w), n, examples in zip(self.sizes, counts, self.examples_per_bucket()):
            if not n:
                continue
            note = ""
            if examples < self.global_batch:
                note = f" (never trained: {examples} example(s) < global batch {self.global_batch})"
            elif examples % self.global_batch:
                note = f" ({examples % self.global_batch} of {examples} examples dropped per epoch)"
            parts.append(f"{h}x{w}: {n} image{'s' if n > 1 else ''}{note}")
        return ", ".join(parts)
