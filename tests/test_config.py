"""Configuration: defaults <- YAML <- command line, validation before any model loads."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ppti.config import DEFAULT_MAX_TRAIN_STEPS, ConfigError, TrainConfig, parse_config

REPO = Path(__file__).resolve().parents[1]
BASE = ["--pretrained_model_name_or_path", "m", "--train_data_dir", "d", "--placeholder_token", "<t>",
        "--initializer_token", "toy"]


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], (512, 512)),
        (["--resolution", "256"], (256, 256)),
        (["--width", "320"], (512, 320)),  # a lone --width is kept (the example drops it)
        (["--height", "192"], (192, 512)),
        (["--height", "64", "--width", "128", "--resolution", "256"], (64, 128)),
        (["--resolution", "256", "--width", "96"], (256, 96)),
    ],
)
def test_height_width_fall_back_to_resolution_independently(flags, expected):
    config = parse_config(BASE + flags)
    assert (config.resolved_height, config.resolved_width) == expected


@pytest.mark.parametrize("flags, flag", [(["--width", "100"], "--width"), (["--resolution", "500"], "--resolution")])
def test_size_not_multiple_of_8_is_refused_naming_the_flag(flags, flag):
    with pytest.raises(ConfigError, match=f"{flag}.*multiple of 8"):
        parse_config(BASE + flags)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + ["--max_train_steps", "0", "--num_vectors", "0", "--learning_rate", "-1"])
    message = str(err.value)
    for flag in ("--max_train_steps", "--num_vectors", "--learning_rate"):
        assert flag in message


def test_yaml_then_command_line_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"pretrained_model_name_or_path": "m", "train_data_dir": "d",
                                    "placeholder_token": "<t>", "initializer_token": "toy",
                                    "learning_rate": "5.0e-04", "train_batch_size": 4, "scale_lr": True}))
    config = parse_config(["--config", str(path), "--train_batch_size", "2"])
    assert config.learning_rate == 5e-4 and config.scale_lr is True
    assert config.train_batch_size == 2  # command line wins


def test_unknown_yaml_key_and_wrong_type_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key.*learning_rat"):
        parse_config(["--config", str(path)])
    path.write_text("train_batch_size: two\n")
    with pytest.raises(ConfigError, match="train_batch_size.*int"):
        parse_config(["--config", str(path)])
    path.write_text("learnable_property: objekt\n")
    with pytest.raises(ConfigError, match="object, style"):
        parse_config(["--config", str(path)])


def test_unknown_flag_gets_one_line_with_suggestion():
    with pytest.raises(ConfigError, match="did you mean --learnable_property"):
        parse_config(BASE + ["--learnable_propery", "style"])


def test_length_flags():
    assert parse_config(BASE).max_train_steps is None  # resolved later against the epoch size
    from ppti.train import resolve_max_train_steps

    assert resolve_max_train_steps(parse_config(BASE), 10) == DEFAULT_MAX_TRAIN_STEPS
    assert resolve_max_train_steps(parse_config(BASE + ["--num_train_epochs", "3"]), 10) == 30
    with_accum = parse_config(BASE + ["--num_train_epochs", "3", "--gradient_accumulation_steps", "4"])
    assert resolve_max_train_steps(with_accum, 10) == 8  # ceil(3 * 10 / 4)
    both = parse_config(BASE + ["--num_train_epochs", "3", "--max_train_steps", "7"])
    assert resolve_max_train_steps(both, 10) == 7


def test_only_save_embeds_works_both_ways_and_seed_zero_is_a_seed():
    assert parse_config(BASE).saves_full_pipeline is False
    assert parse_config(BASE + ["--no-only_save_embeds"]).saves_full_pipeline is True
    assert parse_config(BASE + ["--save_full_pipeline"]).saves_full_pipeline is True
    assert parse_config(BASE + ["--seed", "0"]).seed == 0


def test_num_vectors_names_every_token():
    config = parse_config(BASE + ["--num_vectors", "3"])
    assert config.placeholder_tokens() == ["<t>", "<t>_1", "<t>_2"]
    assert config.placeholder_text() == "<t> <t>_1 <t>_2"


def test_every_shipped_config_parses():
    for path in sorted((REPO / "configs").glob("**/*.yaml")):
        config = parse_config(["--config", str(path)])
        assert isinstance(config, TrainConfig), path


def test_every_example_flag_is_accepted():
    """The ppdiffusers example's README commands, verbatim apart from paths."""
    readme_flags = BASE + [
        "--learnable_property=object", "--resolution=512", "--train_batch_size=1", "--gradient_accumulation_steps=4",
        "--max_train_steps=3000", "--learning_rate=5.0e-04", "--scale_lr", "--lr_scheduler=constant",
        "--lr_warmup_steps=0", "--seed", "42", "--output_dir=textual_inversion_cat",
        "--validation_prompt", "A <cat-toy> backpack", "--validation_epochs", "1", "--language", "zh",
        "--center_crop", "--repeats", "100", "--num_train_epochs", "100", "--gradient_checkpointing",
        "--lr_num_cycles", "1", "--lr_power", "1.0", "--dataloader_num_workers", "0", "--adam_beta1", "0.9",
        "--adam_beta2", "0.999", "--adam_weight_decay", "0.02", "--adam_epsilon", "1e-08", "--max_grad_norm", "-1",
        "--logging_dir", "logs", "--report_to", "visualdl", "--num_validation_images", "4", "--save_steps", "500",
        "--only_save_embeds", "--enable_xformers_memory_efficient_attention", "--noise_offset", "0",
        "--tokenizer_name", "tok", "--num_vectors", "2", "--height", "512", "--width", "512",
        "--push_to_hub", "--hub_token", "x", "--hub_model_id", "me/cat",
    ]
    config = parse_config(readme_flags)
    assert config.gradient_accumulation_steps == 4 and config.scale_lr and config.language == "zh"


def test_cli_bad_flag_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, str(REPO / "train_textual_inversion.py"), *BASE, "--width", "70"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "--width = 70 is not a multiple of 8" in proc.stderr
    assert "Traceback" not in proc.stderr
