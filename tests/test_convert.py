"""tools/convert.py run as a user runs it: round trips, output naming, what it prints (including a load call
that really loads), --info, and every refusal (one line on stderr, exit code 2, no traceback)."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from ppti.embeddings import read_embeddings, round_to, write_embeddings, write_sdxl_pair

CONVERT = REPO / "tools" / "convert.py"
WIDTH = 32


def convert(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(CONVERT), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def converted(*args):
    proc = convert(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused(*args, match):
    proc = convert(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert.py: error: "), proc.stderr
    assert any(word in lines[0] for word in match), lines[0]
    return lines[0]


def vectors(n=2, width=WIDTH, seed=0):
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


@pytest.fixture
def output_dir(tmp_path):
    """A training output_dir as the trainer leaves it (final + one periodic embedding)."""
    out = tmp_path / "run"
    write_embeddings(out / "learned_embeds.pdparams", {"<cat-toy>": vectors(2)})
    write_embeddings(out / "learned_embeds-steps-500.pdparams", {"<cat-toy>": vectors(2, seed=5)})
    return out


# ---- round trips --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, name", [("diffusers", "learned_embeds.safetensors"), ("pt", "cat-toy.pt"),
                                       ("webui", "cat-toy.safetensors")])
def test_pdparams_to_torch_and_back_is_bit_exact(output_dir, tmp_path, fmt, name):
    original = output_dir / "learned_embeds.pdparams"
    converted(output_dir, "--to", "torch", "--format", fmt)
    torch_file = output_dir / name
    back = tmp_path / "back" / "learned_embeds.pdparams"
    converted(torch_file, "--to", "paddle", "-o", back, "--token", "<cat-toy>")
    assert back.read_bytes() == original.read_bytes()  # same token, same bits, same bytes


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_reduced_precision_is_exact_after_rounding(output_dir, tmp_path, dtype):
    converted(output_dir, "--to", "torch", "--dtype", dtype, "-o", tmp_path / "half.safetensors")
    (emb,) = read_embeddings(tmp_path / "half.safetensors")
    assert emb.dtype == dtype
    np.testing.assert_array_equal(emb.vectors, round_to(vectors(2), dtype))
    converted(tmp_path / "half.safetensors", "--to", "paddle", "-o", tmp_path / "back.pdparams")
    (back,) = read_embeddings(tmp_path / "back.pdparams")
    assert back.dtype == "fp32"  # decoded losslessly, written fp32 unless asked
    np.testing.assert_array_equal(back.vectors, emb.vectors)


def test_one_dimensional_input_becomes_one_row(tmp_path):
    write_embeddings(tmp_path / "learned_embeds.pdparams", {"<v>": vectors(1)[0]})
    out = converted(tmp_path, "--to", "torch", "--format", "pt")
    assert "shape [1, 32]" in out
    np.testing.assert_array_equal(read_embeddings(tmp_path / "v.pt")[0].vectors, vectors(1))


# ---- inputs, outputs and what is printed -------------------------------------------------------------------

def test_output_dir_input_and_step(output_dir):
    out = converted(output_dir, "--step", "500", "--to", "torch")
    target = output_dir / "learned_embeds-steps-500.safetensors"
    assert out.splitlines()[0] == f"wrote {target}"
    np.testing.assert_array_equal(read_embeddings(target)[0].vectors, vectors(2, seed=5))
    line = refused(output_dir, "--step", "7", "--to", "torch", match=["learned_embeds-steps-7"])
    assert "learned_embeds-steps-500.pdparams" in line  # says what is there


def test_prints_token_shape_dtype_and_load_calls(output_dir):
    lines = converted(output_dir, "--to", "torch").splitlines()
    target = output_dir / "learned_embeds.safetensors"
    assert lines == [
        f"wrote {target}",
        "token '<cat-toy>', shape [2, 32], dtype fp32 (was fp32)",
        f"diffusers: pipe.load_textual_inversion('{target}', token='<cat-toy>')",
        f"ppdiffusers: pipe.load_textual_inversion('{target}', token='<cat-toy>')",
    ]
    webui = converted(output_dir, "--to", "torch", "--format", "webui", "--token", "my toy").splitlines()
    assert webui[-1] == "WebUI: copy my-toy.safetensors into stable-diffusion-webui/embeddings/ and write my-toy in the prompt"


def test_printed_ppdiffusers_call_loads_the_embedding(tiny_model_en, output_dir, tmp_path):
    from ppdiffusers import StableDiffusionPipeline

    converted(output_dir, "--to", "torch", "-o", tmp_path / "t.bin")
    lines = converted(tmp_path / "t.bin", "--to", "paddle", "--token", "<tok>").splitlines()
    call = next(line for line in lines if line.startswith("ppdiffusers: ")).removeprefix("ppdiffusers: ")
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_en), safety_checker=None)
    eval(call, {"pipe": pipe})  # the exact line a user would paste
    ids = pipe.tokenizer.convert_tokens_to_ids(["<tok>", "<tok>_1"])
    np.testing.assert_array_equal(pipe.text_encoder.get_input_embeddings().weight.numpy()[ids], vectors(2))


def test_info_describes_without_converting(output_dir):
    write_embeddings(output_dir / "stem.pt", {"<name>": vectors(3)}, fmt="pt", dtype="bf16")
    before = sorted(output_dir.iterdir())
    lines = converted("--info", output_dir / "stem.pt").splitlines()
    assert lines[0].startswith(f"{output_dir / 'stem.pt'}: F3 WebUI")
    assert lines[1] == "  token '<name>' (from the name field), vectors 3, width 32, dtype bf16"
    assert "file stem, 'stem'" in lines[2]
    assert sorted(output_dir.iterdir()) == before
    assert "pdparams" in converted("--info", output_dir)  # an output_dir: its final embedding


def test_sdxl_pair(tmp_path):
    (pair,) = write_sdxl_pair(tmp_path / "xl.safetensors", "<xl>", vectors(2, 768), vectors(2, 1280), fmt="webui")
    out = converted(pair, "--to", "torch", "--expect_dim", "2048", "-o", tmp_path / "d" / "learned_embeds.safetensors")
    first, second = tmp_path / "d" / "learned_embeds.safetensors", tmp_path / "d" / "learned_embeds_2.safetensors"
    assert "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2" in out
    assert read_embeddings(first)[0].vectors.shape == (2, 768)
    np.testing.assert_array_equal(read_embeddings(second)[0].vectors, vectors(2, 1280))
    converted(pair, "--to", "paddle", "-o", tmp_path / "p.pdparams")
    assert [e.vectors.shape[1] for f in ("p.pdparams", "p_2.pdparams") for e in read_embeddings(tmp_path / f)] == [768, 1280]
    converted(pair, "--to", "torch", "--format", "webui", "-o", tmp_path / "again.safetensors")
    assert [e.part for e in read_embeddings(tmp_path / "again.safetensors")] == ["clip_l", "clip_g"]
    refused(pair, "--to", "torch", "--format", "pt", match=["--format webui"])


# ---- refusals -----------------------------------------------------------------------------------------------

def test_refuses_overwriting_without_force(output_dir):
    converted(output_dir, "--to", "torch")
    refused(output_dir, "--to", "torch", match=["--force"])
    converted(output_dir, "--to", "torch", "--force", "--dtype", "fp16")
    assert read_embeddings(output_dir / "learned_embeds.safetensors")[0].dtype == "fp16"


def test_refuses_width_mismatch(output_dir):
    line = refused(output_dir, "--to", "torch", "--expect_dim", "768", match=["width is 32"])
    assert "--expect_dim is 768" in line
    assert not (output_dir / "learned_embeds.safetensors").exists()


def test_refuses_several_embeddings_in_one_file(tmp_path):
    write_embeddings(tmp_path / "two.pdparams", {"<a>": vectors(1), "<b>": vectors(1)})
    refused(tmp_path / "two.pdparams", "--to", "torch", match=["holds 2 embeddings ('<a>', '<b>')"])


def test_refuses_unknown_layout(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00" * 64)
    refused(tmp_path / "x.bin", "--to", "paddle", match=["unknown container"])
    (tmp_path / "notes.safetensors").write_bytes(b"hello")
    refused("--info", tmp_path / "notes.safetensors", match=["unknown container"])


def test_refuses_pickle_with_forbidden_global_without_running_it(tmp_path):
    from helpers import malicious_files

    marker = tmp_path / "pwned"
    for path in malicious_files(tmp_path, marker):
        refused(path, "--to", "paddle", "-o", tmp_path / "out.pdparams", match=["posix.system", "os.system"])
        refused("--info", path, match=["posix.system", "os.system"])
    assert not marker.exists() and not (tmp_path / "out.pdparams").exists()


# (command line, the words only this refusal has, the same command with its one mistake fixed)
BAD_COMMAND_LINES = {
    "no_input": (["--to", "torch"], "give INPUT and --to torch|paddle", ["x.pdparams", "--to", "torch"]),
    "no_target": (["x.pdparams"], "give INPUT and --to torch|paddle", ["x.pdparams", "--to", "torch"]),
    "unknown_target": (["x.pdparams", "--to", "tensorflow"], "invalid choice: 'tensorflow'",
                       ["x.pdparams", "--to", "torch"]),
    "format_for_paddle": (["x.pdparams", "--to", "paddle", "--format", "webui"], "--to paddle always writes .pdparams",
                          ["x.pdparams", "--to", "torch", "--format", "webui"]),
    "missing_file": (["missing.pdparams", "--to", "paddle"], "missing.pdparams: no such file",
                     ["x.pdparams", "--to", "paddle", "-o", "y.pdparams"]),
    "info_with_two_files": (["--info", "a.pt", "b.pt"], "--info only describes a file", ["--info", "x.pdparams"]),
}


@pytest.mark.parametrize("case", BAD_COMMAND_LINES)
def test_refuses_bad_command_lines(tmp_path, case):
    """Each refusal says what is wrong with that command line (words a generic usage line would not hold), and the
    same command with that one mistake fixed runs."""
    args, words, fixed = BAD_COMMAND_LINES[case]
    write_embeddings(tmp_path / "x.pdparams", {"<x>": vectors(1)})
    proc = convert(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert.py: error: ") and words in lines[0], proc.stderr
    assert "usage:" not in proc.stderr
    done = convert(*fixed, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_bad_command_lines_get_their_own_messages(tmp_path):
    """The refusals differ from each other: no single message answers every mistake (only the two halves of an
    incomplete command share one, which names both)."""
    write_embeddings(tmp_path / "x.pdparams", {"<x>": vectors(1)})
    messages = {case: convert(*args, cwd=tmp_path).stderr.strip() for case, (args, _, _) in BAD_COMMAND_LINES.items()}
    assert messages["no_input"] == messages["no_target"]
    assert len(set(messages.values())) == len(messages) - 1, messages


def test_step_with_a_file_is_refused(output_dir):
    refused(output_dir / "learned_embeds.pdparams", "--step", "500", "--to", "torch", match=["--step"])
