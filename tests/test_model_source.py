"""The model a user has: diffusers folders and single-file checkpoints (ppti/model_source.py).

Fixtures are real: tests/torch_side/build_model_forms.py builds tiny SD-1.x, SD-2.x (v-prediction, OpenCLIP text
encoder with 24 resblocks of which 23 are used) and SDXL pipelines with diffusers/transformers in .venv-torch and
saves each as a diffusers folder (transformers 5 and transformers 4 layouts, and .bin pickles) and as LDM single files
(safetensors fp32 and fp16, .ckpt with an EMA copy), checking that diffusers' own from_single_file(config=folder)
reads each single file back to the pipeline's tensors. Here ppti must load every form with the pipeline's tensors,
train one step to the loss of a ppdiffusers folder of the same weights, cache conversions, and refuse what it
cannot train in one line.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_IMAGES, REPO, run_entry, train_args
from helpers import RunsCode, logged

TORCH_PYTHON = REPO / ".venv-torch" / "bin" / "python"
BUILDER = REPO / "tests" / "torch_side" / "build_model_forms.py"
CONVERT_MODEL = REPO / "tools" / "convert_model.py"
needs_torch = pytest.mark.skipif(not TORCH_PYTHON.exists(),
                                 reason=".venv-torch is missing: run `bash scripts/setup_torch_venv.sh` first")
FORMS = ("diffusers-t5", "diffusers-t4", "diffusers-bin", "single.safetensors", "single.ckpt",
         "single-fp16.safetensors")
COMPONENTS = {"sd1": ("unet", "vae", "text_encoder"), "sd2": ("unet", "vae", "text_encoder"),
              "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from ppti.tiny import write_clip_tokenizer

    folder = tmp_path_factory.mktemp("clip-tokenizer")
    write_clip_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def forms(tmp_path_factory, tokenizer_dir):
    """arch -> folder holding every form of one tiny pipeline (built once per session and arch)."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            out = tmp_path_factory.mktemp(f"forms-{arch}")
            proc = subprocess.run([str(TORCH_PYTHON), str(BUILDER), str(out), arch, str(tokenizer_dir)],
                                  capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            checked = [line for line in proc.stdout.splitlines() if "every tensor equal" in line]
            # every single file read back by diffusers (the SD-1 .ckpt has the old text-encoder layout without
            # `text_model.`, which diffusers 0.42's from_single_file refuses: "weights ... appear to be missing")
            assert len(checked) == (2 if arch == "sd1" else 3), proc.stdout
            built[arch] = out
        return built[arch]

    return get


def tokenizer_for(arch: str, folder: Path, tokenizer_dir: Path) -> str:
    """SD-1: a bare tokenizer folder; SD-2/SDXL: a pipeline folder with tokenizer/ (and tokenizer_2/)."""
    return str(tokenizer_dir if arch == "sd1" else folder / "diffusers-t4")


def resolve(path, tokenizer=None, cache=None, **kwargs):
    from ppti.model_source import resolve_model

    return resolve_model(str(path), tokenizer, str(cache) if cache else None, **kwargs)


def paddle_weights(model_dir: str, names) -> dict[str, dict[str, np.ndarray]]:
    from ppti.models import load_components

    components = load_components(model_dir)
    return {name: {k: v.numpy() for k, v in getattr(components.pipeline, name).state_dict().items()}
            for name in names}


def assert_same_weights(loaded, expected_dir: Path, names, transform=lambda name, v: v):
    """Every tensor of the diffusers pipeline (PyTorch layout) equals ppti's (Paddle layout), exactly."""
    from ppti.model_source import _paddle_transposes

    for name in names:
        expected = np.load(expected_dir / f"{name}.npz")
        got = loaded[name]
        assert sorted(got) == sorted(expected.files), f"{name}: different tensor names"
        for key in expected.files:
            value = got[key].T if _paddle_transposes(key, expected[key].shape) else got[key]
            np.testing.assert_array_equal(value, transform(key, expected[key]), err_msg=f"{name}.{key}")


# --------------------------------------------------------------------------------------------- every form loads
@needs_torch
@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_every_form_loads_the_pipeline_weights(arch, forms, tokenizer_dir, tmp_path):
    folder = forms(arch)
    for form in FORMS:
        source = resolve(folder / form, tokenizer_for(arch, folder, tokenizer_dir), tmp_path / "cache")
        assert source.kind == ("single file" if form.startswith("single") else "diffusers folder")
        loaded = paddle_weights(source.folder, COMPONENTS[arch])
        fp16 = "fp16" in form  # widened to float32: equal to the pipeline's values rounded to float16
        assert_same_weights(loaded, folder / "expected", COMPONENTS[arch],
                            (lambda k, v: v.astype(np.float16).astype(np.float32)) if fp16 else (lambda k, v: v))
        if form.startswith("single"):
            name = {"sd1": "SD-1.x", "sd2": "SD-2.x", "sdxl": "SDXL base"}[arch]
            prediction = "v_prediction" if arch == "sd2" else "epsilon"
            assert f"single file: {name}, {prediction}" in source.summary, source.summary
            assert ("float16 -> float32" if fp16 else "float32 -> float32") in source.summary
            assert ("non-EMA weights" if form == "single.ckpt" else "no EMA copy") in source.summary
            scheduler = json.loads((Path(source.folder) / "scheduler" / "scheduler_config.json").read_text())
            assert scheduler["prediction_type"] == prediction


@needs_torch
@pytest.mark.slow
@pytest.mark.torch
def test_use_ema_picks_the_ema_copy(forms, tokenizer_dir, tmp_path):
    """The .ckpt's EMA copy holds every UNet value x 0.5; the non-EMA weights are the default."""
    folder = forms("sd1")
    source = resolve(folder / "single.ckpt", str(tokenizer_dir), tmp_path / "cache", use_ema=True)
    assert "EMA weights (--use_ema)" in source.summary
    loaded = paddle_weights(source.folder, ["unet", "vae"])
    assert_same_weights(loaded, folder / "expected", ["unet"], lambda k, v: v * 0.5)
    assert_same_weights(loaded, folder / "expected", ["vae"])


# ------------------------------------------------------------------------------------- one training step's loss
def first_loss(model, out, tokenizer=None, cache=None) -> float:
    extra = {"tokenizer_name": tokenizer, "model_cache_dir": cache, "report_to": "visualdl", "max_train_steps": 1}
    proc = run_entry(train_args(model, DEMO_IMAGES, out, **extra), timeout=600,
                     env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip().startswith("model ")]
    assert len(summary) == 1 and str(model) in summary[0], summary  # the start-up summary says what was found
    if str(model).endswith(".safetensors"):
        assert "(single file: " in summary[0] and "float32 -> float32" in summary[0]
    return logged(out, "train/loss")[1]


@needs_torch
@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_one_step_loss_equals_the_ppdiffusers_folder(arch, forms, tokenizer_dir, tmp_path):
    """The reference: ppdiffusers' own from_diffusers conversion of the transformers-4 folder, saved by
    save_pretrained. The loss of the first step on each converted form equals its loss within 1e-6."""
    from ppdiffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = forms(arch)
    cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
    kwargs = {} if arch == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    cls.from_pretrained(str(folder / "diffusers-t4"), from_diffusers=True, **kwargs).save_pretrained(
        str(tmp_path / "reference"))
    reference = first_loss(tmp_path / "reference", tmp_path / "run-reference")
    for form in ("single.safetensors", "diffusers-t5"):
        tokenizer = tokenizer_for(arch, folder, tokenizer_dir) if form.startswith("single") else None
        loss = first_loss(folder / form, tmp_path / f"run-{form}", tokenizer, tmp_path / "cache")
        assert abs(loss - reference) <= 1e-6, (form, loss, reference)


# ---------------------------------------------------------------------------------------------- the cache
@needs_torch
@pytest.mark.slow
@pytest.mark.torch
def test_cache_is_reused_and_a_changed_file_converted_again(forms, tokenizer_dir, tmp_path, caplog):
    single = tmp_path / "model.safetensors"
    single.write_bytes((forms("sd1") / "single.safetensors").read_bytes())
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="ppti"):
        first = resolve(single, str(tokenizer_dir), cache)
        assert "model: converted" in caplog.text
        caplog.clear()
        again = resolve(single, str(tokenizer_dir), cache)
        assert again.folder == first.folder and "using cached conversion" in caplog.text
        assert "model: converted" not in caplog.text
        # the same file changed (one weight byte near the end, as a fine-tune would change them all)
        data = bytearray(single.read_bytes())
        data[-3] ^= 0xFF
        single.write_bytes(bytes(data))
        caplog.clear()
        changed = resolve(single, str(tokenizer_dir), cache)
    assert changed.folder != first.folder and "model: converted" in caplog.text
    entries = sorted(p.name for p in cache.iterdir() if p.is_dir() and p.name != "by-source")
    assert len(entries) == 2 and Path(first.folder).is_dir()  # (the old entry stays for the old file)
    # tools/generate.py and the page pass no --tokenizer_name: they reuse the trainer's latest conversion
    assert resolve(single, None, cache).folder == changed.folder


