"""Validation: grids of fixed-seed images that never disturb training; --validation_prompt as a list."""

from __future__ import annotations

import logging
import random

import numpy as np
import paddle
import pytest
from PIL import Image

from conftest import train_args
from ppti.config import ConfigError, parse_config
from ppti.distributed import DistContext
from ppti.embeddings import read_embeddings
from ppti.models import load_components
from ppti.train import train
from ppti.validation import render, run_validation, training_state_preserved, validation_due, warn_missing_placeholder

PROMPTS = ["a photo of a <demo-toy>", "a <demo-toy> on a beach"]


def _config(model, data, out, **overrides):
    return parse_config(train_args(model, data, out, **overrides))


def _rows(path):
    return read_embeddings(path)[0].vectors


@pytest.fixture(scope="module")
def pipeline(tiny_model_en):
    return load_components(str(tiny_model_en)).pipeline


def test_validation_grids_and_an_unchanged_training_trajectory(tiny_model_en, demo_images, tmp_path):
    """Two prompts x 3 images every 3 steps and at the end; the final embedding is bit for bit that of the same
    run without validation."""
    plain = train(_config(tiny_model_en, demo_images, tmp_path / "plain", max_train_steps=4), DistContext())
    out = tmp_path / "validated"
    args = train_args(tiny_model_en, demo_images, out, max_train_steps=4, validation_steps=3,
                      num_validation_images=3)
    args += [arg for prompt in PROMPTS for arg in ("--validation_prompt", prompt)]
    validated = train(parse_config(args), DistContext())

    assert np.array_equal(_rows(validated), _rows(plain))
    grids = sorted(p.name for p in (out / "validation").iterdir())
    assert grids == ["step-3.png", "step-4.png"]  # every 3 steps, and once at the end
    for name in grids:
        with Image.open(out / "validation" / name) as grid:
            assert grid.size == (3 * 64, 2 * 64)  # a column per seed, a row per prompt
    step3 = np.asarray(Image.open(out / "validation" / "step-3.png"))
    assert not np.array_equal(step3[:64], step3[64:])  # the two prompts render differently


def test_images_depend_only_on_the_seed(pipeline):
    first = render(pipeline, PROMPTS[0], 2, seed=0, height=64, width=64, num_inference_steps=3)
    paddle.rand([5]), np.random.rand(3), random.random()  # whatever ran before must not matter
    again = render(pipeline, PROMPTS[0], 2, seed=0, height=64, width=64, num_inference_steps=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))  # image i uses seed + i
    second_seed = render(pipeline, PROMPTS[0], 1, seed=1, height=64, width=64, num_inference_steps=3)
    assert np.array_equal(np.asarray(second_seed[0]), np.asarray(first[1]))


def test_validation_leaves_generators_and_train_eval_modes_as_they_were(pipeline, tmp_path):
    from ppti.reporting import NullReporter

    pipeline.text_encoder.train()  # whatever mode the trainer uses must survive
    paddle.seed(123), np.random.seed(123), random.seed(123)
    expected = (paddle.rand([4]).numpy(), np.random.rand(4), random.random())
    paddle.seed(123), np.random.seed(123), random.seed(123)
    path = run_validation(pipeline, PROMPTS[:1], 1, 0, 64, 64, tmp_path, step=7, reporter=NullReporter())
    after = (paddle.rand([4]).numpy(), np.random.rand(4), random.random())
    assert path == tmp_path / "step-7.png" and path.is_file()
    assert np.array_equal(after[0], expected[0]) and np.array_equal(after[1], expected[1])
    assert after[2] == expected[2]
    assert pipeline.text_encoder.training and all(layer.training for layer in pipeline.text_encoder.sublayers())
    assert not pipeline.unet.training
    pipeline.text_encoder.eval()


def test_preserved_modes_are_restored_even_when_changed_inside(pipeline):
    with training_state_preserved([pipeline.unet]):
        pipeline.unet.train()
    assert not pipeline.unet.training and not any(layer.training for layer in pipeline.unet.sublayers())


def test_validation_schedule_is_a_function_of_the_step():
    # 20 micro-batches per epoch, no accumulation: epochs end at steps 20, 40, ...
    due = [s for s in range(1, 61) if validation_due(s, None, 1, 1, 20)]
    assert due == [20, 40, 60]
    due = [s for s in range(1, 61) if validation_due(s, None, 2, 1, 20)]
    assert due == [40]
    due = [s for s in range(1, 41) if validation_due(s, 15, 1, 1, 20)]
    assert due == [15, 20, 30, 40]
    # 5 micro-batches per epoch, 2 per optimizer step: epochs 1, 2, 3 end at steps 3, 5, 8
    due = [s for s in range(1, 9) if validation_due(s, None, 1, 2, 5)]
    assert due == [3, 5, 8]


def test_missing_placeholder_in_a_validation_prompt_warns(caplog):
    logger = logging.getLogger("ppti")
    logger.addHandler(caplog.handler)  # the trainer's logger does not propagate to the root logger
    try:
        with caplog.at_level(logging.WARNING, logger="ppti"):
            warn_missing_placeholder(["a photo of a <demo-toy>", "a photo of a cat toy"], "<demo-toy>")
    finally:
        logger.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'a photo of a cat toy'" in warnings[0] and "<demo-toy>" in warnings[0]


def test_validation_prompt_is_repeatable_a_yaml_list_or_one_string(tmp_path):
    base = train_args("m", "d", "o")
    assert parse_config(base + ["--validation_prompt", "a <t>", "--validation_prompt", "b <t>"]
                        ).validation_prompt == ["a <t>", "b <t>"]
    assert parse_config(base + ["--validation_prompt", "a <t>"]).validation_prompt == ["a <t>"]
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("validation_prompt: one <t>\n")
    assert parse_config(base + ["--config", str(yaml_file)]).validation_prompt == ["one <t>"]
    yaml_file.write_text("validation_prompt:\n  - one <t>\n  - two <t>\n")
    config = parse_config(base + ["--config", str(yaml_file)])
    assert config.validation_prompts == ["one <t>", "two <t>"]
    # the command line replaces the file's list
    assert parse_config(base + ["--config", str(yaml_file), "--validation_prompt", "x <t>"]
                        ).validation_prompt == ["x <t>"]
    yaml_file.write_text("validation_prompt: [1, 2]\n")
    with pytest.raises(ConfigError, match="'validation_prompt' must be a string or a list of strings"):
        parse_config(base + ["--config", str(yaml_file)])
    with pytest.raises(ConfigError, match="--validation_steps must be >= 1"):
        parse_config(base + ["--validation_steps", "0"])
