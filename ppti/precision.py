"""The frozen models: frozen for real (no weight gradients), and in half precision with
`--mixed_precision fp16|bf16`.

The UNet, VAE and text encoder compute in the chosen dtype, as ppdiffusers' own half-precision inference does, so
the pipeline that renders validation images stays consistent (its latents take the text encoder's dtype). What
stays in float32, and why:
- the trainable placeholder rows and the AdamW moments: they accumulate small updates that half precision would
  round away. `PlaceholderEmbedding` casts the rows to the text encoder's dtype in its forward, and their
  gradient comes back in float32. The cast happens before the rows are created, so they are never cast;
- the loss (the UNet prediction is cast to float32 before the MSE).
fp16 gradients flowing back through the UNet and text encoder can underflow, so fp16 scales the loss
(`paddle.amp.GradScaler`, dynamic; steps with inf/nan gradients are skipped). bf16 has float32's range and
needs no scaling.

Whether a device can compute in a dtype is checked before any model loads by running the kernels a Stable
Diffusion step needs, because Paddle's capability flags do not say whether the kernels exist (a CPU with
AVX512-BF16 reports bfloat16 support while this CPU build has no bfloat16 matmul).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import paddle
import paddle.nn.functional as F

from .config import ConfigError

log = logging.getLogger("ppti")

DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
INITIAL_LOSS_SCALE = 2.0**16  # the diffusers/torch default; GradScaler halves it on overflow


@dataclass
class Precision:
    mode: str  # no | fp16 | bf16
    scaler: paddle.amp.GradScaler  # disabled (a pass-through) unless fp16

    @property
    def dtype(self) -> str:
        """The compute dtype of the frozen UNet and VAE."""
        return DTYPES[self.mode]

    def backward(self, loss: paddle.Tensor) -> None:
        """Backward of the (scaled, for fp16) loss."""
        self.scaler.scale(loss).backward()

    def step(self, optimizer) -> None:
        """Unscale (fp16), skip the update if a gradient overflowed, else optimizer.step(); then adapt the scale."""
        self.scaler.step(optimizer)
        self.scaler.update()


def kernel_problem(dtype: str) -> str | None:
    """None when the current device runs a conv + group norm + attention step forward and backward in `dtype`;
    otherwise Paddle's reason (first line)."""
    try:
        x = paddle.randn([1, 8, 8, 8]).astype(dtype)
        weight = paddle.randn([8, 8, 3, 3]).astype(dtype)
        weight.stop_gradient = False
        h = F.silu(F.group_norm(F.conv2d(x, weight, padding=1), num_groups=4))
        tokens = h.flatten(2).transpose([0, 2, 1])  # (1, 64, 8)
        attention = F.softmax(paddle.matmul(tokens, tokens, transpose_y=True), axis=-1)
        F.layer_norm(paddle.matmul(attention, tokens), [8]).astype("float32").mean().backward()
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot compute in this dtype here"
        return str(exc).strip().splitlines()[0].split(". ")[0][:200]
    return None


def resolve_precision(mode: str) -> Precision:
    """The precision `--mixed_precision` asks for, or a ConfigError saying why this device cannot run it."""
    if mode not in DTYPES:
        raise ConfigError(f"--mixed_precision must be one of {', '.join(DTYPES)} (got {mode!r})")
    if mode != "no":
        device = paddle.device.get_device()
        problem = kernel_problem(DTYPES[mode])
        if problem:
            raise ConfigError(
                f"--mixed_precision {mode}: this Paddle build cannot compute in {DTYPES[mode]} on {device} "
                f"({problem}). Use --mixed_precision no on this device; {mode} needs a GPU"
                + (" with bfloat16 support (compute capability 8.0+, e.g. A100/RTX 30xx)" if mode == "bf16" else "")
            )
    return Precision(mode, paddle.amp.GradScaler(enable=mode == "fp16", init_loss_scaling=INITIAL_LOSS_SCALE))


def prepare_frozen_models(components, precision: Precision) -> None:
    """Freeze the UNet and VAE and cast the three models to the compute dtype. Call it before the trainable rows
    are installed (install_trainable_rows freezes the text encoder and creates the rows in float32).

    Freezing matters for speed and memory: a loaded model's parameters are trainable, so without it every backward
    would also compute (and keep) a gradient for each of the UNet's weights -- about a third of the step's work and
    a second copy of the UNet in memory -- although only the placeholder rows train.
    """
    for model in (components.unet, components.vae):
        for param in model.parameters():
            param.stop_gradient = True
    if precision.mode == "no":
        return
    for model in (components.unet, components.vae, components.text_encoder):
        model.to(dtype=precision.dtype)
    log.info("mixed precision %s: UNet, VAE and text encoder in %s; trainable rows and optimizer state in "
             "float32%s", precision.mode, precision.dtype, "; dynamic loss scaling" if precision.mode == "fp16" else "")
