"""SDXL's crop conditioning in SDXL's own units: the crop corner in the pixels of the image after its resize to cover
the target (as diffusers' train_text_to_image_sdxl.py records it), the original size unchanged; and a two-rank SDXL
run with aspect-ratio buckets still trains like one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import ENTRY, train_args
from helpers import SCALE_SENSITIVE_ADAM, launch
from ppti.config import parse_config
from ppti.data import load_concept_images, size_conditioning
from ppti.distributed import DistContext
from ppti.train import setup, train


@pytest.mark.parametrize("size, expected", [
    # 4000x3000 at 1024: short side 3000 -> 1024, long side int(1024 * 4000 / 3000) = 1365; centred crop corner
    # x = round((1365 - 1024) / 2) = round(170.5) = 170 (Python's round, as diffusers); ppti wrote 500 before
    ((4000, 3000), [3000, 4000, 0, 170, 1024, 1024]),
    ((3000, 4000), [4000, 3000, 170, 0, 1024, 1024]),  # the same photo upright: the corner moves to y
    # 1080x1920 (a phone's portrait): width 1080 -> 1024, height int(1024 * 1920 / 1080) = 1820;
    # y = round((1820 - 1024) / 2) = 398 (in the photo's pixels it would be 420)
    ((1080, 1920), [1920, 1080, 398, 0, 1024, 1024]),
    ((1024, 1024), [1024, 1024, 0, 0, 1024, 1024]),
])
def test_the_crop_corner_is_in_the_resized_images_pixels(size, expected):
    assert size_conditioning(Image.new("RGB", size), 1024, 1024, center_crop=True).tolist() == expected
    # without --center_crop the whole image is resized: corner (0, 0), the original size unchanged
    assert size_conditioning(Image.new("RGB", size), 1024, 1024, center_crop=False).tolist() == \
        expected[:2] + [0, 0, 1024, 1024]


def test_loaded_images_carry_the_corner_of_their_resized_size_for_both_variants(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)).save(data / "wide.png")  # w 150, h 100
    Image.fromarray(rng.integers(0, 255, (100, 300, 3), dtype=np.uint8)).save(data / "wider.png")  # w 300, h 100
    # --resolution 64 --center_crop: wide.png resized to 96x64 (int(64 * 150 / 100) = 96), corner x = 16
    square = load_concept_images(data, 64, 64, center_crop=True)
    assert [p.name for p in square.paths] == ["wide.png", "wider.png"]
    # wider.png resized to 192x64, corner x = (192 - 64) / 2 = 64
    assert square.time_ids.tolist() == [[100, 150, 0, 16, 64, 64]] * 2 + [[100, 300, 0, 64, 64, 64]] * 2
    # a 64 x 128 bucket (height x width): wide.png is narrower than 2:1, so its width fits -- resized
    # 128 x int(128 * 100 / 150) = 85 high, corner y = round((85 - 64) / 2) = round(10.5) = 10; wider.png (3:1)
    # gets its height to 64: 192 wide, corner x = 32
    bucketed = load_concept_images(data, 64, 64, center_crop=False, bucket_sizes=[(64, 128)])
    assert bucketed.time_ids.tolist() == [[100, 150, 10, 0, 64, 128]] * 2 + [[100, 300, 0, 32, 64, 128]] * 2


# ------------------------------------------------------------------------------------------------------------
# two ranks, SDXL, buckets
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    from ppti.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sdxl", arch="sdxl")


def _rows(path: Path) -> np.ndarray:
    (value,) = paddle.load(str(path)).values()
    return np.asarray(value)


def test_two_ranks_with_buckets_train_sdxl_like_one_process(tiny_sdxl, tmp_path):
    """2 ranks x batch 1 == 1 process x batch 2 for both row sets, with images in two buckets and their time_ids."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for name, (w, h) in {"wide-1": (256, 70), "wide-2": (300, 80), "tall-1": (60, 240), "tall-2": (64, 250)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(data / f"{name}.png")
    common = dict(num_vectors=2, resolution=128, buckets=True, max_train_steps=2, scale_lr=True,
                  **SCALE_SENSITIVE_ADAM)
    two = tmp_path / "two"
    code, console, _ = launch(ENTRY, train_args(tiny_sdxl, data, two, train_batch_size=1, **common), tmp_path / "logs")
    assert code == 0, console[-3000:]
    one_config = parse_config(train_args(tiny_sdxl, data, tmp_path / "one", train_batch_size=2, **common))
    run = setup(one_config, DistContext())
    assert (run.stream.time_ids[:, 2:4] > 0).any()  # (crop corners in play)
    initial = run.conditioning.learned_rows()
    train(one_config, DistContext())
    for name, start in zip(("learned_embeds.pdparams", "learned_embeds_2.pdparams"), initial):
        update, expected = _rows(two / name) - start, _rows(tmp_path / "one" / name) - start
        assert np.abs(expected).max() > 1e-3
        assert np.abs(update - expected).max() / np.abs(expected).max() <= 1e-5, name
