"""SD-1.x step parity with diffusers: one step of ppti's own trainer path (setup -> micro_step_loss -> backward)
gives the loss and placeholder-row gradients that diffusers' textual-inversion computation gives on the same tiny
weights, pixels, posterior draw, noise, timesteps and prompts -- epsilon and v-prediction, 1 and 3 vectors, batch
2, cached and per-step encoded latents -- within 1e-5 relative.

The PyTorch side (tests/torch_side/sd_ti_step.py, run with .venv-torch's Python) imports nothing from ppti: it
loads the diffusers copy of the model, encodes the pixels with the VAE, samples the posterior with diffusers' own
`latent_dist.sample()` and scales it, as examples/textual_inversion/textual_inversion.py does. Its `--mistake`
switch computes the step wrongly on purpose (no VAE scaling factor; the posterior mean instead of a sample):
`test_the_sd1_parity_comparison_catches_known_mistakes` shows each one lies far outside the tolerance, so the
comparison would catch ppti making it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import DEMO_IMAGES, REPO, train_args
from ppti.config import parse_config
from ppti.data import load_concept_images
from ppti.distributed import DistContext
from ppti.train import micro_step_loss, setup

TORCH_PYTHON = REPO / ".venv-torch" / "bin" / "python"
TORCH_SIDE = REPO / "tests" / "torch_side"
TOLERANCE = 1e-5
pytestmark = [pytest.mark.torch, pytest.mark.slow,
              pytest.mark.skipif(not TORCH_PYTHON.exists(), reason=".venv-torch is missing: run "
                                 "`bash scripts/setup_torch_venv.sh` first")]

CASES = [(p, n, cached) for p in ("epsilon", "v_prediction") for n in (1, 3) for cached in (True, False)]


def case_name(prediction_type: str, num_vectors: int, cached: bool) -> str:
    return f"{prediction_type}-{num_vectors}v-{'cached' if cached else 'encoded'}"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny SD-1.x model (ppdiffusers layout) and the same weights in diffusers' layout, written by
    ppdiffusers' own `to_diffusers` export."""
    from ppdiffusers import StableDiffusionPipeline

    from ppti.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("parity-sd1")
    model = make_tiny_model(root / "model", language="en", seed=5)
    StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None).save_pretrained(
        str(root / "diffusers"), to_diffusers=True)
    return model, root / "diffusers"


def _set_prediction_type(model: Path, prediction_type: str) -> None:
    path = model / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["prediction_type"] = prediction_type
    path.write_text(json.dumps(config))


def _texts(run, input_ids: np.ndarray) -> list[str]:
    """The prompt of each example (the template whose ids it carries), written out as the diffusers script would."""
    index = [int(np.flatnonzero((run.stream.prompt_ids == row).all(axis=1))[0]) for row in input_ids]
    return [run.templates[i].format(run.config.placeholder_text()) for i in index]


def ppti_step(model: Path, out: Path, prediction_type: str, num_vectors: int, cached: bool) -> dict:
    """ppti's loss and row gradients on one batch of 2 from its own example stream, and the npz the torch side
    recomputes them from."""
    _set_prediction_type(model, prediction_type)
    config = parse_config(train_args(model, DEMO_IMAGES, out, num_vectors=num_vectors, cache_latents=cached,
                                     seed=11))
    run = setup(config, DistContext())
    assert run.components.noise_scheduler.config.prediction_type == prediction_type
    assert type(run.latents).__name__ == ("CachedLatents" if cached else "EncodedLatents")
    examples = [run.stream[k] for k in (0, 1)]  # the first micro-batch of the run (batch 2)
    batch = {name: paddle.to_tensor(np.stack([e[name] for e in examples])) for name in examples[0]}
    batch["timestep"] = paddle.to_tensor([180, 870], dtype="int64")  # one early, one late: both ends of the schedule
    # the variants' pixels as the trainer decodes them (the same call setup makes)
    images = load_concept_images(config.train_data_dir, config.resolved_height, config.resolved_width,
                                 config.center_crop, config.bucket_sizes(), config.caption_extension)
    variants = batch["variant"].numpy()
    out.mkdir(parents=True, exist_ok=True)
    inputs = out / "in.npz"
    np.savez(inputs, texts=np.array(_texts(run, batch["input_ids"].numpy())),
             tokens=np.array(config.placeholder_tokens()), rows=run.rows.rows.numpy(),
             pixels=images.pixels[variants], posterior_eps=batch["posterior_eps"].numpy(),
             noise=batch["noise"].numpy(), timesteps=batch["timestep"].numpy(), prediction_type=prediction_type)
    loss = micro_step_loss(run, batch)
    loss.backward()
    latents = run.latents.sample(batch["variant"], batch["posterior_eps"]).numpy()
    return {"inputs": inputs, "ids": batch["input_ids"].numpy(), "loss": float(loss),
            "grad": run.rows.rows.grad.numpy(), "latents": latents, "variants": variants}


