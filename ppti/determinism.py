"""`--deterministic`: what makes a GPU training step repeat bit for bit, and what it costs.

What is bit-identical where (docs/gpu.md says the same):
- CPU: always -- a run, a resumed run and a run on 2 ranks repeat bit for bit; --deterministic changes nothing
  there but the upsampling formulation below (whose results are the same bits).
- GPU: only with --deterministic, which
  1. sets the Paddle flags FLAGS_cudnn_deterministic (cuDNN's convolution algorithms; flash attention's backward,
     which Paddle's flash_attn_grad kernel otherwise splits) and FLAGS_embedding_deterministic (the embedding
     gradient, otherwise atomic adds) -- both exist only in GPU builds;
  2. sets the *environment variable* FLAGS_cudnn_deterministic, which is what ppdiffusers reads
     (`ppdiffusers/patches/paddle_patch.py`, `scaled_dot_product_attention_`): it switches attention from the
     cutlass memory-efficient kernel (fp32, or half precision where flash attention does not run) to plain "math"
     attention. paddle.set_flags does not set the environment, so without this fp32 attention kept the kernel
     the flag does not govern. Cost: math attention holds batch x heads x tokens^2 fp32 values per attention
     layer for the backward (docs/gpu.md gives the numbers; about 2.5 GiB more per image at 512 px for SD-1.5);
  3. replaces the nearest-neighbour upsampling of the UNet's Upsample2D layers (`F.interpolate(mode="nearest")`,
     whose CUDA backward accumulates with atomic adds and has no flag) with `nearest_upsample` below: the same
     output bits, and a backward that adds each input pixel's gradients one after the other in a fixed order --
     the order Paddle's CPU kernel uses, so on a CPU both give the same bits.
  With it, a run repeats on the same GPU model, driver and Paddle build (`python tools/selfcheck.py` trains twice
  with --deterministic and compares the embeddings byte for byte on your GPU); other GPU models or builds may
  differ in the last bits.
"""

from __future__ import annotations

import functools
import logging
import os
import types
from typing import Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.autograd import PyLayer

log = logging.getLogger("ppti")

# flag -> value; FLAGS_embedding_deterministic=1 selects the optimized deterministic embedding-gradient kernel
DETERMINISTIC_FLAGS = {"FLAGS_cudnn_deterministic": True, "FLAGS_embedding_deterministic": 1}
# The environment variable ppdiffusers reads at every attention call (its str2bool accepts "True").
ATTENTION_ENV = "FLAGS_cudnn_deterministic"


def make_deterministic() -> tuple[list[str], list[str]]:
    """Set ppdiffusers' environment variable and every Paddle flag this build has; returns (flags set, flags
    absent from this build) and logs both. Call it before the models load."""
    os.environ[ATTENTION_ENV] = "True"
    set_flags, absent = [], []
    for name, value in DETERMINISTIC_FLAGS.items():
        try:
            paddle.set_flags({name: value})
        except ValueError:  # "Flag ... cannot set its value through this function": not compiled into the build
            absent.append(name)
        else:
            set_flags.append(f"{name}={value}")
    log.info("--deterministic: environment %s=True (ppdiffusers: math attention); set %s%s", ATTENTION_ENV,
             ", ".join(set_flags) or "no Paddle flag",
             f"; not in this Paddle build (CPU kernels are deterministic anyway): {', '.join(absent)}"
             if absent else "")
    return set_flags, absent


# ------------------------------------------------------------------------------------------------------------
# nearest upsampling without atomic adds
# ------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _nearest_sources(size_in: int, size_out: int) -> tuple[int, ...]:
    """For each output index, the input index nearest interpolation copies -- asked of F.interpolate itself, so
    the rule (and its float rounding) is Paddle's own."""
    probe = paddle.arange(size_in, dtype="float32").reshape([1, 1, size_in, 1])
    picked = F.interpolate(probe, size=(size_out, 1), mode="nearest").numpy().reshape(-1)
    return tuple(int(v) for v in picked)


