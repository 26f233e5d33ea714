"""tools/generate.py: grids from trained embeddings in any format, step sweeps, clear refusals."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, load_tool, run_tool, train_args
from ppti.config import parse_config
from ppti.distributed import DistContext
from ppti.embeddings import read_embeddings, write_embeddings
from ppti.train import train

TOOL = REPO / "tools" / "generate.py"
PROMPT = "a photo of a <demo-toy>"


def generate(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """The tool exactly as a user runs it."""
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tool():
    """tools/generate.py as a module, to call its main() in-process."""
    return load_tool(TOOL)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def trained_run(tiny_model_en, tmp_path_factory):
    """4 steps, embeddings saved at steps 2 and 4, validated at the end (2 images, seed 7)."""
    out = tmp_path_factory.mktemp("gen") / "run"
    args = train_args(tiny_model_en, REPO / "examples" / "demo_concept", out, max_train_steps=4, save_steps=2,
                      num_validation_images=2, validation_prompt=PROMPT)
    train(parse_config(args), DistContext())
    return out


def test_generate_from_pdparams_reproduces_the_validation_grid(tiny_model_en, trained_run, tmp_path):
    """The run's final embedding, its seed and the validation settings (64 px, 25 steps) give exactly the images
    of the run's last validation grid: the tool loads embeddings the way training used them."""
    out = tmp_path / "grid.png"
    proc = generate("--model", tiny_model_en, "--embeddings", trained_run / "learned_embeds.pdparams",
                    "--prompt", PROMPT, "--num_images", 2, "--num_inference_steps", 25, "--seed", 7, "--height", 64,
                    "--width", 64, "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "images use seeds 7..8" in proc.stdout
    assert pixels(out).shape == (64, 2 * 64, 3)
    assert np.array_equal(pixels(out), pixels(trained_run / "validation" / "step-4.png"))


def test_generate_from_a_converted_safetensors_embedding_and_a_run_folder(tool, capsys, tiny_model_en, trained_run,
                                                                         tmp_path):
    (embedding,) = read_embeddings(trained_run / "learned_embeds.pdparams")
    converted = tmp_path / "learned_embeds.safetensors"
    write_embeddings(converted, {embedding.token: embedding.vectors}, fmt="diffusers")
    for source, out in ((converted, tmp_path / "from_safetensors.png"), (trained_run, tmp_path / "from_run.png")):
        code, _, err = run_tool(tool, capsys, "--model", tiny_model_en, "--embeddings", source, "--prompt", PROMPT,
                                "--num_images", 1, "--num_inference_steps", 25, "--seed", 7, "-o", out)
        assert code == 0, err[-2000:]
    # the same vectors in another format render the same image (the model's default size: 64 px)
    assert np.array_equal(pixels(tmp_path / "from_safetensors.png"), pixels(tmp_path / "from_run.png"))
    assert np.array_equal(pixels(tmp_path / "from_run.png"), pixels(trained_run / "validation" / "step-4.png")[:, :64])


def test_steps_sweep_renders_a_labelled_row_per_saved_step(tool, capsys, tiny_model_en, trained_run, tmp_path):
    out = tmp_path / "sweep.png"
    code, _, err = run_tool(tool, capsys, "--model", tiny_model_en, "--steps_sweep", trained_run, "--prompt", PROMPT,
                            "--num_images", 2, "--num_inference_steps", 25, "--seed", 7, "--height", 64, "--width", 64,
                            "-o", out)
    assert code == 0, err[-2000:]
    assert "step 2: learned_embeds-steps-2.pdparams" in err
    grid = pixels(out)
    assert grid.shape == (2 * 64, 2 * 64, 3)  # rows: steps 2 and 4; columns: seeds 7 and 8
    assert not np.array_equal(grid[:64, 64:], grid[64:, 64:])  # the embedding changed between the steps
    # the second column is unlabelled: step 4's row is the run's validation image of seed 8
    assert np.array_equal(grid[64:, 64:], pixels(trained_run / "validation" / "step-4.png")[:, 64:])


def test_several_embeddings_load_together(tiny_model_en, trained_run, tmp_path):
    from ppti.generate import load_into, load_pipeline, read_embedding_args

    (embedding,) = read_embeddings(trained_run / "learned_embeds.pdparams")
    other = tmp_path / "other.safetensors"
    write_embeddings(other, {"<other>": np.stack([embedding.vectors[0] * 2, embedding.vectors[0]])}, fmt="diffusers")
    pipeline = load_pipeline(str(tiny_model_en))
    load_into(pipeline, read_embedding_args([trained_run, other]))
    vocab = pipeline.tokenizer.get_vocab()
    assert {"<demo-toy>", "<other>", "<other>_1"} <= set(vocab)
    weight = pipeline.text_encoder.get_input_embeddings().weight.numpy()
    assert np.array_equal(weight[vocab["<other>_1"]], embedding.vectors[0])
    assert np.array_equal(weight[vocab["<demo-toy>"]], embedding.vectors[0])


def test_bad_arguments_are_one_line_errors_with_exit_code_2(tool, capsys, tiny_model_en, trained_run, tmp_path):
    wide = tmp_path / "wide.safetensors"
    write_embeddings(wide, {"<wide>": np.ones((1, 768), np.float32)}, fmt="diffusers")
    out = tmp_path / "x.png"
    cases = [
        (["--model", tmp_path / "missing", "--embeddings", trained_run], "--model"),
        (["--model", tiny_model_en, "--embeddings", tmp_path / "missing.pdparams"], "no such file"),
        (["--model", tiny_model_en, "--embeddings", tmp_path], "a folder without learned_embeds"),
        (["--model", tiny_model_en, "--steps_sweep", tmp_path], "no learned_embeds-steps-N files"),
        (["--model", tiny_model_en], "give --embeddings"),
        (["--model", tiny_model_en, "--embeddings", trained_run, "--height", 60], "multiple of 8"),
        (["--model", tiny_model_en, "--embeddings", wide], "768 dimensions, this model's text encoder 32"),
        (["--model", tiny_model_en, "--embeddings", trained_run, trained_run], "'<demo-toy>' is in both"),
    ]
    for args, expected in cases:
        code, _, err = run_tool(tool, capsys, *args, "--prompt", "x", "-o", out)
        assert code == 2, (args, err[-2000:])
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and expected in errors[0], (args, err[-2000:])
    assert not out.exists()
    # and through the real entry point: one line, exit code 2, no traceback
    proc = generate("--model", tiny_model_en, "--embeddings", tmp_path / "missing.pdparams", "--prompt", "x", "-o", out)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr


def test_dtype_defaults_to_the_runs_mixed_precision_and_is_refused_cleanly_without_kernels(tool, capsys, tiny_model_en,
                                                                                          trained_run, tmp_path):
    import shutil

    import yaml

    from ppti.generate import load_pipeline, run_dtype
    from ppti.precision import kernel_problem

    half_run = tmp_path / "fp16-run"
    shutil.copytree(trained_run, half_run)
    config = half_run / "train_config.yaml"
    config.write_text(config.read_text().replace("mixed_precision: 'no'", "mixed_precision: fp16")
                      .replace("mixed_precision: no", "mixed_precision: fp16"))
    assert yaml.safe_load(config.read_text())["mixed_precision"] == "fp16"
    assert run_dtype([half_run]) == run_dtype([half_run / "learned_embeds.pdparams"]) == "fp16"
    assert run_dtype([trained_run]) == "fp32" and run_dtype([tmp_path]) is None
    out = tmp_path / "x.png"
    if kernel_problem("float16") is not None:  # this device: a one-line refusal before the model loads
        code, _, err = run_tool(tool, capsys, "--model", tiny_model_en, "--embeddings", half_run, "--prompt", "x",
                                "-o", out)
        [error] = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and "--mixed_precision fp16: this Paddle build cannot compute in float16" in error
        assert "the training run's; give --mixed_precision no" in error and not out.exists()
    # the precisions generate renders with: UNet and VAE in the run's dtype (float64 stands in for a half dtype
    # on CPU), the text encoder in float32 -- as the trainer's validation
    pipeline = load_pipeline(str(tiny_model_en), "float64")
    assert str(pipeline.unet.dtype) == str(pipeline.vae.dtype) == "paddle.float64"
    assert str(pipeline.text_encoder.dtype) == "paddle.float32"


def test_a_damaged_train_config_next_to_the_embedding_is_a_one_line_error(tool, capsys, tiny_model_en, tmp_path):
    """--mixed_precision defaults to the run's, read from the train_config.yaml beside the embedding: a file that is
    not that YAML is named, never a YAML traceback."""
    run = tmp_path / "run"
    run.mkdir()
    write_embeddings(run / "learned_embeds.pdparams", {"<demo-toy>": np.ones((1, 32), np.float32)})
    for content in ("mixed_precision: [fp16\n", "- just\n- a list\n", "mixed_precision: 7\n"):
        (run / "train_config.yaml").write_text(content)
        code, _, stderr = run_tool(tool, capsys, "--model", tiny_model_en, "--embeddings", run, "--prompt", PROMPT,
                                   "-o", tmp_path / "x.png")
        assert code == 2 and "Traceback" not in stderr and stderr.count("\n") == 1, stderr
        assert f"{run / 'train_config.yaml'}" in stderr and "--mixed_precision" in stderr, stderr
