"""Images: decoding every kind of file users have, skipping bad ones; the deterministic example stream."""

import numpy as np
import pytest
from PIL import Image

from ppti.data import (
    DataError, ExampleStream, RankBatches, StreamLayout, center_crop_to_aspect, image_variants, load_concept_images,
    to_rgb,
)


def _save(path, image, **kw):
    image.save(path, **kw)
    return path


def test_every_image_mode_becomes_correct_rgb(tmp_path):
    gray16 = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert gray16.mode.startswith("I")
    assert to_rgb(gray16).getpixel((0, 0)) == (255, 255, 255)
    mid16 = Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))  # ~ half of 16-bit range
    assert to_rgb(mid16).getpixel((0, 0)) == (128, 128, 128)  # not clipped to white
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # composited on white, not black/red
    palette = Image.new("P", (8, 8), 3)
    palette.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 0, 200, 0] + [0] * 756)
    assert to_rgb(palette).getpixel((0, 0)) == (0, 200, 0)
    assert to_rgb(Image.new("L", (8, 8), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("CMYK", (8, 8), (0, 0, 0, 0))).mode == "RGB"


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (0, 0, 255))  # landscape on disk
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    path = _save(tmp_path / "rot.jpg", image, exif=exif)
    images = load_concept_images(tmp_path, 16, 8, center_crop=True)
    assert images.num_images == 1
    with Image.open(path) as raw:
        assert to_rgb(raw).size == (10, 20)  # displayed portrait


def test_corrupt_and_truncated_images_are_skipped_with_warning(tmp_path, caplog):
    _save(tmp_path / "good.png", Image.new("RGB", (16, 16), (10, 20, 30)))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    full = tmp_path / "full.png"
    _save(full, Image.effect_noise((64, 64), 50).convert("RGB"))
    (tmp_path / "truncated.png").write_bytes(full.read_bytes()[:200])
    full.unlink()
    (tmp_path / "notes.txt").write_text("hello")
    with caplog.at_level("WARNING", logger="ppti"):
        images = load_concept_images(tmp_path, 8, 8, center_crop=False)
    assert [p.name for p in images.paths] == ["good.png"]
    skipped = {p.name for p, _ in images.skipped}
    assert {"broken.jpg", "truncated.png", "notes.txt"} <= skipped
    assert "broken.jpg" in caplog.text and "truncated.png" in caplog.text


def test_folder_without_decodable_images_is_refused_listing_skips(tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"no decodable images.*a\.png.*readme\.md"):
        load_concept_images(tmp_path, 8, 8, center_crop=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        load_concept_images(empty, 8, 8, center_crop=False)
    with pytest.raises(DataError, match="no such directory"):
        load_concept_images(tmp_path / "missing", 8, 8, center_crop=False)


@pytest.mark.parametrize("height, width", [(64, 64), (64, 128), (96, 32)])
def test_variants_have_requested_shape_and_flip(height, width):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    variants = image_variants(image, height, width, center_crop=True)
    assert variants.shape == (2, 3, height, width) and variants.dtype == np.float32
    assert np.array_equal(variants[1], variants[0][:, :, ::-1])
    assert -1.0 <= variants.min() and variants.max() <= 1.0


def test_center_crop_keeps_target_aspect():
    assert center_crop_to_aspect(Image.new("RGB", (300, 100)), 64, 64).size == (100, 100)
    assert center_crop_to_aspect(Image.new("RGB", (300, 300)), 64, 128).size == (300, 150)


def _stream(seed=3, num_images=3, repeats=4):
    prompts = np.arange(5 * 7, dtype=np.int64).reshape(5, 7)
    return ExampleStream(seed, num_images, repeats, prompts, (4, 2, 2), 1000, noise_offset=0.1)


def test_examples_are_a_pure_function_of_seed_epoch_position():
    a, b = _stream(), _stream()
    for key in (0, 5, 13):
        ea, eb = a[key], b[key]
        for name in ea:
            assert np.array_equal(ea[name], eb[name]), name
    assert not np.array_equal(a[0]["noise"], a[1]["noise"])
    assert not np.array_equal(_stream(seed=4)[0]["noise"], a[0]["noise"])


def test_epoch_uses_every_example_once_and_reshuffles():
    stream = _stream(num_images=3, repeats=4)
    first = [stream.example(0, p)["variant"] // 2 for p in range(12)]
    assert sorted(first) == sorted([0, 1, 2] * 4)
    assert list(stream.order(0)) != list(stream.order(1))


def test_ranks_split_each_global_batch_without_overlap():
    layout = StreamLayout(num_examples=10, batch_size=2, world_size=2)  # 2 global batches per epoch, 2 dropped
    assert layout.micro_batches_per_epoch == 2
    rank0 = list(RankBatches(layout, 0, 0, 4))
    rank1 = list(RankBatches(layout, 1, 0, 4))
    assert rank0[0] == [0, 1] and rank1[0] == [2, 3]
    assert rank0[2] == [10, 11]  # epoch 1 starts at key 10
    seen_epoch0 = sorted(k for batch in rank0[:2] + rank1[:2] for k in batch)
    assert seen_epoch0 == list(range(8))
    single = StreamLayout(num_examples=10, batch_size=4, world_size=1)
    assert list(RankBatches(single, 0, 0, 2)) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # same keys as both ranks together
    assert list(RankBatches(layout, 0, 3, 4)) == rank0[3:]  # resuming mid-run yields the same batches
