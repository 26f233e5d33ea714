"""Concept images and the stream of training examples.

Images are decoded, validated and augmented once (centre crop, resize, horizontal flip): every augmentation the
example uses is deterministic, so each image has exactly two variants (as is, flipped) that can be kept in memory
and encoded by the VAE once (see latents.py).

Every random choice of an example -- which image, flipped or not, which template, its timestep, its noise and its
VAE posterior sample -- is drawn from a generator keyed by (seed, epoch, position in the epoch). So an example is
the same whichever rank draws it and whenever it is drawn: a resumed run, a multi-card run and a single-card run
with the same global batch see the same examples, and validation cannot disturb the training stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def center_crop_to_aspect(image: Image.Image, height: int, width: int) -> Image.Image:
    """The largest centred region with the target aspect ratio (a square for square targets)."""
    w, h = image.size
    target = width / height
    if w / h > target:
        new_w = round(h * target)
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    new_h = round(w / target)
    top = (h - new_h) // 2
    return image.crop((0, top, w, top + new_h))


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
    pixels: np.ndarray  # (num_images * 2, 3, H, W) float32 in [-1, 1]; variant v = image * 2 + flipped
    skipped: list[tuple[Path, str]]

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
    return images, [p for p in files if p not in images]


def load_concept_images(data_dir: str | Path, height: int, width: int, center_crop: bool) -> ConceptImages:
    """Decode every image of the folder once; skip (and warn about) unreadable ones; refuse a folder with none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--train_data_dir {data_dir}: no such directory")
    candidates, others = find_image_files(data_dir)
    paths, variants, skipped = [], [], []
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
        variants.append(image_variants(rgb, height, width, center_crop))
    skipped += [(p, "not an image file (by its extension)") for p in others]
    if not paths:
        listing = "; ".join(f"{p.name}: {why}" for p, why in skipped) or "the folder is empty"
        raise DataError(
            f"--train_data_dir {data_dir}: no decodable images (supported: "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}). Skipped: {listing}"
        )
    return ConceptImages(paths=paths, pixels=np.concatenate(variants), skipped=skipped)


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

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def micro_batches_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

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
        prompt_ids: np.ndarray,  # (num_templates, seq_len) int64: each template's tokenized prompt
        latent_shape: Sequence[int],  # (C, h, w)
        num_train_timesteps: int,
        noise_offset: float = 0.0,
    ):
        self.seed, self.num_images, self.repeats = seed, num_images, repeats
        self.prompt_ids = prompt_ids
        self.latent_shape = tuple(latent_shape)
        self.num_train_timesteps = num_train_timesteps
        self.noise_offset = noise_offset
        self._order_cache: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, epoch_order(self.seed, epoch, self.num_images, self.repeats))
        return self._order_cache[1]

    def __getitem__(self, key: int) -> dict[str, np.ndarray]:
        """The example with flat key epoch * num_examples + position (see RankBatches)."""
        return self.example(*divmod(key, self.num_images * self.repeats))

    def example(self, epoch: int, position: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, position, 1])  # 1: the example stream (not the order)
        image = int(self.order(epoch)[position])
        flipped = int(rng.random() < FLIP_PROBABILITY)
        template = int(rng.integers(len(self.prompt_ids)))
        timestep = int(rng.integers(self.num_train_timesteps))
        noise = rng.standard_normal(self.latent_shape, dtype=np.float32)
        if self.noise_offset:
            # https://www.crosslabs.org//blog/diffusion-with-offset-noise
            noise += self.noise_offset * rng.standard_normal((self.latent_shape[0], 1, 1), dtype=np.float32)
        posterior_eps = rng.standard_normal(self.latent_shape, dtype=np.float32)
        return {
            "variant": np.int64(image * 2 + flipped),
            "input_ids": self.prompt_ids[template],
            "timestep": np.int64(timestep),
            "noise": noise,
            "posterior_eps": posterior_eps,
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
