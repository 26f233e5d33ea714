"""Concept images and the stream of training examples.

Images are decoded, validated and augmented once (centre crop, resize, horizontal flip): every augmentation the
example uses is deterministic, so each image has exactly two variants (as is, flipped) that can be kept in memory
and encoded by the VAE once (see latents.py).

Every random choice of an example -- which image, flipped or not, which of its prompts, its timestep, its noise and
its VAE posterior sample -- is drawn from a generator keyed by (seed, epoch, position in the epoch). So an example is
the same whichever rank draws it and whenever it is drawn: a resumed run, a multi-card run and a single-card run
with the same global batch see the same examples, and validation cannot disturb the training stream.

With --buckets (see buckets.py) each image is resized to its aspect-ratio bucket instead of --height x --width, and
the epoch order is cut so that every global batch is one bucket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .buckets import Buckets, closest_bucket

log = logging.getLogger("ppti")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
FLIP_PROBABILITY = 0.5  # the example's RandomHorizontalFlip(prob=0.5)


class DataError(ValueError):
    """A problem with --train_data_dir that the user must fix."""


# ------------------------------------------------------------------------------------------------------------
# Decoding
# ------------------------------------------------------------------------------------------------------------
def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, upright: EXIF orientation applied, alpha composited on white, 16-bit scaled."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: convert("RGB") would clip everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def center_crop_box(w: int, h: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred region of a w x h image with the target aspect ratio."""
    target = width / height
    if w / h > target:
        new_w = round(h * target)
        left = (w - new_w) // 2
        return left, 0, left + new_w, h
    new_h = round(w / target)
    top = (h - new_h) // 2
    return 0, top, w, top + new_h


def center_crop_to_aspect(image: Image.Image, height: int, width: int) -> Image.Image:
    """The largest centred region with the target aspect ratio (a square for square targets)."""
    return image.crop(center_crop_box(*image.size, height, width))


def size_conditioning(image: Image.Image, height: int, width: int, center_crop: bool) -> np.ndarray:
    """(6,) SDXL's time_ids for this image: original (h, w), crop top-left (y, x), target (h, w).

    The crop corner is measured as SDXL's training measured it (diffusers' train_text_to_image_sdxl.py): in the
    image *after* it is resized to cover the target keeping its aspect ratio (for a square target: its short side
    resized to the target, the long side int(target * long / short)), rounded as there (int(round(...))). A
    4000x3000 photo at 1024 px: resized 1365x1024, corner x = round(341 / 2) = 170 (not 500, the corner in the
    photo's own pixels). Without --center_crop the whole image is resized: corner (0, 0). The original size is the
    image's own."""
    w, h = image.size
    top = left = 0
    if center_crop:
        if w / h > width / height:  # wider than the target: the height fits, the sides are cut
            resized_h, resized_w = height, int(height * w / h)
        else:
            resized_h, resized_w = int(width * h / w), width
        top, left = int(round((resized_h - height) / 2.0)), int(round((resized_w - width) / 2.0))
    return np.asarray([h, w, top, left, height, width], dtype=np.float32)


