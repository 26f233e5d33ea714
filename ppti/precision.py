"""Precision in one place: which model computes in which dtype, loss scaling, and which steps are skipped.

`--mixed_precision fp16|bf16` runs the frozen UNet (and the VAE when it decodes validation images) in half
precision. What stays in float32, and why:
- the trainable placeholder rows and the AdamW moments: they accumulate small updates that half precision would
  round away;
- the text encoder (training and validation, as in the diffusers recipe): every gradient reaching the rows passes
  back through it, and in bf16 its forward pass would see the rows rounded to 8 mantissa bits. Its output is cast
  to the UNet's dtype;
- the VAE while it encodes the latent cache (SD VAEs overflow in fp16; a NaN latent would surface much later as a
  NaN loss). The cache is encoded once, so this costs nothing per step;
- the loss (the UNet prediction is cast to float32 before the MSE).

fp16 gradients flowing back through the UNet underflow (about 2*err/(B*4*64*64) per latent element), so fp16
scales the loss. The trained thing is one `[n, dim]` float32 tensor, so the scaling is explicit and small
(`LossScaler`): scale the loss, unscale that one gradient, check it for inf/NaN, skip the step and halve the scale
on overflow, double it after 2000 clean steps (torch.cuda.amp.GradScaler's rule and defaults, which diffusers uses).
It does not depend on Paddle's global AMP state: `paddle.amp.GradScaler` switches itself off outside
`paddle.amp.auto_cast` (paddle/amp/grad_scaler.py, `scale()`), and nothing here runs inside auto_cast.
bf16 has float32's range and needs no scaling.

Whether a device can compute in a dtype is checked before any model loads by running the kernels a Stable
Diffusion step needs, because Paddle's capability flags do not say whether the kernels exist (a CPU with
AVX512-BF16 reports bfloat16 support while this CPU build has no bfloat16 conv2d).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import paddle
import paddle.nn.functional as F

from .config import ConfigError

log = logging.getLogger("ppti")

DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
MAX_SKIPPED_IN_A_ROW = 20  # overflowing steps in a row that end the run: the scale cannot fix what is wrong


@dataclass
class LossScaler:
    """Dynamic loss scaling of the trained rows' gradient (torch.cuda.amp.GradScaler's rule and defaults).

    Disabled (fp32, bf16) it scales by 1 and never changes; the inf/NaN check still runs, so every mode knows
    before the update whether the gradient is finite."""

    enabled: bool
    scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    clean_steps: int = 0  # finite steps since the scale last changed
    skipped_in_a_row: int = 0
    skipped_steps: int = 0  # over the whole run
    _STATE = ("scale", "clean_steps", "skipped_in_a_row", "skipped_steps")

    def unscale_(self, grad: paddle.Tensor) -> paddle.Tensor:
        """Divide the gradient by the scale in place; returns 1.0 if it holds inf/NaN, else 0.0 (float32, on the
        device: reading it is the caller's one host sync)."""
        if self.enabled:
            with paddle.no_grad():  # (Paddle refuses in-place ops on a gradient tensor while recording)
                grad.scale_(1.0 / self.scale)
        return paddle.logical_not(paddle.isfinite(grad).all()).astype("float32")

    def update(self, overflow: bool) -> None:
        """After each optimizer step: back off on overflow, grow after growth_interval clean steps."""
        if overflow:
            self.skipped_in_a_row += 1
            self.skipped_steps += 1
            if self.enabled:
                self.scale *= self.backoff_factor
                self.clean_steps = 0
            return
        self.skipped_in_a_row = 0
        if self.enabled:
            self.clean_steps += 1
            if self.clean_steps == self.growth_interval:
                self.scale *= self.growth_factor
                self.clean_steps = 0

    def state_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for key in self._STATE:
            if key in state:
                setattr(self, key, type(getattr(self, key))(state[key]))


@dataclass
class Precision:
    mode: str  # no | fp16 | bf16
    dtype: str  # compute dtype of the frozen UNet (and of the VAE when it decodes)
    scaler: LossScaler = field(default_factory=lambda: LossScaler(enabled=False))

    def backward(self, loss: paddle.Tensor) -> None:
        """Backward of the loss, scaled for fp16."""
        (loss * self.scaler.scale if self.scaler.enabled else loss).backward()

    def unscale(self, rows) -> paddle.Tensor:
        """Unscale the rows' (all-reduced) gradient -- one tensor, or a list: one per text encoder; 1.0 on the
        device if any is not finite."""
        rows = rows if isinstance(rows, (list, tuple)) else [rows]
        return paddle.stack([self.scaler.unscale_(r.grad) for r in rows]).max()

    def problem(self, step: int, loss: float, overflow: bool) -> Optional[str]:
        """Why the run must end at this step (None: go on). Call before `step`; nothing has been updated yet, so
        the embedding of the previous step is still the trained one."""
        if not overflow:
            return None
        if not self.scaler.enabled:
            what = f"the loss became {loss}" if loss != loss or abs(loss) == float("inf") else (
                "the gradient of the embedding became inf/NaN")
            return (f"{what} at step {step}; the embedding of the previous step was kept. Lower --learning_rate, "
                    "set --max_grad_norm or check the training images")
        if self.scaler.skipped_in_a_row + 1 >= MAX_SKIPPED_IN_A_ROW:
            return (f"{MAX_SKIPPED_IN_A_ROW} optimizer steps in a row (up to step {step}) had inf/NaN gradients "
                    f"although the fp16 loss scale was lowered to {self.scaler.scale * self.scaler.backoff_factor:g};"
                    " the embedding of the last good step was kept. The fp16 forward pass itself overflows: use "
                    "--mixed_precision bf16 (Ampere+) or no")
        return None

    def step(self, optimizer, lr_scheduler, overflow: bool) -> bool:
        """Apply the update, or skip it when the scaled gradient overflowed (rows, AdamW moments and the LR
        schedule stay as they are); then adapt the scale. Returns whether the update was applied."""
        self.scaler.update(overflow)
        if not overflow:
            optimizer.step()
            lr_scheduler.step()
        optimizer.clear_grad()
        return not overflow


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


def device_problem(mode: str, flag: str = "--mixed_precision") -> Optional[str]:
    """Why this device cannot compute in the dtype of `mode` (None: it can), as one line naming `flag`."""
    if mode == "no" or mode == "fp32":
        return None
    dtype = DTYPES.get(mode, mode)
    problem = kernel_problem(dtype)
    if not problem:
        return None
    return (f"{flag} {mode}: this Paddle build cannot compute in {dtype} on {paddle.device.get_device()} "
            f"({problem}). Use {flag} {'no' if flag == '--mixed_precision' else 'fp32'} on this device; {mode} "
            "needs a GPU" + (" with bfloat16 support (compute capability 8.0+, e.g. A100/RTX 30xx)"
                             if mode == "bf16" else ""))


def resolve_precision(mode: str) -> Precision:
    """The precision `--mixed_precision` asks for, or a ConfigError saying why this device cannot run it."""
    if mode not in DTYPES:
        raise ConfigError(f"--mixed_precision must be one of {', '.join(DTYPES)} (got {mode!r})")
    problem = device_problem(mode)
    if problem:
        raise ConfigError(problem)
    return Precision(mode, DTYPES[mode], LossScaler(enabled=mode == "fp16"))


def prepare_frozen_models(components, precision: Precision) -> None:
    """Freeze the UNet and VAE and cast the UNet to the compute dtype (text encoder and VAE stay float32, see the
    module docstring; `cast_vae_for_decoding` casts the VAE once the latent cache is built).

    Freezing matters for speed and memory: a loaded model's parameters are trainable, so without it every backward
    would also compute (and keep) a gradient for each of the UNet's weights -- about a third of the step's work and
    a second copy of the UNet in memory -- although only the placeholder rows train.
    """
    for model in (components.unet, components.vae):
        for param in model.parameters():
            param.stop_gradient = True
    if precision.dtype == "float32":
        return
    components.unet.to(dtype=precision.dtype)
    log.info("mixed precision %s: UNet in %s; text encoder, VAE encoding, trainable rows and optimizer state in "
             "float32%s", precision.mode, precision.dtype,
             "; dynamic loss scaling" if precision.scaler.enabled else "")


def cast_vae_for_decoding(vae, precision: Precision, encodes_every_step: bool) -> None:
    """After the latent cache is built: the VAE only decodes validation images, in the compute dtype. With
    --no_cache_latents it also encodes every step, so it stays float32."""
    if vae is None or precision.dtype == "float32" or encodes_every_step:
        return
    vae.to(dtype=precision.dtype)
    log.info("VAE in %s for decoding validation images (the latent cache was encoded in float32)", precision.dtype)


def cast_for_rendering(pipeline, dtype: str) -> None:
    """A loaded pipeline rendering like the trainer's validation: UNet and VAE in `dtype` (float32, float16,
    bfloat16), the text encoder in float32."""
    if dtype == "float32":
        return
    pipeline.unet.to(dtype=dtype)
    pipeline.vae.to(dtype=dtype)


@contextlib.contextmanager
def unet_takes_text_encoder_output(unet) -> Iterator[None]:
    """While active, the UNet accepts float32 text-encoder output and float32 latents and returns float32.

    For validation with a float32 text encoder and a half-precision UNet: ppdiffusers' pipelines take the dtype of
    the prompt embeddings and of the latents from the text encoder (pipeline_stable_diffusion.py: `encode_prompt`
    casts prompt_embeds to `text_encoder.dtype`, `prepare_latents(..., prompt_embeds.dtype)`), and the UNet casts
    its `sample` input but not `encoder_hidden_states`. The hooks cast that input to the UNet's dtype and its
    prediction back to float32, so the scheduler works on float32 latents."""
    if str(unet.dtype) == "paddle.float32":
        yield
        return

    def cast_inputs(layer, args, kwargs):
        hidden = kwargs.get("encoder_hidden_states")
        if hidden is not None:
            kwargs["encoder_hidden_states"] = hidden.astype(layer.dtype)
        elif len(args) > 2:
            args = (*args[:2], args[2].astype(layer.dtype), *args[3:])
        if kwargs.get("added_cond_kwargs"):  # SDXL: the second encoder's pooled text_embeds and the time_ids
            kwargs["added_cond_kwargs"] = {k: v.astype(layer.dtype) for k, v in kwargs["added_cond_kwargs"].items()}
        return args, kwargs

    def cast_output(layer, args, kwargs, output):
        if isinstance(output, tuple):
            return (output[0].astype("float32"), *output[1:])
        output.sample = output.sample.astype("float32")
        return output

    handles = [unet.register_forward_pre_hook(cast_inputs, with_kwargs=True),
               unet.register_forward_post_hook(cast_output, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
