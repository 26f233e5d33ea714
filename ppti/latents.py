"""Where training latents come from: the VAE posterior of each image variant, sampled fresh every step.

Every augmentation ppti applies is deterministic except the horizontal flip, so each image has exactly two
variants (as is, flipped). `CachedLatents` encodes each variant once and keeps the posterior mean and std;
`EncodedLatents` runs the VAE encoder on every micro-batch (the ppdiffusers example's way, `--no_cache_latents`).
Both return `(mean + std * eps) * scaling_factor` for the example stream's own `eps` -- exactly what the VAE's
`latent_dist.sample()` computes -- so they draw from the same distribution, and with the same `eps` give the same
latents up to float rounding.

With --buckets the variants differ in size: `BucketedLatents` keeps one cache (or encoder) per bucket, and a
micro-batch, always one bucket, is served by its bucket's.

Once the cache is built the VAE is only needed to decode validation images or to save the full pipeline;
otherwise `release_vae` drops it so its weights do not sit in (device) memory for the whole run.
"""

from __future__ import annotations

import gc
import logging

import numpy as np
import paddle

log = logging.getLogger("ppti")


def _posterior(vae, pixels: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(mean, std) of the VAE's latent distribution for pixels (B, 3, H, W) in the VAE's dtype."""
    dist = vae.encode(pixels.astype(vae.dtype)).latent_dist
    return dist.mean, dist.std


class EncodedLatents:
    """Encodes the batch's image variants with the VAE at every step (`--no_cache_latents`)."""

    def __init__(self, vae, pixels: np.ndarray):
        self.vae, self.pixels = vae, pixels  # pixels: (V, 3, H, W) float32, every variant decoded once
        self.scaling = float(vae.config.scaling_factor)

    def sample(self, variants: paddle.Tensor, eps: paddle.Tensor) -> paddle.Tensor:
        """(B, C, h, w) float32 latents of `variants` (B,) for the posterior noise `eps` (B, C, h, w)."""
        pixels = paddle.to_tensor(self.pixels[variants.numpy()])
        with paddle.no_grad():
            mean, std = _posterior(self.vae, pixels)
        mean, std = mean.astype("float32"), std.astype("float32")
        return (mean + std * eps) * self.scaling


class CachedLatents:
    """Posterior mean/std of every variant, computed once (one VAE encode per variant), kept in float32."""

    def __init__(self, vae, pixels: np.ndarray):
        self.scaling = float(vae.config.scaling_factor)
        means, stds = [], []
        with paddle.no_grad():
            for variant in pixels:  # one at a time: the activation peak of a single image
                mean, std = _posterior(vae, paddle.to_tensor(variant[None]))
                means.append(mean.astype("float32"))
                stds.append(std.astype("float32"))
        self.mean = paddle.concat(means)  # (V, C, h, w)
        self.std = paddle.concat(stds)

    def sample(self, variants: paddle.Tensor, eps: paddle.Tensor) -> paddle.Tensor:
        """(B, C, h, w) float32 latents of `variants` (B,) for the posterior noise `eps` (B, C, h, w)."""
        mean = paddle.gather(self.mean, variants)
        std = paddle.gather(self.std, variants)
        return (mean + std * eps) * self.scaling


class BucketedLatents:
    """One CachedLatents (or EncodedLatents) per bucket; each micro-batch is drawn from a single bucket."""

    def __init__(self, kind, vae, pixels, variant_bucket: np.ndarray):
        self.bucket = variant_bucket  # (V,) bucket of each variant
        self.local = np.zeros_like(variant_bucket)  # (V,) index of each variant within its bucket
        self.sources = {}
        for bucket in np.unique(variant_bucket):
            members = np.flatnonzero(variant_bucket == bucket)
            self.local[members] = np.arange(len(members))
            self.sources[int(bucket)] = kind(vae, np.stack([pixels[v] for v in members]))

    def sample(self, variants: paddle.Tensor, eps: paddle.Tensor) -> paddle.Tensor:
        """(B, C, h, w) float32 latents of `variants` (B,), all of one bucket, for the posterior noise `eps`."""
        ids = variants.numpy()
        buckets = set(self.bucket[ids].tolist())
        if len(buckets) != 1:
            raise RuntimeError(f"a micro-batch mixes buckets {sorted(buckets)}")
        return self.sources[buckets.pop()].sample(paddle.to_tensor(self.local[ids]), eps)


def latent_source(vae, pixels, cache: bool, variant_bucket: np.ndarray | None = None):
    """The cache (default) or per-step encoding, as `--cache_latents` / `--no_cache_latents` asks; per bucket when
    `variant_bucket` ((V,) bucket of each variant) is given."""
    kind = CachedLatents if cache else EncodedLatents
    source = kind(vae, pixels) if variant_bucket is None else BucketedLatents(kind, vae, pixels, variant_bucket)
    if cache:
        log.info("latents: posterior of %d image variants cached (the VAE encoded each once)", len(pixels))
    else:
        log.info("latents: the VAE encodes every micro-batch (--no_cache_latents)")
    return source


def vae_needed_after_setup(config) -> bool:
    """Whether the VAE is used after the latent cache is built: per-step encoding, validation images (decoded by
    the pipeline) or saving the full pipeline."""
    return not config.cache_latents or bool(config.validation_prompt) or config.saves_full_pipeline


def release_vae(pipeline) -> None:
    """Drop the pipeline's VAE so its weights leave (device) memory; the pipeline then cannot decode or be saved."""
    pipeline.vae = None  # ppdiffusers also records the missing component in the pipeline config
    gc.collect()
    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        paddle.device.cuda.empty_cache()
    log.info("VAE released from memory: latents are cached and neither validation nor the full-pipeline save "
             "needs it")


def latent_shape(vae, height: int, width: int) -> tuple[int, int, int]:
    """(C, h, w) of the VAE latents for an image of height x width."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.latent_channels), height // factor, width // factor
