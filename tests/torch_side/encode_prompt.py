"""Runs inside .venv-torch (real PyTorch + diffusers). Loads a diffusers pipeline folder, checks that every
text-encoder weight came from the folder, loads textual-inversion files with diffusers' own
`load_textual_inversion`, and saves what the text encoder makes of a prompt.

    python encode_prompt.py MODEL_DIR OUT.npz PROMPT FILE[::TOKEN] [FILE[::TOKEN] ...]

OUT.npz holds `ids` (prompt token ids), `hidden` (last_hidden_state) and `rows/<token>` (the embedding rows the
loader installed for each file's token, all vectors T, T_1, ...).
"""

import sys

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file


def check_every_weight_loaded(text_encoder, weights_file: str) -> None:
    """transformers 5 drops the `text_model.` prefix from state_dict keys: compare without it, and compare
    values, so that a silently re-initialised weight cannot pass."""
    on_disk = {k.removeprefix("text_model."): v for k, v in load_file(weights_file).items()}
    loaded = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    if sorted(on_disk) != sorted(loaded):
        raise SystemExit(f"key mismatch: missing {sorted(set(on_disk) - set(loaded))}, "
                         f"unexpected {sorted(set(loaded) - set(on_disk))}")
    differing = [k for k in on_disk if not torch.equal(on_disk[k], loaded[k])]
    if differing:
        raise SystemExit(f"weights not loaded from {weights_file}: {differing}")


def installed_rows(pipe, token: str) -> np.ndarray:
    """The rows diffusers installed for `token` and its multi-vector companions `token_1`, `token_2`, ..."""
    vocab = pipe.tokenizer.get_vocab()
    names = [token] + [f"{token}_{i}" for i in range(1, len(vocab)) if f"{token}_{i}" in vocab]
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach().numpy()


def main(model_dir: str, out: str, prompt: str, files: list[str]) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
    check_every_weight_loaded(pipe.text_encoder, f"{model_dir}/text_encoder/model.safetensors")
    results = {}
    for spec in files:
        path, _, token = spec.partition("::")
        before = set(pipe.tokenizer.get_vocab())
        pipe.load_textual_inversion(path, token=token or None)
        new_tokens = sorted(set(pipe.tokenizer.get_vocab()) - before, key=len)
        results[f"rows/{new_tokens[0]}"] = installed_rows(pipe, new_tokens[0])
    text = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0]
    np.savez(out, ids=ids.numpy(), hidden=hidden.numpy(), **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
