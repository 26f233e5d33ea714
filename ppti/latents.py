"""Where training latents come from: the VAE posterior of each image variant, sampled fresh every step.

`CachedLatents` encodes each variant (image as is / flipped) once and keeps the posterior mean and std;
`EncodedLatents` runs the VAE encoder on every micro-batch (the ppdiffusers example's way). Both return
`(mean + std * eps) * scaling_factor` for the example's own `eps`, so they draw from the same distribution.
"""

from __future__ import annotations

import numpy as np
import paddle


def _posterior(vae, pixels: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    dist = vae.encode(pixels).latent_dist
    return dist.mean, dist.std


class EncodedLatents:
    """Encodes the batch's pixels with the VAE at every step."""

    def __init__(self, vae, pixels: np.ndarray, dtype: str = "float32"):
        self.vae, self.pixels, self.dtype = vae, pixels, dtype
        self.scaling = float(vae.config.scaling_factor)

    def sample(self, variants: paddle.Tensor, eps: paddle.Tensor) -> paddle.Tensor:
        pixels = paddle.to_tensor(self.pixels[variants.numpy()], dtype=self.dtype)
        with paddle.no_grad():
            mean, std = _posterior(self.vae, pixels)
        return ((mean + std * eps.astype(mean.dtype)) * self.scaling).astype("float32")


class CachedLatents:
    """Posterior mean/std of every variant, computed once (one VAE encode per variant)."""

    def __init__(self, vae, pixels: np.ndarray, dtype: str = "float32"):
        self.scaling = float(vae.config.scaling_factor)
        means, stds = [], []
        with paddle.no_grad():
            for variant in pixels:  # one at a time: peak memory of a single image
                mean, std = _posterior(vae, paddle.to_tensor(variant[None], dtype=dtype))
                means.append(mean.astype("float32"))
                stds.append(std.astype("float32"))
        self.mean = paddle.concat(means)  # (V, C, h, w)
        self.std = paddle.concat(stds)

    def sample(self, variants: paddle.Tensor, eps: paddle.Tensor) -> paddle.Tensor:
        mean = paddle.gather(self.mean, variants)
        std = paddle.gather(self.std, variants)
        return (mean + std * eps) * self.scaling


def latent_shape(vae, height: int, width: int) -> tuple[int, int, int]:
    """(C, h, w) of the VAE latents for an image of height x width."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.latent_channels), height // factor, width // factor