def image_variants(image: Image.Image, height: int, width: int, center_crop: bool) -> np.ndarray:
    """(2, 3, height, width) float32 in [-1, 1]: the image as is and flipped left-right."""
    if center_crop:
        image = center_crop_to_aspect(image, height, width)
    image = image.resize((width, height), resample=Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    chw = pixels.transpose(2, 0, 1)
    return np.stack([chw, chw[:, :, ::-1]]).astype(np.float32)


@dataclass(frozen=True)
class ConceptImages:
    paths: list[Path]
    # variant v = image * 2 + flipped -> (3, H, W) float32 in [-1, 1]: one (num_images * 2, 3, H, W) array, or
    # with buckets a list of arrays of each image's bucket size
    pixels: np.ndarray | list[np.ndarray]
    skipped: list[tuple[Path, str]]
    image_bucket: Optional[np.ndarray] = None  # (num_images,) index into the bucket sizes, with --buckets
    time_ids: Optional[np.ndarray] = None  # (num_images * 2, 6) float32: each variant's size_conditioning (SDXL)

    @property
    def num_images(self) -> int:
        return len(self.paths)


def find_image_files(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """(candidate image files, other files) directly inside data_dir, sorted; hidden files are ignored."""
    try:
        files = sorted(p for p in data_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"--train_data_dir {data_dir}: cannot list the folder ({exc.strerror}); check its permissions") from None
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, [p for p in files if p not in images] + broken_links(data_dir)


def broken_links(data_dir: Path) -> list[Path]:
    """Symbolic links in data_dir that lead nowhere (dangling or looping): reported in the skip list."""
    return sorted(p for p in data_dir.iterdir() if p.is_symlink() and not p.exists() and not p.name.startswith("."))


def is_caption_file(path: Path, images: Sequence[Path], caption_extension: Optional[str]) -> bool:
    """metadata.jsonl, or a caption file beside an image (not worth a "skipped" note)."""
    if path.name == "metadata.jsonl":
        return True
    return bool(caption_extension) and any(path == image.with_suffix(caption_extension) for image in images)


def load_concept_images(
    data_dir: str | Path,
    height: int,
    width: int,
    center_crop: bool,
    bucket_sizes: Optional[Sequence[tuple[int, int]]] = None,
    caption_extension: Optional[str] = None,
) -> ConceptImages:
    """Decode every image of the folder once; skip (and warn about) unreadable ones; refuse a folder with none.

    With `bucket_sizes` ((height, width) each), every image goes to the bucket of the closest aspect ratio, centre-
    cropped to that ratio and resized to it (buckets.py); height, width and center_crop are then not used."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--train_data_dir {data_dir}: no such directory")
    candidates, others = find_image_files(data_dir)
    others = [p for p in others if not is_caption_file(p, candidates, caption_extension)]
    paths, variants, skipped, buckets, time_ids = [], [], [], [], []
    for path in candidates:
        try:
            with Image.open(path) as image:
                image.load()  # decodes fully: truncated files fail here, not in the middle of training
                rgb = to_rgb(image)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            skipped.append((path, f"cannot decode ({exc})"))
            log.warning("skipping %s: cannot decode (%s)", path, exc)
            continue
        paths.append(path)
        if bucket_sizes:
            buckets.append(closest_bucket(*rgb.size, bucket_sizes))
            variants.append(image_variants(rgb, *bucket_sizes[buckets[-1]], center_crop=True))
            time_ids += [size_conditioning(rgb, *bucket_sizes[buckets[-1]], center_crop=True)] * 2
        else:
            variants.append(image_variants(rgb, height, width, center_crop))
            time_ids += [size_conditioning(rgb, height, width, center_crop)] * 2  # as is, flipped
    for p in others:
        link = p.is_symlink() and not p.exists()
        skipped.append((p, "a broken or looping symbolic link" if link else "not an image file (by its extension)"))
        if link:
            log.warning("skipping %s: a broken or looping symbolic link", p)
    if not paths:
        listing = "; ".join(f"{p.name}: {why}" for p, why in skipped) or "the folder is empty"
        raise DataError(
            f"--train_data_dir {data_dir}: no decodable images (supported: "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}). Skipped: {listing}"
        )
    if bucket_sizes:
        pixels = [variant for pair in variants for variant in pair]
        return ConceptImages(paths, pixels, skipped, image_bucket=np.asarray(buckets, dtype=np.int64),
                             time_ids=np.stack(time_ids))
    return ConceptImages(paths=paths, pixels=np.concatenate(variants), skipped=skipped, time_ids=np.stack(time_ids))


# ------------------------------------------------------------------------------------------------------------
# The example stream
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamLayout:
    """How micro-batches are cut from epochs. A global micro-batch is `world_size * batch_size` consecutive
    positions of an epoch's order; rank r takes the r-th slice. An incomplete last global batch is dropped, so no
    example is seen twice in an epoch and every rank has the same batch size."""

    num_examples: int  # per epoch: num_images * repeats
    batch_size: int  # per rank
    world_size: int = 1
    bucket_examples: Optional[tuple[int, ...]] = None  # with --buckets: examples of each bucket per epoch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def micro_batches_per_epoch(self) -> int:
        """Complete global batches per epoch; with buckets, each bucket's incomplete one is dropped."""
        return sum(n // self.global_batch for n in self.bucket_examples or (self.num_examples,))

    def positions(self, micro_step: int, rank: int) -> tuple[int, list[int]]:
        """(epoch, positions in that epoch's order) that `rank` trains on at global micro-step `micro_step`."""
        epoch, index = divmod(micro_step, self.micro_batches_per_epoch)
        first = index * self.global_batch + rank * self.batch_size
        return epoch, list(range(first, first + self.batch_size))


def epoch_order(seed: int, epoch: int, num_images: int, repeats: int) -> np.ndarray:
    """(num_images * repeats,) image indices in this epoch's shuffled order."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(np.repeat(np.arange(num_images), repeats))


class ExampleStream:
    """Examples addressed by (epoch, position); a paddle.io.Dataset wraps it for the DataLoader."""

    def __init__(
        self,
        seed: int,
        num_images: int,
        repeats: int,
        prompt_ids: np.ndarray,  # (num_prompts, seq_len) int64: every tokenized prompt
        latent_shape: Sequence[int],  # (C, h, w)
        num_train_timesteps: int,
        noise_offset: float = 0.0,
        image_prompts: Optional[Sequence[np.ndarray]] = None,  # per image: its rows of prompt_ids (default: all)
        buckets: Optional[Buckets] = None,  # with --buckets: the order and latent shape come from each image's bucket
        time_ids: np.ndarray | None = None,  # (num_images * 2, 6): each variant's SDXL size conditioning
    ):
        self.seed, self.num_images, self.repeats = seed, num_images, repeats
        self.prompt_ids = prompt_ids
        self.image_prompts = image_prompts
        self.latent_shape = tuple(latent_shape)
        self.num_train_timesteps = num_train_timesteps
        self.noise_offset = noise_offset
        self.buckets = buckets
        self._order_cache: tuple[int, np.ndarray] | None = None
        self.time_ids = time_ids if time_ids is not None else np.zeros((num_images * 2, 6), np.float32)

    def order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = (self.buckets.order(self.seed, epoch) if self.buckets
                     else epoch_order(self.seed, epoch, self.num_images, self.repeats))
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def __getitem__(self, key: int) -> dict[str, np.ndarray]:
        """The example with flat key epoch * num_examples + position (see RankBatches)."""
        return self.example(*divmod(key, self.num_images * self.repeats))

    def example(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, position, 1])  # 1: the example stream (not the order)
        image = int(self.order(epoch)[position])
        flipped = int(rng.random() < FLIP_PROBABILITY)
        prompts = self.image_prompts[image] if self.image_prompts is not None else None
        prompt = int(rng.integers(len(self.prompt_ids) if prompts is None else len(prompts)))
        prompt = prompt if prompts is None else int(prompts[prompt])
        timestep = int(rng.integers(self.num_train_timesteps))
        shape = self.buckets.latent_shape(image) if self.buckets else self.latent_shape
        noise = rng.standard_normal(shape, dtype=np.float32)
        if self.noise_offset:
            # https://www.crosslabs.org//blog/diffusion-with-offset-noise
            noise += self.noise_offset * rng.standard_normal((shape[0], 1, 1), dtype=np.float32)
        posterior_eps = rng.standard_normal(shape, dtype=np.float32)
        return {
            "variant": np.int64(image * 2 + flipped),
            "input_ids": self.prompt_ids[prompt],
            "timestep": np.int64(timestep),
            "noise": noise,
            "posterior_eps": posterior_eps,
            "time_ids": self.time_ids[image * 2 + flipped],
        }


class RankBatches:
    """The batch sampler of one rank: lists of flat keys (epoch * num_examples + position), from a micro-step on.

    `len` is what is left of the run, so a DataLoader over it ends exactly with the last micro-step.
    """

    def __init__(self, layout: StreamLayout, rank: int, start_micro_step: int, end_micro_step: int):
        self.layout, self.rank = layout, rank
        self.start, self.end = start_micro_step, end_micro_step

    def __iter__(self) -> Iterator[list[int]]:
        for micro_step in range(self.start, self.end):
            epoch, positions = self.layout.positions(micro_step, self.rank)
            yield [epoch * self.layout.num_examples + p for p in positions]

    def __len__(self) -> int:
        return self.end - self.start


def tokenize_templates(
    templates: Sequence[str], placeholder_text: str, tokenize: Callable[[str], list[int]]
) -> np.ndarray:
    """(num_templates, seq_len) int64: every template with the placeholder filled in, tokenized once."""
    return np.asarray([tokenize(t.format(placeholder_text)) for t in templates], dtype=np.int64)
