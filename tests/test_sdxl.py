"""SDXL textual inversion: both text encoders learn the placeholder, conditioned as SDXL inference does it.

- the tiny SDXL (tools/make_tiny_model.py --arch sdxl) trains end to end through configs/sdxl_demo.yaml, writing one
  file per text encoder (learned_embeds[_2][-steps-N]) and validation images from StableDiffusionXLPipeline;
- step parity with diffusers: loss and the gradients on both row sets equal the diffusers SDXL textual-inversion
  computation in PyTorch (tests/torch_side/sdxl_ti_step.py) on the same weights, latents, noise, timesteps and
  time_ids, for epsilon and v-prediction;
- files: ppti's two files -> `convert --to torch --format webui` -> one {clip_l, clip_g} file that diffusers loads
  with two load_textual_inversion calls and that encodes prompts as ppdiffusers does; kohya files convert back;
- resume is bitwise, 2 processes equal 1; half-SDXL folders are refused with a clear error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import DEMO_IMAGES, REPO, run_entry, train_args
from ppti.config import parse_config
from ppti.distributed import DistContext
from ppti.models import ModelError, load_components
from ppti.train import micro_step_loss, setup, train_loop

TORCH_PYTHON = REPO / ".venv-torch" / "bin" / "python"
TORCH_SIDE = REPO / "tests" / "torch_side"
TOKEN = "<demo-toy>"
needs_torch = pytest.mark.skipif(not TORCH_PYTHON.exists(), reason=".venv-torch is missing")


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    from ppti.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sdxl", arch="sdxl")


def _config(model, out, data=DEMO_IMAGES, **overrides):
    return parse_config(train_args(model, data, out, **overrides))


def _batch(run, keys=(0, 1), timesteps=(500, 900)) -> dict:
    examples = [run.stream[k] for k in keys]
    batch = {name: paddle.to_tensor(np.stack([e[name] for e in examples])) for name in examples[0]}
    batch["timestep"] = paddle.to_tensor(list(timesteps), dtype="int64")
    return batch


def _texts(run, batch) -> list[str]:
    """The prompt of each example of the batch (the template whose ids it carries)."""
    ids = batch["input_ids"].numpy()[:, 0]
    first = run.stream.prompt_ids[:, 0]
    index = [int(np.flatnonzero((first == row).all(axis=1))[0]) for row in ids]
    return [run.templates[i].format(run.config.placeholder_text()) for i in index]


def _pdparams(path: Path) -> np.ndarray:
    (value,) = paddle.load(str(path)).values()
    return np.asarray(value)


# ------------------------------------------------------------------------------------------------------------
# the model folder
# ------------------------------------------------------------------------------------------------------------
def test_tiny_sdxl_has_the_real_layout_and_loads_every_weight(tiny_sdxl):
    from ppdiffusers import StableDiffusionXLPipeline

    index = json.loads((tiny_sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"][1] == "CLIPTextModelWithProjection"
    components = load_components(str(tiny_sdxl))  # raises if a weight did not load
    assert components.is_sdxl and isinstance(components.pipeline, StableDiffusionXLPipeline)
    assert components.unet.config.addition_embed_type == "text_time"
    assert components.unet.config.cross_attention_dim == 32 + 64
    # both tokenizers know the tiny vocabulary ("toy" is one token); the second pads with "!" as SDXL's does
    p = components.pipeline
    toy = p.tokenizer("toy")["input_ids"]
    assert toy == p.tokenizer_2("toy")["input_ids"] and len(toy) == 3
    assert p.tokenizer_2.pad_token == "!" and p.tokenizer.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("damage, message", [
    (lambda m: shutil.rmtree(m / "text_encoder_2"), "missing subfolder(s) text_encoder_2"),
    (lambda m: _edit_index(m, tokenizer_2=[None, None]), "names no tokenizer_2"),
    (lambda m: _edit_index(m, text_encoder=[None, None], tokenizer=[None, None]), "SDXL refiner"),
    (lambda m: _edit_json(m / "unet" / "config.json", addition_embed_type=None), "addition_embed_type 'text_time'"),
])
def test_a_half_sdxl_folder_is_refused_naming_what_is_missing(tiny_sdxl, tmp_path, damage, message):
    model = tmp_path / "half"
    shutil.copytree(tiny_sdxl, model)
    damage(model)
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_components(str(model))


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _edit_index(model: Path, **changes) -> None:
    _edit_json(model / "model_index.json", **changes)


# ------------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_sdxl, tmp_path_factory) -> Path:
    """configs/sdxl_demo.yaml through the real entry point (2 vectors, 4 steps, checkpoints every 2)."""
    out = tmp_path_factory.mktemp("trained") / "demo"
    proc = run_entry(["--config", str(REPO / "configs" / "sdxl_demo.yaml"), "--pretrained_model_name_or_path",
                      str(tiny_sdxl), "--output_dir", str(out), "--num_vectors", "2", "--max_train_steps", "4",
                      "--save_steps", "2", "--checkpointing_steps", "2", "--save_format", "both"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_sdxl_demo_config_end_to_end(trained):
    """One file per text encoder and step, checkpoints with both row sets, validation by the SDXL pipeline."""
    for stem, width in (("learned_embeds", 32), ("learned_embeds_2", 64)):
        for name in (stem, f"{stem}-steps-2", f"{stem}-steps-4"):
            saved = paddle.load(str(trained / f"{name}.pdparams"))
            assert list(saved) == [TOKEN] and np.asarray(saved[TOKEN]).shape == (2, width), name
            assert (trained / f"{name}.safetensors").is_file()
        assert (trained / "checkpoints" / "checkpoint-2" / f"{stem}.pdparams").is_file()
    assert np.array_equal(_pdparams(trained / "learned_embeds.pdparams"),
                          _pdparams(trained / "learned_embeds-steps-4.pdparams"))
    assert (trained / "validation" / "step-4.png").is_file()


def test_resume_is_bitwise(trained, tmp_path):
    """Resuming the run from checkpoint-2 ends with the same bits in both files as the uninterrupted run."""
    out = tmp_path / "resumed"
    shutil.copytree(trained / "checkpoints" / "checkpoint-2", out / "checkpoints" / "checkpoint-2")
    proc = run_entry(["--config", str(trained / "train_config.yaml"), "--output_dir", str(out),
                      "--resume_from_checkpoint", "latest"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("learned_embeds.pdparams", "learned_embeds_2.pdparams"):
        assert np.array_equal(_pdparams(out / name), _pdparams(trained / name)), name
    assert not np.array_equal(_pdparams(out / "learned_embeds_2.pdparams"),
                              _pdparams(trained / "learned_embeds_2-steps-2.pdparams"))


def test_both_row_sets_train_and_nothing_else_changes(tiny_sdxl, tmp_path):
    run = setup(_config(tiny_sdxl, tmp_path / "o", num_vectors=2, max_train_steps=3), DistContext())
    rows = run.conditioning.rows
    assert [list(r.shape) for r in rows] == [[2, 32], [2, 64]]
    assert [p.name for p in run.optimizer._parameter_list] == [r.name for r in rows]
    trained = {id(r) for r in rows}
    frozen = {id(p): p.numpy().copy() for m in (run.components.unet, run.components.pipeline.text_encoder_2,
                                                  run.components.text_encoder) for p in m.parameters()
              if id(p) not in trained}
    assert len(frozen) > 100  # every weight of the three models, the embedding matrices included
    before = [r.numpy().copy() for r in rows]
    loss = micro_step_loss(run, _batch(run))
    loss.backward()
    for r in rows:
        assert np.all(np.abs(r.grad.numpy()).sum(axis=1) > 0), "a vector got no gradient"
    run.optimizer.clear_grad()
    train_loop(run)
    for r, b in zip(rows, before):
        assert np.all(np.abs(r.numpy() - b).sum(axis=1) > 0)
    for m in (run.components.unet, run.components.pipeline.text_encoder_2, run.components.text_encoder):
        for p in m.parameters():
            if id(p) in frozen:
                assert np.array_equal(p.numpy(), frozen[id(p)]), p.name


def test_time_ids_are_each_images_size_and_crop(tiny_sdxl, tmp_path):
    """original size (h, w), crop top-left (y, x) and target size, per image: centre crop vs whole image."""
    data = tmp_path / "data"
    data.mkdir()
    sizes = {"wide.png": (200, 100), "tall.png": (90, 150)}  # (w, h)
    for name, size in sizes.items():
        Image.new("RGB", size, (200, 30, 30)).save(data / name)
    # (crop corners in the resized image's pixels: 200x100 -> 128x64, x = 32; 90x150 -> 64x106, y = 21)
    for center_crop, expected in ((True, {(100, 200, 0, 32, 64, 64), (150, 90, 21, 0, 64, 64)}),
                                  (False, {(100, 200, 0, 0, 64, 64), (150, 90, 0, 0, 64, 64)})):
        run = setup(_config(tiny_sdxl, tmp_path / str(center_crop), data=data, center_crop=center_crop,
                            train_batch_size=1), DistContext())
        seen = {tuple(int(v) for v in run.stream[k]["time_ids"]) for k in range(8)}
        assert seen == expected
        # the conditioning passes them to the UNet: other time_ids, other loss
        batch = _batch(run, keys=(0,), timesteps=(500,))
        loss = float(micro_step_loss(run, batch))
        batch["time_ids"] = batch["time_ids"] * 2
        assert float(micro_step_loss(run, batch)) != loss


# ------------------------------------------------------------------------------------------------------------
# parity with the diffusers SDXL computation (PyTorch)
# ------------------------------------------------------------------------------------------------------------
def _diffusers_copy(model: Path, out: Path) -> Path:
    from ppdiffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline.from_pretrained(str(model)).save_pretrained(str(out), to_diffusers=True)
    return out


def _torch_side(script, *args) -> None:
    proc = subprocess.run([str(TORCH_PYTHON), str(TORCH_SIDE / script), *map(str, args)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"


def _step_inputs(model: Path, out: Path, prediction_type: str) -> tuple[Path, paddle.Tensor, list]:
    """ppti's loss and row gradients on one fixed batch, and the npz the torch side recomputes them from."""
    _edit_json(model / "scheduler" / "scheduler_config.json", prediction_type=prediction_type)
    run = setup(_config(model, out, num_vectors=2, center_crop=True), DistContext())
    batch = _batch(run)
    batch["time_ids"] = paddle.to_tensor([[128, 96, 16, 0, 64, 64], [80, 120, 0, 20, 64, 64]], dtype="float32")
    latents = run.latents.sample(batch["variant"], batch["posterior_eps"])
    rows = run.conditioning.rows
    out.mkdir(parents=True, exist_ok=True)
    inputs = out / "in.npz"
    np.savez(inputs, texts=np.array(_texts(run, batch)), tokens=np.array(run.config.placeholder_tokens()),
             rows_1=rows[0].numpy(), rows_2=rows[1].numpy(), latents=latents.numpy(), noise=batch["noise"].numpy(),
             timesteps=batch["timestep"].numpy(), time_ids=batch["time_ids"].numpy(), prediction_type=prediction_type)
    loss = micro_step_loss(run, batch)
    loss.backward()
    return inputs, batch["input_ids"].numpy(), [float(loss), rows[0].grad.numpy(), rows[1].grad.numpy()]


