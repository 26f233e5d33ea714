"""One name per meaning across the trainer and the tools, with the same defaults; the old names still work, with a
one-line deprecation note."""

from __future__ import annotations

import argparse

import pytest

from conftest import REPO, load_tool
from ppti.config import NUM_INFERENCE_STEPS, build_parser


@pytest.fixture(scope="module")
def generate():
    return load_tool(REPO / "tools" / "generate.py")


@pytest.fixture(scope="module")
def evaluate():
    return load_tool(REPO / "tools" / "evaluate.py")


def generate_args(tmp_path, *extra):
    return ["--model", "org/model", "--embeddings", str(tmp_path), "--prompt", "a <x>", "-o",
            str(tmp_path / "grid.png"), *extra]


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings}


def test_generate_and_evaluate_render_with_the_validation_grids_steps(generate, evaluate, tmp_path):
    """Both default to the validation grids' 25 steps (so generate reproduces a grid without extra flags)."""
    from ppti import validation

    assert validation.NUM_INFERENCE_STEPS == NUM_INFERENCE_STEPS == 25
    assert generate.parse_args(generate_args(tmp_path)).num_inference_steps == NUM_INFERENCE_STEPS
    assert evaluate.parse_args([str(tmp_path), "--model", "org/model"]).num_inference_steps == NUM_INFERENCE_STEPS


@pytest.mark.parametrize("old, value, dest, expected, note", [
    ("--steps", "3", "num_inference_steps", 3, "use --num_inference_steps 3"),
    ("--dtype", "fp32", "mixed_precision", "no", "use --mixed_precision no"),
    ("--dtype", "bf16", "mixed_precision", "bf16", "use --mixed_precision bf16"),
])
def test_generates_old_names_still_work_with_a_one_line_note(generate, tmp_path, capsys, old, value, dest, expected,
                                                             note):
    args = generate.parse_args(generate_args(tmp_path, old, value))
    assert getattr(args, dest) == expected
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old} is deprecated" in err and note in err, err


def test_the_old_names_are_refused_with_wrong_values_and_hidden_from_help(generate, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        generate.parse_args(generate_args(tmp_path, "--dtype", "no"))  # the old flag took fp32|fp16|bf16
    assert exc.value.code == 2 and "--dtype" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--num_inference_steps" in shown and "--mixed_precision" in shown
    assert "--steps " not in shown and "--dtype" not in shown


def test_one_name_per_meaning(generate, evaluate):
    """The trainer's names are the ones the tools use for the same thing, with the same choices."""
    trainer = options(build_parser())
    tools = {"generate": options(generate.build_parser()), "evaluate": options(evaluate.build_parser())}
    for name, flags in tools.items():
        assert "--mixed_precision" in flags and "--num_inference_steps" in flags, name
        assert set(flags["--mixed_precision"].choices) == set(trainer["--mixed_precision"].choices), name
        assert "--steps" not in flags and "--dtype" not in flags, name
    assert tools["evaluate"]["--output_dir"].option_strings == ["-o", "--output_dir"]  # a folder
    assert tools["generate"]["--output"].option_strings == ["-o", "--output"]  # one file