def torch_step(diffusers_model: Path, cases: dict[str, dict], mistake: str = "none") -> dict[str, dict]:
    """The torch side's result of every case (one process for all of them)."""
    outs = {name: case["inputs"].parent / f"out-{mistake}.npz" for name, case in cases.items()}
    args = [arg for name, case in cases.items() for arg in (case["inputs"], outs[name])]
    proc = subprocess.run([str(TORCH_PYTHON), str(TORCH_SIDE / "sd_ti_step.py"), str(diffusers_model), *map(str, args),
                           "--mistake", mistake], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sd_ti_step.py failed:\n{proc.stderr[-3000:]}"
    return {name: dict(np.load(path)) for name, path in outs.items()}


def relative_errors(mine: dict, theirs: dict) -> tuple[float, float]:
    """(loss, gradient) differences relative to the diffusers values (the gradient's to its largest entry)."""
    loss = abs(mine["loss"] - float(theirs["loss"])) / abs(float(theirs["loss"]))
    grad = float(np.abs(mine["grad"] - theirs["grad"]).max() / np.abs(theirs["grad"]).max())
    return loss, grad


@pytest.fixture(scope="module")
def steps(models, tmp_path_factory) -> dict[str, dict]:
    model, _ = models
    root = tmp_path_factory.mktemp("steps")
    return {case_name(*case): ppti_step(model, root / case_name(*case), *case) for case in CASES}


def test_loss_and_row_gradients_match_the_diffusers_sd1_computation(models, steps):
    """Every case: the same prompt ids, the same latents, loss and row gradients within 1e-5 relative."""
    theirs = torch_step(models[1], steps)
    for name, mine in steps.items():
        other = theirs[name]
        assert np.array_equal(other["ids"], mine["ids"]), name  # diffusers' tokenizer reads the same prompts
        latent_error = np.abs(mine["latents"] - other["latents"]).max() / np.abs(other["latents"]).max()
        assert latent_error <= TOLERANCE, (name, "latents", latent_error)  # scaled posterior sample of the pixels
        assert (np.abs(mine["grad"]).max(axis=1) > 0).all(), name  # every vector is in the prompt and trains
        loss_error, grad_error = relative_errors(mine, other)
        print(f"{name}: loss {mine['loss']:.6f}, relative error loss {loss_error:.2e}, gradient {grad_error:.2e}")
        assert loss_error <= TOLERANCE and grad_error <= TOLERANCE, (name, loss_error, grad_error)
    # the cases differ where they should: the target, the number of rows, and nothing between cache and encoder
    assert steps["epsilon-1v-cached"]["loss"] != steps["v_prediction-1v-cached"]["loss"]
    assert steps["epsilon-3v-cached"]["grad"].shape == (3, 32)
    for p in ("epsilon", "v_prediction"):
        for n in (1, 3):
            cached, encoded = steps[f"{p}-{n}v-cached"], steps[f"{p}-{n}v-encoded"]
            assert np.array_equal(cached["variants"], encoded["variants"])
            assert cached["loss"] == pytest.approx(encoded["loss"], rel=TOLERANCE)


@pytest.mark.parametrize("mistake", ["no_scaling", "posterior_mean"])
def test_the_sd1_parity_comparison_catches_known_mistakes(models, steps, mistake):
    """The same comparison against a deliberately wrong diffusers step: no VAE scaling factor, or the posterior mean
    instead of a sample. Each lies orders of magnitude outside the tolerance in every case it is tried on."""
    tried = {name: steps[name] for name in ("epsilon-1v-cached", "v_prediction-3v-encoded")}
    theirs = torch_step(models[1], tried, mistake)
    for name, mine in tried.items():
        loss_error, grad_error = relative_errors(mine, theirs[name])
        print(f"{mistake} {name}: loss {loss_error:.3e}, gradient {grad_error:.3e} (relative)")
        assert max(loss_error, grad_error) > 100 * TOLERANCE, (mistake, name, loss_error, grad_error)