@needs_torch
def test_step_parity_loss_and_both_gradients_match_the_diffusers_sdxl_computation(tmp_path):
    """Epsilon and v-prediction: loss and the gradients on both row sets within 1e-5 relative."""
    from ppti.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "model", arch="sdxl", seed=3)
    diffusers_model = _diffusers_copy(model, tmp_path / "diffusers")
    cases = {p: _step_inputs(model, tmp_path / p, p) for p in ("epsilon", "v_prediction")}
    _torch_side("sdxl_ti_step.py", diffusers_model,
                *[arg for p, (inputs, _, _) in cases.items() for arg in (inputs, tmp_path / p / "out.npz")])
    losses = []
    for prediction_type, (_, ids, (loss, grad_1, grad_2)) in cases.items():
        theirs = np.load(tmp_path / prediction_type / "out.npz")
        assert np.array_equal(theirs["ids_1"], ids[:, 0]) and np.array_equal(theirs["ids_2"], ids[:, 1])
        assert not np.array_equal(ids[:, 0], ids[:, 1])  # the second tokenizer pads with "!"
        np.testing.assert_allclose(np.asarray([loss]), theirs["loss"].reshape(1), rtol=1e-5)
        for mine, key in ((grad_1, "grad_1"), (grad_2, "grad_2")):
            assert np.abs(mine).max() > 0
            np.testing.assert_allclose(mine, theirs[key], rtol=1e-5, atol=1e-5 * np.abs(theirs[key]).max())
        losses.append(loss)
    assert losses[0] != losses[1]  # the two targets differ


