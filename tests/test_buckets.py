"""Aspect-ratio buckets: the sizes, the crop rule, one bucket per batch on every rank, exact resume."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import ENTRY, train_args
from helpers import SCALE_SENSITIVE_ADAM, assert_same_update, initial_rows, launch, saved_rows
from ppti import checkpoint
from ppti.buckets import Buckets, bucket_sizes, closest_bucket, default_sides
from ppti.config import ConfigError, parse_config
from ppti.data import RankBatches, StreamLayout, load_concept_images
from ppti.distributed import DistContext
from ppti.embeddings import read_embeddings
from ppti.latents import EncodedLatents, latent_shape, latent_source
from ppti.train import batches, micro_step_loss, setup, train

# At --resolution 128 (sides 64..256) the buckets are 256x64, 128x128 and 64x256 (height x width): the tiny
# model trains on all three in a second.
RESOLUTION = 128
SHAPES = {"wide-1": (256, 70), "wide-2": (300, 80), "square-1": (128, 128), "square-2": (100, 110),
          "tall-1": (60, 240), "tall-2": (64, 250)}  # name -> (width, height)


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory) -> Path:
    """Two landscape, two square-ish and two portrait images, each with a caption file."""
    folder = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for name, (w, h) in SHAPES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a {{}} in the {name.split('-')[0]} frame", encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------------------------
# sizes and assignment
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [256, 512, 768, 1024])
def test_bucket_sizes_are_multiples_of_64_near_the_target_area(resolution):
    low, high = default_sides(resolution)
    sizes = bucket_sizes(resolution, low, high)
    assert (resolution, resolution) in sizes
    assert len(sizes) >= 5
    for h, w in sizes:
        assert h % 64 == 0 and w % 64 == 0
        assert abs(h * w / resolution**2 - 1) <= 0.10, (h, w)
        assert low <= min(h, w) and max(h, w) <= high
        assert (w, h) in sizes  # every landscape bucket has its portrait
    if resolution == 512:
        assert {(448, 576), (384, 640), (576, 448), (640, 384)} <= set(sizes)
    narrow = bucket_sizes(resolution, resolution - 64, resolution + 64)  # configurable min/max side
    assert all(resolution - 64 <= s <= resolution + 64 for size in narrow for s in size)


def test_each_image_goes_to_the_bucket_of_the_closest_aspect_ratio():
    sizes = bucket_sizes(512, 256, 1024)
    for width, height in [(4000, 3000), (1080, 1920), (500, 500), (3000, 1000), (640, 384)]:
        chosen = sizes[closest_bucket(width, height, sizes)]
        best = min(abs(math.log(w / h) - math.log(width / height)) for h, w in sizes)
        assert abs(math.log(chosen[1] / chosen[0]) - math.log(width / height)) == best
    assert sizes[closest_bucket(640, 384, sizes)] == (384, 640)


def test_images_are_cut_only_by_the_aspect_mismatch_and_centred(tmp_path):
    """Crop rule: the largest centred region with the bucket's aspect ratio, resized to the bucket. A 5:3 image
    in the 192x320 (5:3) bucket keeps its edge columns; a 4:3 image loses exactly the 30 rows top and bottom
    that separate 4:3 from 5:3 -- the rows just inside that band survive."""
    sizes = bucket_sizes(256, 128, 512)
    assert (192, 320) in sizes
    exact = np.full((300, 500, 3), 128, np.uint8)
    exact[:, :4] = exact[:, -4:] = (255, 0, 0)  # red edge columns
    Image.fromarray(exact).save(tmp_path / "a-exact.png")
    off = np.full((300, 400, 3), 128, np.uint8)
    off[:30] = off[-30:] = (0, 0, 255)  # blue: the band the rule cuts
    off[30:40] = off[-40:-30] = (0, 255, 0)  # green: just inside, must be kept
    Image.fromarray(off).save(tmp_path / "b-off.png")
    images = load_concept_images(tmp_path, 64, 64, False, bucket_sizes=sizes)
    assert [sizes[b] for b in images.image_bucket] == [(192, 320), (192, 320)]

    def rgb(variant):  # (3, H, W) in [-1, 1] -> (H, W, 3) in [0, 255]
        return (images.pixels[variant].transpose(1, 2, 0) + 1) * 127.5

    assert np.allclose(rgb(0)[:, 0], (255, 0, 0), atol=2) and np.allclose(rgb(0)[:, -1], (255, 0, 0), atol=2)
    top, bottom = rgb(2)[0], rgb(2)[-1]
    assert np.allclose(top, (0, 255, 0), atol=30) and np.allclose(bottom, (0, 255, 0), atol=30)
    reference = Image.fromarray(off).crop((0, 30, 400, 270)).resize((320, 192), resample=Image.BILINEAR)
    np.testing.assert_allclose(rgb(2), np.asarray(reference, np.float32), atol=1e-3)
    assert np.array_equal(images.pixels[3], images.pixels[2][:, :, ::-1])  # the flipped variant


# ------------------------------------------------------------------------------------------------------------
# the epoch order
# ------------------------------------------------------------------------------------------------------------
def _plan(image_bucket, global_batch, repeats=3):
    return Buckets([(256, 64), (128, 128), (64, 256)], np.asarray(image_bucket), [(4, 32, 8), (4, 16, 16), (4, 8, 32)],
                   global_batch, repeats)


def test_every_global_batch_is_one_bucket_and_no_example_repeats_within_an_epoch():
    plan = _plan([0, 1, 1, 2, 2, 2, 1], global_batch=4, repeats=3)  # buckets hold 3, 9, 9 examples
    layout = StreamLayout(7 * 3, 2, 2, tuple(plan.examples_per_bucket()))
    assert layout.micro_batches_per_epoch == 0 + 2 + 2  # bucket 0 (3 < 4 examples) never trains
    for epoch in range(3):
        order = plan.order(seed=5, epoch=epoch)
        assert len(order) == layout.micro_batches_per_epoch * layout.global_batch
        for batch in order.reshape(-1, 4):
            assert len({int(plan.image_bucket[i]) for i in batch}) == 1
        assert np.bincount(order, minlength=7).max() <= 3  # each image at most --repeats times
    assert not np.array_equal(plan.order(5, 0), plan.order(5, 1))
    assert np.array_equal(plan.order(5, 1), _plan([0, 1, 1, 2, 2, 2, 1], 4).order(5, 1))
    assert "256x64: 1 image (never trained" in plan.summary() and "1 of 9 examples dropped" in plan.summary()


def test_every_rank_of_a_step_draws_the_same_bucket(mixed_images, tiny_model_en, tmp_path, ppti_log):
    config = parse_config(train_args(tiny_model_en, mixed_images, tmp_path, resolution=RESOLUTION, buckets=True,
                                     train_batch_size=2, max_train_steps=12))
    run = setup(config, DistContext())  # global batch 2: the stream of 1 card x 2 and of 2 cards x 1
    # the start-up summary names every bucket (height x width) and how many images it holds
    assert "buckets 256x64: 2 images, 128x128: 2 images, 64x256: 2 images" in ppti_log.text
    assert re.search(r"epochs\s+= 1\.00\n", ppti_log.text)  # 12 steps = 12 single-bucket batches of 2
    shapes = {bucket: shape for bucket, shape in enumerate(run.stream.buckets.latent_shapes)}
    assert shapes == {0: (4, 32, 8), 1: (4, 16, 16), 2: (4, 8, 32)}
    seen = set()
    two_cards = StreamLayout(run.layout.num_examples, 1, 2, run.layout.bucket_examples)
    ranks = [RankBatches(two_cards, r, 0, 12) for r in (0, 1)]
    for keys0, keys1 in zip(*ranks):
        buckets = {run.stream.buckets.image_bucket[run.stream[k]["variant"] // 2] for k in keys0 + keys1}
        assert len(buckets) == 1
        seen |= buckets
    assert seen == {0, 1, 2}
    # the frozen evaluation batch (--eval_steps) is cut into chunks of one bucket each, so its loss runs
    assert {tuple(chunk["noise"].shape[1:]) for chunk in run.evaluation.frozen.chunks} <= set(shapes.values())
    assert np.isfinite(run.evaluation.frozen.loss(lambda batch: micro_step_loss(run, batch)))
    for batch in batches(run, 0):  # what the loader hands the loop: one size per micro-batch, its bucket's
        bucket = {int(run.stream.buckets.image_bucket[v // 2]) for v in batch["variant"].numpy()}
        assert len(bucket) == 1 and tuple(batch["noise"].shape[1:]) == shapes[bucket.pop()]
        assert run.latents.sample(batch["variant"], batch["posterior_eps"]).shape == batch["noise"].shape


@pytest.mark.parametrize("flags, message", [
    ({"buckets": True, "height": 128}, "--height/--width do not apply"),
    ({"buckets": True, "bucket_min_side": 100}, "--bucket_min_side 100 is not a multiple of 64"),
    ({"buckets": True, "bucket_min_side": 384, "bucket_max_side": 448}, "no bucket"),
])
def test_bad_bucket_flags_are_refused_before_loading(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(train_args(tmp_path / "no-model", tmp_path, tmp_path / "out", **flags))


def test_bucketed_cache_gives_each_variant_its_own_vae_posterior(mixed_images, tiny_model_en):
    """The per-bucket cache samples what encoding the batch at its bucket size gives, and refuses mixed batches."""
    from ppdiffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(tiny_model_en / "vae"))
    vae.eval()
    images = load_concept_images(mixed_images, 64, 64, False, bucket_sizes=bucket_sizes(RESOLUTION, 64, 256))
    variant_bucket = np.repeat(images.image_bucket, 2)
    cached = latent_source(vae, images.pixels, True, variant_bucket)
    encoded = latent_source(vae, images.pixels, False, variant_bucket)
    for bucket in range(3):
        variants = np.flatnonzero(variant_bucket == bucket)[::-1].copy()  # both images, both flips, reordered
        shape = latent_shape(vae, *bucket_sizes(RESOLUTION, 64, 256)[bucket])
        eps = paddle.to_tensor(np.random.default_rng(bucket).standard_normal((len(variants), *shape), np.float32))
        direct = EncodedLatents(vae, np.stack([images.pixels[v] for v in variants]))
        expected = direct.sample(paddle.arange(len(variants)), eps).numpy()
        np.testing.assert_allclose(cached.sample(paddle.to_tensor(variants), eps).numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(encoded.sample(paddle.to_tensor(variants), eps).numpy(), expected, atol=1e-5)
    with pytest.raises(RuntimeError, match="mixes buckets"):
        cached.sample(paddle.to_tensor([0, 4]), paddle.zeros([2, 4, 16, 16]))


# ------------------------------------------------------------------------------------------------------------
# exactness: multi-card, resume
# ------------------------------------------------------------------------------------------------------------
def test_two_ranks_with_buckets_train_like_one_process(mixed_images, tiny_model_en, tmp_path):
    """2 ranks x batch 1 == 1 process x batch 2, with buckets of three sizes."""
    common = dict(resolution=RESOLUTION, buckets=True, max_train_steps=3, scale_lr=True, caption_source="both",
                  **SCALE_SENSITIVE_ADAM)
    two = tmp_path / "two-ranks"
    code, console, _ = launch(ENTRY, train_args(tiny_model_en, mixed_images, two, train_batch_size=1, **common),
                              tmp_path / "launch-log")
    assert code == 0, console[-3000:]
    one_config = parse_config(train_args(tiny_model_en, mixed_images, tmp_path / "one", train_batch_size=2,
                                         **common))
    train(one_config, DistContext())
    assert_same_update(saved_rows(two), saved_rows(tmp_path / "one"), initial_rows(tiny_model_en, one_config))


def test_resume_with_buckets_and_captions_is_bitwise(mixed_images, tiny_model_en, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    settings = dict(resolution=RESOLUTION, buckets=True, caption_source="both", train_batch_size=2,
                    max_train_steps=8, checkpointing_steps=4, lr_scheduler="linear", lr_warmup_steps=2)
    train(parse_config(train_args(tiny_model_en, mixed_images, whole, **settings)), DistContext())
    train(parse_config(train_args(tiny_model_en, mixed_images, resumed, **settings,
                                  resume_from_checkpoint=whole / "checkpoints" / "checkpoint-4")), DistContext())
    (final,), (again,) = (read_embeddings(d / "learned_embeds.pdparams") for d in (whole, resumed))
    (middle,) = read_embeddings(whole / "checkpoints" / "checkpoint-4" / "learned_embeds.pdparams")
    assert np.array_equal(final.vectors, again.vectors)
    assert not np.array_equal(final.vectors, middle.vectors)
    # 6 images in 3 buckets of 2 x 4 repeats, global batch 2: 12 micro-batches per epoch
    state = json.loads((whole / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert (state["micro_batches_per_epoch"], state["epoch"], state["position_in_epoch"]) == (12, 0, 16)
    with pytest.raises(checkpoint.CheckpointError, match="--buckets is False"):
        train(parse_config(train_args(tiny_model_en, mixed_images, tmp_path / "other",
                                      **dict(settings, buckets=False),
                                      resume_from_checkpoint=whole / "checkpoints" / "checkpoint-4")),
              DistContext())
