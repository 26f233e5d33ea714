"""The latent cache draws from exactly the distribution the VAE gives every step, and the VAE leaves memory
when nothing needs it any more."""

import numpy as np
import paddle
import pytest
from PIL import Image, ImageOps

from ppti.config import parse_config
from ppti.data import ExampleStream, load_concept_images
from ppti.distributed import DistContext
from ppti.latents import CachedLatents, EncodedLatents, latent_shape
from ppti.train import setup

from conftest import train_args

SIZE = 64


@pytest.fixture(scope="module")
def vae(tiny_model_en):
    from ppdiffusers import AutoencoderKL

    model = AutoencoderKL.from_pretrained(str(tiny_model_en / "vae"))
    model.eval()
    return model


@pytest.fixture(scope="module")
def images():
    from conftest import DEMO_IMAGES

    return load_concept_images(DEMO_IMAGES, SIZE, SIZE, center_crop=False)


def augmented(path, flipped: bool) -> paddle.Tensor:
    """(1, 3, H, W) in [-1, 1], augmented here with PIL directly (independently of ppti.data)."""
    image = Image.open(path).convert("RGB").resize((SIZE, SIZE), resample=Image.BILINEAR)
    if flipped:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return paddle.to_tensor(array.transpose(2, 0, 1)[None])


def test_cache_holds_the_vae_posterior_of_every_augmented_image_both_flips(vae, images):
    cache = CachedLatents(vae, images.pixels)
    assert cache.mean.shape[0] == 2 * images.num_images  # both variants of every image
    with paddle.no_grad():
        for i, path in enumerate(images.paths):
            for flipped in (0, 1):
                dist = vae.encode(augmented(path, bool(flipped))).latent_dist
                np.testing.assert_allclose(cache.mean[2 * i + flipped].numpy(), dist.mean[0].numpy(), atol=1e-5)
                np.testing.assert_allclose(cache.std[2 * i + flipped].numpy(), dist.std[0].numpy(), atol=1e-5)
            # the flipped variant is a different latent, not a copy
            assert np.abs(cache.mean[2 * i].numpy() - cache.mean[2 * i + 1].numpy()).max() > 1e-3


def test_cached_sample_is_the_vaes_own_sampler_for_the_same_noise(vae, images):
    from ppdiffusers.utils import randn_tensor

    cache = CachedLatents(vae, images.pixels)
    with paddle.no_grad():
        dist = vae.encode(augmented(images.paths[1], flipped=True)).latent_dist
    reference = dist.sample(generator=paddle.Generator().manual_seed(11))  # what the example's step draws
    eps = randn_tensor(dist.mean.shape, generator=paddle.Generator().manual_seed(11))
    sample = cache.sample(paddle.to_tensor([3]), eps) / cache.scaling  # variant 3 = image 1, flipped
    np.testing.assert_allclose(sample.numpy(), reference.numpy(), atol=1e-5)


def test_cached_and_per_step_encoding_give_the_same_latents(vae, images):
    variants = paddle.to_tensor([0, 5, 2, 7])
    eps = paddle.to_tensor(np.random.default_rng(0).standard_normal((4, *latent_shape(vae, SIZE, SIZE)))
                           .astype(np.float32))
    cached = CachedLatents(vae, images.pixels).sample(variants, eps)
    encoded = EncodedLatents(vae, images.pixels).sample(variants, eps)
    np.testing.assert_allclose(cached.numpy(), encoded.numpy(), atol=1e-5)


def test_stream_draws_both_flip_variants_of_every_image_evenly():
    stream = ExampleStream(seed=3, num_images=4, repeats=200, prompt_ids=np.zeros((2, 5), np.int64),
                           latent_shape=(4, 2, 2), num_train_timesteps=1000)
    variants = np.array([stream.example(0, p)["variant"] for p in range(800)])
    counts = np.bincount(variants, minlength=8)
    assert counts.sum() == 800 and (counts > 0).all()
    flipped_share = (variants % 2).mean()
    assert 0.45 < flipped_share < 0.55


def _embedding(path) -> np.ndarray:
    return np.asarray(next(iter(paddle.load(str(path)).values())), dtype=np.float32)


def test_no_cache_latents_trains_the_same_embedding(tiny_model_en, demo_images, tmp_path):
    from ppti.train import train

    cached = train(parse_config(train_args(tiny_model_en, demo_images, tmp_path / "cached")))
    encoded = train(parse_config(train_args(tiny_model_en, demo_images, tmp_path / "encoded",
                                            no_cache_latents=True)))
    np.testing.assert_allclose(_embedding(encoded), _embedding(cached), rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides, vae_kept", [
    ({}, False),
    ({"validation_prompt": "a photo of <demo-toy>"}, True),
    ({"no_cache_latents": True}, True),
    ({"only_save_embeds": False}, True),
])
def test_vae_released_only_when_nothing_needs_it(tiny_model_en, demo_images, tmp_path, overrides, vae_kept):
    run = setup(parse_config(train_args(tiny_model_en, demo_images, tmp_path, **overrides)), DistContext())
    assert (run.components.pipeline.vae is not None) == vae_kept
    if not vae_kept:
        assert run.latents.mean.shape[0] == 8  # the cache was built before the VAE left