# ------------------------------------------------------------------------------------------------------------
# files other tools load
# ------------------------------------------------------------------------------------------------------------
def _convert(*args) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert.py"), *map(str, args)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _ppdiffusers_encode(model: Path, files: tuple[Path, Path], token: str, prompts: list[str]):
    """encode_prompt of each prompt after the README's two ppdiffusers load_textual_inversion calls."""
    from ppdiffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(model))
    pipe.load_textual_inversion(str(files[0]), token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(str(files[1]), token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    with paddle.no_grad():
        encoded = [pipe.encode_prompt(p, do_classifier_free_guidance=False) for p in prompts]
    return [(e[0].numpy(), e[2].numpy()) for e in encoded]


@needs_torch
def test_webui_file_loads_in_diffusers_sdxl_and_encodes_as_ppdiffusers(trained, tiny_sdxl, tmp_path):
    """ppti's two files -> `convert --to torch --format webui` -> {clip_l, clip_g}; diffusers' two
    load_textual_inversion calls give the prompt encodings ppdiffusers gives with ppti's files (1e-5), and both
    encoders' halves differ from the untrained initializer's."""
    out = _convert(trained, "--to", "torch", "--format", "webui", "-o", tmp_path / "demo-toy.safetensors")
    assert "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2" in out
    from safetensors.numpy import load_file

    pair = load_file(str(tmp_path / "demo-toy.safetensors"))
    assert sorted(pair) == ["clip_g", "clip_l"]
    assert np.array_equal(pair["clip_l"], _pdparams(trained / "learned_embeds.pdparams"))
    assert np.array_equal(pair["clip_g"], _pdparams(trained / "learned_embeds_2.pdparams"))

    prompts = [f"a photo of {TOKEN} on the beach", "a photo of toy toy on the beach"]  # 2 vectors <-> 2 x "toy"
    _torch_side("sdxl_encode_prompt.py", _diffusers_copy(tiny_sdxl, tmp_path / "diffusers"), tmp_path / "t.npz",
                tmp_path / "demo-toy.safetensors", TOKEN, *prompts)
    theirs = np.load(tmp_path / "t.npz")
    mine = _ppdiffusers_encode(tiny_sdxl, (trained / "learned_embeds.pdparams", trained / "learned_embeds_2.pdparams"),
                               TOKEN, prompts)
    for i, (embeds, pooled) in enumerate(mine):
        np.testing.assert_allclose(embeds, theirs[f"embeds_{i}"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pooled, theirs[f"pooled_{i}"], rtol=1e-5, atol=1e-5)
    trained_embeds, initial_embeds = theirs["embeds_0"], theirs["embeds_1"]
    for half in (slice(0, 32), slice(32, 96)):  # clip_l's and clip_g's states both moved
        assert np.abs(trained_embeds[..., half] - initial_embeds[..., half]).max() > 1e-3


def test_kohya_sdxl_file_converts_to_paddle_exactly(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    pair = {"clip_l": rng.standard_normal((3, 768)).astype(np.float32),
            "clip_g": rng.standard_normal((3, 1280)).astype(np.float32)}
    save_file(pair, str(tmp_path / "my-style.safetensors"))
    out = _convert(tmp_path / "my-style.safetensors", "--to", "paddle", "-o", tmp_path / "learned_embeds.pdparams")
    assert "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2" in out
    assert np.array_equal(_pdparams(tmp_path / "learned_embeds.pdparams"), pair["clip_l"])
    assert np.array_equal(_pdparams(tmp_path / "learned_embeds_2.pdparams"), pair["clip_g"])
    # and back: the two Paddle files make the same kohya file
    _convert(tmp_path / "learned_embeds.pdparams", "--to", "torch", "--format", "webui", "--token", "my-style",
             "-o", tmp_path / "again.safetensors")
    from safetensors.numpy import load_file

    again = load_file(str(tmp_path / "again.safetensors"))
    assert all(np.array_equal(again[k], pair[k]) for k in pair)


def test_generate_loads_both_row_sets_into_the_sdxl_pipeline(trained, tiny_sdxl, tmp_path):
    """tools/generate.py's loading: an SDXL output (two files) goes into both encoders; a single-encoder
    embedding is refused with a one-line reason; the steps sweep renders."""
    from ppti.generate import GenerateError, load_into, load_pipeline, read_embedding_args

    pipeline = load_pipeline(str(tiny_sdxl))
    load_into(pipeline, read_embedding_args([trained]))
    for tokenizer, encoder, name in ((pipeline.tokenizer, pipeline.text_encoder, "learned_embeds"),
                                     (pipeline.tokenizer_2, pipeline.text_encoder_2, "learned_embeds_2")):
        ids = tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
        installed = encoder.get_input_embeddings().weight.numpy()[ids]
        assert np.array_equal(installed, _pdparams(trained / f"{name}.pdparams"))
    single = tmp_path / "single.pdparams"
    paddle.save({"<other>": paddle.zeros([1, 32])}, str(single))
    with pytest.raises(GenerateError, match="SDXL needs a clip_l \\+ clip_g pair"):
        load_into(pipeline, read_embedding_args([single]))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "generate.py"), "--model", str(tiny_sdxl),
                           "--steps_sweep", str(trained), "--prompt", f"a photo of {TOKEN}", "--num_inference_steps", "2",
                           "--num_images", "1", "-o", str(tmp_path / "sweep.png")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Image.open(tmp_path / "sweep.png").size == (64, 128)  # steps 2 and 4, one column


# ------------------------------------------------------------------------------------------------------------
# multi-card
# ------------------------------------------------------------------------------------------------------------
def test_two_ranks_train_both_row_sets_like_one_process(tiny_sdxl, tmp_path):
    """2 ranks x batch 1 == 1 process x batch 2 on both files; the all-reduce carries the two row sets only."""
    import re

    from ppti.train import train
    from conftest import ENTRY
    from helpers import SCALE_SENSITIVE_ADAM, launch

    common = dict(num_vectors=2, max_train_steps=2, scale_lr=True, center_crop=True, **SCALE_SENSITIVE_ADAM)
    two, logs = tmp_path / "two", tmp_path / "logs"
    code, console, _ = launch(ENTRY, train_args(tiny_sdxl, DEMO_IMAGES, two, train_batch_size=1, **common), logs,
                              env={"GLOG_vmodule": "reducer=3"})
    assert code == 0, console[-3000:]
    train(_config(tiny_sdxl, tmp_path / "one", train_batch_size=2, **common), DistContext())
    initial = setup(_config(tiny_sdxl, tmp_path / "init", **common), DistContext()).conditioning.learned_rows()
    for name, start in zip(("learned_embeds.pdparams", "learned_embeds_2.pdparams"), initial):
        update, expected = _pdparams(two / name) - start, _pdparams(tmp_path / "one" / name) - start
        assert np.abs(expected).max() > 1e-3
        assert np.abs(update - expected).max() / np.abs(expected).max() <= 1e-5, name
    groups = re.findall(r"The Group\[\d+\]:numel: (\d+) ;var number: (\d+)", (logs / "workerlog.0").read_text())
    assert groups == [(str(2 * 32 + 2 * 64), "2")]  # one fused all-reduce of both row sets, nothing else


def test_the_benchmarked_diffusers_sdxl_algorithm_trains_the_first_encoders_placeholder_row(tiny_sdxl):
    """benchmarks/example_algorithm.py's SDXL baseline (what `bench_train.py --size sdxl` compares against) runs
    and does what diffusers' script does: only the first encoder's placeholder row changes."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from example_algorithm import SDXLExampleTrainer

    components = load_components(str(tiny_sdxl))
    second_before = components.pipeline.text_encoder_2.get_input_embeddings().weight.numpy().copy()
    trainer = SDXLExampleTrainer(components, DEMO_IMAGES, 64, 2)
    before = trainer.original_weight.numpy()
    assert np.isfinite(trainer.optimizer_step())
    after = components.text_encoder.get_input_embeddings().weight.numpy()
    changed = np.flatnonzero(np.abs(after - before).sum(axis=1))
    assert changed.tolist() == [len(before) - 1]  # the placeholder row, nothing else
    assert np.array_equal(components.pipeline.text_encoder_2.get_input_embeddings().weight.numpy(), second_before)
