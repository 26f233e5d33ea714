"""Runs inside .venv-torch (real PyTorch + diffusers). Loads a WebUI/kohya SDXL embedding file {clip_l, clip_g}
into diffusers' StableDiffusionXLPipeline with the two documented load_textual_inversion calls and saves what
encode_prompt makes of a prompt.

    python sdxl_encode_prompt.py MODEL_DIR OUT.npz FILE TOKEN PROMPT [PROMPT ...]

OUT.npz: `embeds_i` (prompt_embeds: both encoders' penultimate states concatenated) and `pooled_i` (the second
encoder's text_embeds) for prompt i.
"""

import sys

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from encode_prompt import check_every_weight_loaded


def main(model_dir: str, out: str, path: str, token: str, prompts: list[str]) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir)
    check_every_weight_loaded(pipe.text_encoder, f"{model_dir}/text_encoder/model.safetensors")
    check_every_weight_loaded(pipe.text_encoder_2, f"{model_dir}/text_encoder_2/model.safetensors")
    state_dict = load_file(path)
    pipe.load_textual_inversion(state_dict["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state_dict["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    results = {}
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            embeds, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
            results[f"embeds_{i}"], results[f"pooled_{i}"] = embeds.numpy(), pooled.numpy()
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