CONCURRENT = """
import sys
sys.path.insert(0, {repo!r})
from ppti.model_source import resolve_model
print(resolve_model({src!r}, {tok!r}, {cache!r}).folder)
"""


@needs_torch
@pytest.mark.slow
@pytest.mark.torch
def test_two_processes_converting_at_once_leave_one_good_entry(forms, tokenizer_dir, tmp_path):
    cache = tmp_path / "cache"
    code = CONCURRENT.format(repo=str(REPO), src=str(forms("sd1") / "single.safetensors"), tok=str(tokenizer_dir),
                             cache=str(cache))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    folders = {o[0].strip().splitlines()[-1] for o in outputs}
    assert len(folders) == 1
    entries = [p for p in cache.iterdir() if p.is_dir() and p.name != "by-source"]
    assert [p.name for p in entries] == [Path(folders.pop()).name]  # no temporary folder left either
    loaded = paddle_weights(str(entries[0]), ["unet"])
    assert_same_weights(loaded, forms("sd1") / "expected", ["unet"])


# ---------------------------------------------------------------------------------- refused in one line
def write_safetensors(path: Path, tensors: dict[str, tuple]) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.zeros(shape, np.float16) for k, shape in tensors.items()}, str(path))
    return path


def _ldm_keys(conv_in_channels: int = 4, text: dict | None = None) -> dict[str, tuple]:
    keys = {"model.diffusion_model.input_blocks.0.0.weight": (32, conv_in_channels, 3, 3),
            "model.diffusion_model.out.2.weight": (4, 32, 3, 3), "first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3)}
    keys.update(text if text is not None else {"cond_stage_model.transformer.text_model.final_layer_norm.weight": (8,)})
    return keys


def _malicious_ckpt(path: Path, marker: Path) -> Path:
    """A torch-zip .ckpt whose data.pkl would run `touch marker` when unpickled."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": RunsCode(f"touch {marker}")}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return path


REFUSED = {
    "truncated": lambda d: d / "cut.safetensors",  # built in the test from a whole file
    "unknown architecture": lambda d: write_safetensors(d / "unknown.safetensors", {"net.layer.weight": (4, 4)}),
    "refiner": lambda d: write_safetensors(d / "refiner.safetensors", _ldm_keys(
        text={"conditioner.embedders.0.model.token_embedding.weight": (10, 8)})),
    "inpainting": lambda d: write_safetensors(d / "inpaint.safetensors", _ldm_keys(9)),
    "LoRA": lambda d: write_safetensors(d / "lora.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32)}),
    "embedding": lambda d: write_safetensors(d / "embedding.safetensors", {"emb_params": (2, 768)}),
    "VAE only": lambda d: write_safetensors(d / "vae.safetensors", {"encoder.conv_in.weight": (8, 3, 3, 3),
                                                                    "decoder.conv_out.weight": (3, 8, 3, 3)}),
    "SD3": lambda d: write_safetensors(d / "sd3.safetensors", {
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (24, 8)}),
    "malicious pickle": lambda d: _malicious_ckpt(d / "evil.ckpt", d / "PWNED"),
}
SAYS = {"truncated": "truncated", "unknown architecture": "unknown architecture", "refiner": "SDXL refiner",
        "inpainting": "inpainting model", "LoRA": "LoRA file", "embedding": "embedding", "VAE only": "VAE-only",
        "SD3": "Stable Diffusion 3", "malicious pickle": "posix.system"}


@pytest.mark.slow  # (each runs the trainer's entry point: ~15 s)
@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_in_one_line_naming_the_file(case, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    if case == "truncated":
        whole = write_safetensors(files / "whole.safetensors", _ldm_keys())
        (files / "cut.safetensors").write_bytes(whole.read_bytes()[:-100])
    path = REFUSED[case](files)
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    proc = run_entry(train_args(path, DEMO_IMAGES, out, model_cache_dir=cache))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0] and SAYS[case] in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (files / "PWNED").exists()  # nothing in the pickle ran
    leftovers = [p for p in cache.rglob("*") if p.is_dir()] if cache.exists() else []
    assert leftovers == []  # no cache entry, not even a temporary one


def test_a_folder_holding_a_single_file_says_to_pass_the_file(tmp_path):
    from ppti.model_source import path_problem

    write_safetensors(tmp_path / "model.safetensors", _ldm_keys())
    assert "pass the file itself" in path_problem(str(tmp_path))
    assert "no such directory" in path_problem(str(tmp_path / "missing"))
    assert path_problem("CompVis/stable-diffusion-v1-4") is None


@needs_torch
@pytest.mark.slow
@pytest.mark.torch
def test_single_file_without_tokenizer_offline_names_the_flag(forms, tmp_path):
    from ppti.models import ModelError

    env = {"HF_HUB_OFFLINE": "1", "PPDIFFUSERS_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.raises(ModelError, match="--tokenizer_name") as info:
            resolve(forms("sd1") / "single.safetensors", None, tmp_path / "cache")
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert "\n" not in str(info.value)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


# ------------------------------------------------------------------------------------- tools/convert_model.py
@needs_torch
@pytest.mark.slow
@pytest.mark.torch
def test_convert_model_tool_writes_a_folder_and_prints_the_command(forms, tokenizer_dir, tmp_path):
    folder = forms("sd2")
    out = tmp_path / "converted"
    proc = subprocess.run([sys.executable, str(CONVERT_MODEL), str(folder / "single.ckpt"), "-o", str(out),
                           "--tokenizer_name", str(folder / "diffusers-t4")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--pretrained_model_name_or_path {out}" in proc.stdout and "SD-2.x" in proc.stdout
    assert_same_weights(paddle_weights(str(out), COMPONENTS["sd2"]), folder / "expected", COMPONENTS["sd2"])


@needs_torch
@pytest.mark.slow
@pytest.mark.torch
def test_generate_and_the_page_token_check_take_a_single_file(forms, tokenizer_dir, tmp_path, monkeypatch):
    """No --tokenizer_name there: they reuse the conversion the trainer made (default cache)."""
    from ppti.generate import load_pipeline
    from ppti.preflight import check_placeholder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    single = forms("sdxl") / "single.safetensors"
    trained_on = resolve(single, tokenizer_for("sdxl", forms("sdxl"), tokenizer_dir))  # what the trainer does
    line = check_placeholder(str(single), "<new-tok>", "toy")
    assert line.startswith("<new-tok>: 1 new token(s)") and "'toy' -> ['toy</w>']" in line, line
    pipeline = load_pipeline(str(single))
    assert type(pipeline).__name__ == "StableDiffusionXLPipeline"
    expected = np.load(forms("sdxl") / "expected" / "text_encoder_2.npz")
    key = "text_model.final_layer_norm.weight"
    np.testing.assert_array_equal(pipeline.text_encoder_2.state_dict()[key].numpy(), expected[key])
    assert [p.name for p in (tmp_path / "xdg" / "ppti" / "models").iterdir() if p.is_dir() and p.name != "by-source"] \
        == [Path(trained_on.folder).name]  # converted once


@needs_torch
@pytest.mark.slow
@pytest.mark.torch
def test_generate_renders_a_run_trained_on_a_single_file_with_its_cache_and_tokenizer(forms, tokenizer_dir, tmp_path):
    """tools/generate.py reads the run's --model_cache_dir/--tokenizer_name: no second conversion, no hub lookup."""
    single, cache, out = forms("sd1") / "single.ckpt", tmp_path / "cache", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_entry(train_args(single, DEMO_IMAGES, out, tokenizer_name=tokenizer_dir, model_cache_dir=cache,
                                use_ema=True), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = subprocess.run([sys.executable, str(REPO / "tools" / "generate.py"), "--model", str(single), "--embeddings",
                           str(out), "--prompt", "a photo of <demo-toy>", "--num_inference_steps", "2",
                           "--height", "64", "--width", "64", "-o", str(tmp_path / "x.png")], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # the run's cache, not the default one (which would have said "converted" or failed without a tokenizer)
    assert (tmp_path / "x.png").is_file() and f"using cached conversion {cache}" in done.stdout + done.stderr
    assert len([p for p in cache.iterdir() if p.is_dir() and p.name != "by-source"]) == 1
