"""Runs inside .venv-torch (real PyTorch + diffusers). Loads the toy world exported to diffusers' layout, checks
that every text-encoder weight came from the folder, loads a textual-inversion file with diffusers' own
`load_textual_inversion`, and draws prompts from given initial latents with the world's DDIM settings.

    python world_sample.py MODEL_DIR EMBEDDING_FILE LATENTS.npz OUT.npz PROMPT [PROMPT ...]

LATENTS.npz holds `latents` [len(PROMPTS), 4, 8, 8]; OUT.npz gets `images` uint8 [len(PROMPTS), 32, 32, 3].
"""

import sys

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from encode_prompt import check_every_weight_loaded


def main(model_dir: str, embedding: str, latents: str, out: str, prompts: list[str]) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    check_every_weight_loaded(pipe.text_encoder, f"{model_dir}/text_encoder/model.safetensors")
    pipe.load_textual_inversion(embedding)
    pipe.set_progress_bar_config(disable=True)
    start = torch.from_numpy(np.load(latents)["latents"])
    with torch.no_grad():
        images = pipe(prompts, latents=start, num_inference_steps=25, guidance_scale=7.5, height=32, width=32,
                      output_type="np").images
    np.savez(out, images=np.round(np.asarray(images) * 255).astype(np.uint8))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
