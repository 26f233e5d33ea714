"""Runs inside .venv-torch (real PyTorch + diffusers). One SD-1.x textual-inversion loss and its gradient on the
placeholder rows, computed as diffusers' examples/textual_inversion/textual_inversion.py computes them: the VAE
encodes the batch's pixels, its posterior is sampled and multiplied by the VAE's scaling factor, DDPM noise is
added, the UNet is conditioned on the text encoder's last hidden state, and the loss is the mean squared error
against the noise (epsilon) or the velocity (v_prediction). Nothing from ppti is imported.

    python sd_ti_step.py MODEL_DIR IN.npz OUT.npz [IN2.npz OUT2.npz ...] [--mistake no_scaling|posterior_mean]

IN.npz (written by the Paddle side): `texts` (the batch's prompts), `tokens` (placeholder names), `rows` (initial
placeholder rows), `pixels` (B, 3, H, W) in [-1, 1], `posterior_eps` (the standard normal draw the posterior
sample uses), `noise`, `timesteps`, `prediction_type` (the noise scheduler's, overriding the model's config).
OUT.npz: `loss`, `grad` (gradient on the rows), `ids` (the prompts as diffusers' tokenizer encodes them),
`latents`. Each IN/OUT pair starts from a fresh pipeline.

`--mistake` computes the step wrongly on purpose, to show that the parity test would catch ppti making that
mistake: `no_scaling` leaves out the VAE scaling factor, `posterior_mean` uses the posterior mean instead of a
sample.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline

from encode_prompt import check_every_weight_loaded
from sdxl_ti_step import add_placeholder, check_unet_loaded, tokenize

MISTAKES = ("none", "no_scaling", "posterior_mean")


def posterior_sample(latent_dist, eps: torch.Tensor) -> torch.Tensor:
    """diffusers' own `latent_dist.sample()`, with its standard normal draw replaced by `eps` (the draw the Paddle
    side made): the module's randn_tensor is swapped for the duration of the call."""
    module = sys.modules[type(latent_dist).__module__]
    real, calls = module.randn_tensor, []

    def given_eps(shape, **kwargs):
        calls.append(tuple(shape))
        assert tuple(shape) == tuple(eps.shape), (shape, eps.shape)
        return eps.to(kwargs.get("dtype") or eps.dtype)

    module.randn_tensor = given_eps
    try:
        sample = latent_dist.sample()
    finally:
        module.randn_tensor = real
    if calls != [tuple(eps.shape)]:
        raise SystemExit(f"latent_dist.sample() did not draw through randn_tensor once: {calls}")
    return sample


def main(model_dir: str, inputs: str, out: str, mistake: str) -> None:
    data = np.load(inputs)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
    check_every_weight_loaded(pipe.text_encoder, f"{model_dir}/text_encoder/model.safetensors")
    check_unet_loaded(pipe.unet, f"{model_dir}/unet/diffusion_pytorch_model.safetensors")
    check_unet_loaded(pipe.vae, f"{model_dir}/vae/diffusion_pytorch_model.safetensors")
    tokens = [str(t) for t in data["tokens"]]
    ids = add_placeholder(pipe.tokenizer, pipe.text_encoder, tokens, data["rows"])
    pipe.unet.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=str(data["prediction_type"]))

    # --- the script's training step ---
    pixel_values = torch.from_numpy(data["pixels"])
    with torch.no_grad():
        latent_dist = pipe.vae.encode(pixel_values).latent_dist
    if mistake == "posterior_mean":
        latents = latent_dist.mean
    else:
        latents = posterior_sample(latent_dist, torch.from_numpy(data["posterior_eps"]))
    if mistake != "no_scaling":
        latents = latents * pipe.vae.config.scaling_factor
    noise = torch.from_numpy(data["noise"])
    timesteps = torch.from_numpy(data["timesteps"]).long()
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    input_ids = tokenize(pipe.tokenizer, data["texts"])
    encoder_hidden_states = pipe.text_encoder(input_ids)[0].to(dtype=torch.float32)
    model_pred = pipe.unet(noisy_latents, timesteps, encoder_hidden_states).sample
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    elif noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise SystemExit(f"Unknown prediction type {noise_scheduler.config.prediction_type}")
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    loss.backward()
    grad = pipe.text_encoder.get_input_embeddings().weight.grad[ids].numpy()
    np.savez(out, loss=loss.detach().numpy(), grad=grad, ids=input_ids.numpy(), latents=latents.detach().numpy(),
             prediction_type=noise_scheduler.config.prediction_type)


if __name__ == "__main__":
    args, mistake = sys.argv[1:], "none"
    if "--mistake" in args:
        i = args.index("--mistake")
        mistake = args[i + 1]
        del args[i:i + 2]
    if mistake not in MISTAKES:
        raise SystemExit(f"--mistake must be one of {MISTAKES}")
    for inputs, out in zip(args[1::2], args[2::2]):
        main(args[0], inputs, out, mistake)