@functools.lru_cache(maxsize=None)
def _plan(size_in: int, size_out: int) -> tuple[Optional[int], tuple[int, ...], tuple[int, ...]]:
    """(integer factor or None, first output index of each input index, its number of copies)."""
    sources = np.asarray(_nearest_sources(size_in, size_out))
    counts = np.bincount(sources, minlength=size_in)
    firsts = np.searchsorted(sources, np.arange(size_in))
    factor = size_out // size_in
    integer = size_out == factor * size_in and bool((sources == np.arange(size_out) // factor).all())
    return (factor if integer else None), tuple(int(v) for v in firsts), tuple(int(v) for v in counts)


def _accumulate(total: paddle.Tensor, part: paddle.Tensor, dtype) -> paddle.Tensor:
    """total + part rounded to `dtype` (as the kernels' `+=` on half values rounds after every addition); half
    values are added in float32 (CPUs have no half add)."""
    if dtype in (paddle.float32, paddle.float64):
        return total + part
    return (total.astype("float32") + part.astype("float32")).astype(dtype)


def _wide(x: paddle.Tensor) -> paddle.Tensor:
    """Half values as float32 (exact), for the gathers CPUs have no half kernel for."""
    return x if x.dtype in (paddle.float32, paddle.float64) else x.astype("float32")


class _NearestUpsample(PyLayer):
    """Forward: copies (expand-and-reshape for integer factors, two gathers otherwise). Backward: each input
    pixel's gradients summed in row-major order of the output pixels they came from -- plain additions of
    whole tensors, no scatter and no atomic add."""

    @staticmethod
    def forward(ctx, x, out_h: int, out_w: int, channels_last: bool):
        h_axis = 1 if channels_last else 2
        n, h, w = x.shape[0], x.shape[h_axis], x.shape[h_axis + 1]
        plan_h, plan_w = _plan(h, out_h), _plan(w, out_w)
        ctx.geometry = (list(x.shape), out_h, out_w, channels_last, plan_h, plan_w)
        if plan_h[0] is not None and plan_w[0] is not None:
            fh, fw = plan_h[0], plan_w[0]
            if channels_last:
                c = x.shape[3]
                return x.reshape([n, h, 1, w, 1, c]).expand([n, h, fh, w, fw, c]).reshape([n, out_h, out_w, c])
            c = x.shape[1]
            return x.reshape([n, c, h, 1, w, 1]).expand([n, c, h, fh, w, fw]).reshape([n, c, out_h, out_w])
        rows = paddle.to_tensor(_nearest_sources(h, out_h), dtype="int64")
        cols = paddle.to_tensor(_nearest_sources(w, out_w), dtype="int64")
        picked = paddle.index_select(paddle.index_select(_wide(x), rows, axis=h_axis), cols, axis=h_axis + 1)
        return picked.astype(x.dtype)  # (copies: exact)

    @staticmethod
    def backward(ctx, grad):
        shape, out_h, out_w, channels_last, (fh, firsts_h, counts_h), (fw, firsts_w, counts_w) = ctx.geometry
        h_axis = 1 if channels_last else 2
        n, h, w = shape[0], shape[h_axis], shape[h_axis + 1]
        total = paddle.zeros(shape, dtype=grad.dtype)
        if fh is not None and fw is not None:
            if channels_last:
                blocks = grad.reshape([n, h, fh, w, fw, shape[3]])  # (N, H, fh, W, fw, C)
                parts = (blocks[:, :, a, :, b, :] for a in range(fh) for b in range(fw))
            else:
                blocks = grad.reshape([n, shape[1], h, fh, w, fw])  # (N, C, H, fh, W, fw)
                parts = (blocks[:, :, :, a, :, b] for a in range(fh) for b in range(fw))
            for part in parts:
                total = _accumulate(total, part, grad.dtype)
            return total
        # other sizes (a latent side not a multiple of 8: the UNet passes output_size): the a-th copy of every
        # input row/column, masked where an input has fewer copies
        mask_shape = [1, h, w, 1] if channels_last else [1, 1, h, w]
        total, wide = _wide(total), _wide(grad)
        for a in range(max(counts_h)):
            rows = paddle.to_tensor(np.minimum(np.asarray(firsts_h) + a, out_h - 1), dtype="int64")
            for b in range(max(counts_w)):
                cols = paddle.to_tensor(np.minimum(np.asarray(firsts_w) + b, out_w - 1), dtype="int64")
                part = paddle.index_select(paddle.index_select(wide, rows, axis=h_axis), cols, axis=h_axis + 1)
                valid = (np.asarray(counts_h) > a)[:, None] & (np.asarray(counts_w) > b)[None, :]
                mask = paddle.to_tensor(valid.reshape(mask_shape)).expand(shape)
                total = paddle.where(mask, _accumulate(total, part, grad.dtype).astype(total.dtype), total)
        return total.astype(grad.dtype)


def nearest_upsample(x: paddle.Tensor, size: Optional[Sequence[int]] = None, scale_factor: float = 2.0,
                     data_format: str = "NCHW") -> paddle.Tensor:
    """`F.interpolate(x, size or scale_factor, mode="nearest", data_format)` for 4-D x, with the same output bits
    and a backward without atomic adds (on a CPU: the same gradient bits too)."""
    channels_last = data_format == "NHWC"
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[2], x.shape[3])
    if size is None:
        size = (int(h * scale_factor), int(w * scale_factor))
    out_h, out_w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return _NearestUpsample.apply(x, out_h, out_w, channels_last)


def _upsample2d_forward(self, hidden_states, output_size=None, scale: float = 1.0):
    """ppdiffusers Upsample2D.forward (models/resnet.py, 0.29) with `nearest_upsample` in place of
    F.interpolate; every other step as there."""
    from ppdiffusers.models.resnet import USE_PEFT_BACKEND, LoRACompatibleConv

    channel_axis = 1 if self.data_format == "NCHW" else 3
    assert hidden_states.shape[channel_axis] == self.channels
    dtype = hidden_states.dtype
    if dtype == paddle.bfloat16:  # as ppdiffusers: nearest interpolation in float32 for bfloat16
        hidden_states = hidden_states.cast("float32")
    hidden_states = nearest_upsample(hidden_states, size=output_size, scale_factor=2.0,
                                     data_format=self.data_format)
    if dtype == paddle.bfloat16:
        hidden_states = hidden_states.cast(dtype)
    if self.use_conv:
        conv = self.conv if self.name == "conv" else self.Conv2d_0
        if isinstance(conv, LoRACompatibleConv) and not USE_PEFT_BACKEND:
            hidden_states = conv(hidden_states, scale)
        else:
            hidden_states = conv(hidden_states)
    return hidden_states


def deterministic_upsampling(unet) -> int:
    """Make every nearest-upsampling Upsample2D layer of this UNet (and of no other model) use
    `nearest_upsample`; returns how many layers changed. Conv-transpose upsamplers have no interpolation."""
    from ppdiffusers.models.resnet import Upsample2D

    changed = 0
    for layer in unet.sublayers(include_self=True):
        if isinstance(layer, Upsample2D) and not layer.use_conv_transpose:
            layer.forward = types.MethodType(_upsample2d_forward, layer)
            changed += 1
    log.info("--deterministic: %d UNet upsampling layer(s) use a nearest upsampling without atomic adds", changed)
    return changed
