"""Runs inside .venv-torch (real PyTorch + diffusers). One textual-inversion loss and its gradient on both
text encoders' placeholder rows, computed as diffusers' examples/textual_inversion/textual_inversion_sdxl.py
computes them (with the second text encoder's embedding trainable too, as kohya's SDXL trainer does).

    python sdxl_ti_step.py MODEL_DIR IN.npz OUT.npz [IN2.npz OUT2.npz ...]

IN.npz (written by the Paddle side): `texts` (the batch's prompts), `tokens` (placeholder names), `rows_1`,
`rows_2` (initial placeholder rows), `latents`, `noise`, `timesteps`, `time_ids`, `prediction_type` (the noise
scheduler's, overriding the model's config). OUT.npz: `loss`, `grad_1`, `grad_2` (gradient on each row set),
`ids_1`, `ids_2` (the prompts as diffusers' tokenizers encode them). Each IN/OUT pair starts from a fresh pipeline.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from safetensors.torch import load_file

from encode_prompt import check_every_weight_loaded


def check_unet_loaded(unet, weights_file: str) -> None:
    on_disk = load_file(weights_file)
    loaded = unet.state_dict()
    if sorted(on_disk) != sorted(loaded) or any(not torch.equal(on_disk[k], loaded[k]) for k in on_disk):
        raise SystemExit(f"UNet weights not all loaded from {weights_file}")


def add_placeholder(tokenizer, text_encoder, tokens, rows) -> list[int]:
    """The script's token setup: add the tokens, resize, write the rows; the embedding matrix trains."""
    if tokenizer.add_tokens(list(tokens)) != len(tokens):
        raise SystemExit(f"{tokens} already in the tokenizer")
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = torch.from_numpy(rows)
    text_encoder.requires_grad_(False)
    weight.requires_grad_(True)
    return ids


def tokenize(tokenizer, texts):
    return tokenizer(list(texts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def main(model_dir: str, inputs: str, out: str) -> None:
    data = np.load(inputs)
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir)
    check_every_weight_loaded(pipe.text_encoder, f"{model_dir}/text_encoder/model.safetensors")
    check_every_weight_loaded(pipe.text_encoder_2, f"{model_dir}/text_encoder_2/model.safetensors")
    check_unet_loaded(pipe.unet, f"{model_dir}/unet/diffusion_pytorch_model.safetensors")
    tokens = [str(t) for t in data["tokens"]]
    ids = [add_placeholder(pipe.tokenizer, pipe.text_encoder, tokens, data["rows_1"]),
           add_placeholder(pipe.tokenizer_2, pipe.text_encoder_2, tokens, data["rows_2"])]
    pipe.unet.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=str(data["prediction_type"]))

    latents, noise = torch.from_numpy(data["latents"]), torch.from_numpy(data["noise"])
    timesteps = torch.from_numpy(data["timesteps"]).long()
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    input_ids_1 = tokenize(pipe.tokenizer, data["texts"])
    input_ids_2 = tokenize(pipe.tokenizer_2, data["texts"])
    # --- the script's conditioning and loss ---
    encoder_hidden_states_1 = pipe.text_encoder(input_ids_1, output_hidden_states=True).hidden_states[-2]
    encoder_output_2 = pipe.text_encoder_2(input_ids_2, output_hidden_states=True)
    encoder_hidden_states_2 = encoder_output_2.hidden_states[-2]
    add_time_ids = torch.from_numpy(data["time_ids"])  # (B, 6): original size + crop top-left + target size
    added_cond_kwargs = {"text_embeds": encoder_output_2[0], "time_ids": add_time_ids}
    encoder_hidden_states = torch.cat([encoder_hidden_states_1, encoder_hidden_states_2], dim=-1)
    model_pred = pipe.unet(noisy_latents, timesteps, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs).sample
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    loss.backward()
    grads = [encoder.get_input_embeddings().weight.grad[i].numpy()
             for encoder, i in ((pipe.text_encoder, ids[0]), (pipe.text_encoder_2, ids[1]))]
    np.savez(out, loss=loss.detach().numpy(), grad_1=grads[0], grad_2=grads[1], ids_1=input_ids_1.numpy(),
             ids_2=input_ids_2.numpy(), prediction_type=noise_scheduler.config.prediction_type)


if __name__ == "__main__":
    for inputs, out in zip(sys.argv[2::2], sys.argv[3::2]):
        main(sys.argv[1], inputs, out)
