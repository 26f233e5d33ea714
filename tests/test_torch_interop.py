"""Real clients, not mocks: PyTorch (CPU), diffusers and transformers from .venv-torch, run as subprocesses
(scripts in tests/torch_side/), against ppdiffusers in this venv.

(a) an embedding trained by ppti, converted with `--to torch`, loads with diffusers' `load_textual_inversion`
    into a diffusers pipeline built from the same tiny weights, and the text encoder gives the same output as
    ppdiffusers' within 1e-5; ppti's F1 .bin, F3 .pt and F4 files load there too;
(b) files written by real `torch.save` / `safetensors.torch` in F1/F3/F4/F5 layouts (views into larger storages,
    fp16, bf16, old ParameterDict files) convert `--to paddle` and load in ppdiffusers' `load_textual_inversion`;
(c) every file ppti writes for torch is read by `torch.load(weights_only=True)` / `safetensors.torch`, with
    fp16/bf16 values equal to torch's own rounding.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEMO_IMAGES, REPO, run_entry, train_args
from ppti.embeddings import read_embeddings, write_embeddings, write_sdxl_pair

TORCH_PYTHON = REPO / ".venv-torch" / "bin" / "python"
TORCH_SIDE = REPO / "tests" / "torch_side"
CONVERT = REPO / "tools" / "convert.py"
TOKEN = "<demo-toy>"
PROMPT = f"a photo of {TOKEN} on the beach"

pytestmark = pytest.mark.skipif(
    not TORCH_PYTHON.exists(), reason=".venv-torch is missing: run `bash scripts/setup_torch_venv.sh` first")


def torch_side(script, *args):
    """Run a tests/torch_side script with the torch venv's Python; its stdout."""
    proc = subprocess.run([str(TORCH_PYTHON), str(TORCH_SIDE / script), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def convert(*args):
    proc = subprocess.run([sys.executable, str(CONVERT), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def trained(tiny_model_en, tmp_path_factory):
    """A ppti training run's output_dir: two-vector embedding, 4 steps on the tiny model."""
    out = tmp_path_factory.mktemp("trained")
    proc = run_entry(train_args(tiny_model_en, DEMO_IMAGES, out, placeholder_token=TOKEN, num_vectors=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def diffusers_model(tiny_model_en, tmp_path_factory):
    """The same tiny weights in diffusers' layout, written by ppdiffusers' own `to_diffusers` export."""
    from ppdiffusers import StableDiffusionPipeline

    out = tmp_path_factory.mktemp("tiny-diffusers")
    StableDiffusionPipeline.from_pretrained(str(tiny_model_en), safety_checker=None).save_pretrained(
        str(out), to_diffusers=True)
    return out


def ppdiffusers_encode(model, embedding_file, prompt):
    """ids and last_hidden_state of `prompt` in ppdiffusers after loading `embedding_file`, as a user would."""
    import paddle
    from ppdiffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    pipe.load_textual_inversion(str(embedding_file))
    text = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pd").input_ids
    with paddle.no_grad():
        hidden = pipe.text_encoder(ids)[0]
    return ids.numpy(), hidden.numpy()


def test_trained_embedding_converted_to_torch_matches_ppdiffusers(trained, tiny_model_en, diffusers_model, tmp_path):
    out = convert(trained, "--to", "torch")
    converted = trained / "learned_embeds.safetensors"
    assert f"wrote {converted}" in out and "shape [2, 32]" in out
    torch_side("encode_prompt.py", diffusers_model, tmp_path / "torch.npz", PROMPT, converted)
    torch_result = np.load(tmp_path / "torch.npz")
    ids, hidden = ppdiffusers_encode(tiny_model_en, trained / "learned_embeds.pdparams", PROMPT)

    (trained_embedding,) = read_embeddings(trained / "learned_embeds.pdparams")
    np.testing.assert_array_equal(torch_result[f"rows/{TOKEN}"], trained_embedding.vectors)  # both vectors, exact
    np.testing.assert_array_equal(torch_result["ids"], ids)  # same tokens, incl. <demo-toy> <demo-toy>_1
    np.testing.assert_allclose(torch_result["hidden"], hidden, rtol=0, atol=1e-5)


def test_ppti_torch_files_load_in_diffusers(trained, diffusers_model, tmp_path):
    """F1 .bin, F3 .pt and F4 .safetensors written by ppti load with diffusers' load_textual_inversion."""
    source = trained / "learned_embeds.pdparams"
    convert(source, "--to", "torch", "-o", tmp_path / "learned_embeds.bin", "--token", "<as-bin>")
    convert(source, "--to", "torch", "--format", "pt", "--token", "<as-pt>", "-o", tmp_path)
    convert(source, "--to", "torch", "--format", "webui", "--token", "as-webui", "-o", tmp_path)
    torch_side("encode_prompt.py", diffusers_model, tmp_path / "out.npz", "a photo", tmp_path / "learned_embeds.bin",
               tmp_path / "as-pt.pt", f"{tmp_path / 'as-webui.safetensors'}::as-webui")
    result = np.load(tmp_path / "out.npz")
    (expected,) = read_embeddings(source)
    for token in ("<as-bin>", "<as-pt>", "as-webui"):
        np.testing.assert_array_equal(result[f"rows/{token}"], expected.vectors, err_msg=token)


# File written by torch -> (token ppti names it, by the rules of its layout)
REFERENCE_TOKENS = {
    "f1.safetensors": "<f1-st>",
    "f1_view.bin": "<f1-view>",
    "f1_strided.bin": "<f1-strided>",
    "f1_half.bin": "<f1-half>",
    "f3-stem.pt": "<f3-name>",
    "f3-paramdict.pt": "f3-paramdict",
    "kohya-st.safetensors": "kohya-st",
    "kohya-bf16.pt": "kohya-bf16",
    "sdxl-pair.safetensors": "sdxl-pair",
    "bare-tensor.pt": "bare-tensor",
}


def test_torch_written_files_convert_to_paddle_and_load_in_ppdiffusers(tiny_model_en, tmp_path):
    from ppdiffusers import StableDiffusionPipeline

    written = tmp_path / "torch"
    written.mkdir()
    torch_side("write_reference_files.py", written, 32, 48)
    expected = np.load(written / "expected.npz")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_en), safety_checker=None)
    for name, token in REFERENCE_TOKENS.items():
        target = tmp_path / "paddle" / f"{name.split('.')[0]}.pdparams"
        out = convert(written / name, "--to", "paddle", "-o", target)
        assert f"token {token!r}" in out, out
        pipe.load_textual_inversion(str(target))  # the token comes from the converted file
        rows = expected[f"{name}/clip_l" if name.startswith("sdxl") else name]
        names = [token] + [f"{token}_{i}" for i in range(1, len(rows))]
        installed = pipe.text_encoder.get_input_embeddings().weight.numpy()[pipe.tokenizer.convert_tokens_to_ids(names)]
        np.testing.assert_array_equal(installed, rows, err_msg=name)
    (clip_g,) = read_embeddings(tmp_path / "paddle" / "sdxl-pair_2.pdparams")
    np.testing.assert_array_equal(clip_g.vectors, expected["sdxl-pair.safetensors/clip_g"])


def test_ppti_files_are_read_by_real_torch_with_torch_rounding(tmp_path):
    source = {"a": np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)}
    source["a"][0, :4] = [1 + 2**-8, 1 + 3 * 2**-8, 65504.0, -1e-8]  # ties and range edges
    np.savez(tmp_path / "source.npz", **source)
    files = {}
    for dtype in ("fp32", "fp16", "bf16"):
        for fmt, name in (("diffusers", "d.safetensors"), ("diffusers", "d.bin"), ("webui", "w.safetensors"),
                          ("webui", "w.pt"), ("pt", "p.pt")):
            path = write_embeddings(tmp_path / f"{dtype}-{name}", {"<t>": source["a"]}, fmt=fmt, dtype=dtype)
            files[path] = dtype
    pair = write_sdxl_pair(tmp_path / "pair.safetensors", "<t>", source["a"], source["a"], fmt="webui", dtype="bf16")
    dtypes = json.loads(torch_side("read_ppti_files.py", tmp_path / "read.npz", tmp_path / "source.npz", *files, *pair))
    read = np.load(tmp_path / "read.npz")
    torch_dtype = {"fp32": "torch.float32", "fp16": "torch.float16", "bf16": "torch.bfloat16"}
    for path, dtype in files.items():
        (key,) = [k for k in dtypes if k.startswith(f"{path}|")]
        assert dtypes[key] == torch_dtype[dtype], key
        expected = source["a"] if dtype == "fp32" else read[f"round|{dtype}|a"]
        np.testing.assert_array_equal(read[key], expected, err_msg=key)
    assert {k.split("|", 1)[1] for k in dtypes if k.startswith(str(pair[0]))} == {"clip_l", "clip_g"}
    np.testing.assert_array_equal(read[f"{pair[0]}|clip_g"], read["round|bf16|a"])
