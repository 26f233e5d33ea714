"""Hostile inputs: every one ends in one clear error line naming the flag or file (no traceback, no hang), or in a
documented behaviour; nothing of an earlier run is corrupted or mixed with a new one.

The first part is one test per row of issue 16; the second a sweep of further hostile inputs (flags, YAML files,
folders, checkpoints, the converter, generate.py, make_tiny_model.py). Almost all of them must be refused before
any model loads: the `no_model` fixture makes loading one fail the test. Full disks are in test_full_disk.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ENTRY, REPO, train_args

from ppti.atomic import TMP_MARK

TOOLS = REPO / "tools"


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def cli(argv, capsys) -> tuple[int, str]:
    """train_textual_inversion.py's main in this process: (exit code, stderr). An uncaught exception fails the
    test with its traceback, which is what a user would have seen."""
    from ppti.cli import main

    rc = main([a if isinstance(a, str) else str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_error(err: str) -> str:
    """The single 'error:' line of a clean refusal (log lines before it are fine)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(("error:", "convert.py: error:",
                                                                     "generate.py: error:"))]
    assert len(errors) == 1, err
    return errors[0]


class ModelLoaded(BaseException):
    """What the no-model guards raise: a BaseException, so no `except Exception` in the library (the loaders turn
    every loader failure into a ModelError refusal) can mistake it for an ordinary refusal. The guards also record
    every call and fail the test afterwards, whatever happened to the exception."""


def _forbid_loading(monkeypatch, what: str, tokenizers: bool) -> list:
    """Every way a model loads (ppti's loaders and the from_pretrained of ppdiffusers' pipelines and models and of
    the text encoders' classes; with `tokenizers` also the tokenizers') raises ModelLoaded and is recorded."""
    from paddlenlp.transformers.model_utils import PretrainedModel
    from paddlenlp.transformers.tokenizer_utils import ChatTemplateMixin
    from paddlenlp.transformers.tokenizer_utils_base import PretrainedTokenizerBase
    from ppdiffusers import DiffusionPipeline
    from ppdiffusers.models.modeling_utils import ModelMixin
    from ppdiffusers.transformers.model_utils import PretrainedModel as PpdiffusersPretrainedModel

    import ppti.models
    import ppti.train

    calls = []

    def forbidden(*args, **kwargs):
        calls.append(" ".join(str(a) for a in args if isinstance(a, (str, os.PathLike))) or repr(kwargs))
        raise ModelLoaded(f"{what} loaded before the input was refused")

    monkeypatch.setattr(ppti.train, "load_components", forbidden)
    monkeypatch.setattr(ppti.models, "load_components", forbidden)
    classes = [DiffusionPipeline, ModelMixin, PretrainedModel, PpdiffusersPretrainedModel]
    if tokenizers:
        monkeypatch.setattr(ppti.models, "load_tokenizer", forbidden)
        monkeypatch.setattr(ppti.models, "load_text_side", forbidden)
        classes += [ChatTemplateMixin, PretrainedTokenizerBase]
    for cls in classes:
        monkeypatch.setattr(cls, "from_pretrained", classmethod(forbidden))
    return calls


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model (even its tokenizer) fails the test: the refusal must come before."""
    calls = _forbid_loading(monkeypatch, "a model (or its tokenizer) was", tokenizers=True)
    yield calls
    assert not calls, f"a model was loaded before the input was refused: {calls}"


@pytest.fixture
def no_weights(monkeypatch):
    """Loading the model's weights fails the test (its tokenizer alone may load)."""
    calls = _forbid_loading(monkeypatch, "the model's weights were", tokenizers=False)
    yield calls
    assert not calls, f"the model's weights were loaded before the input was refused: {calls}"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool_hostile", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name: str, argv, capsys) -> tuple[int, str]:
    try:
        rc = load_tool(name).main([str(a) for a in argv])
    except SystemExit as exc:  # argparse-level refusals exit 2
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(tiny_model_en, tmp_path_factory) -> Path:
    """A finished 4-step run with steps saved at 1..4 and checkpoints at 2 and 4."""
    from ppti.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(tiny_model_en, REPO / "examples" / "demo_concept", out, save_steps=1,
                           checkpointing_steps=2)) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def digests(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------------------
# the rows of issue 16
# ------------------------------------------------------------------------------------------------------------
def test_row_resolution_100000_is_refused_before_anything_loads(tiny_model_en, demo_images, tmp_path, capsys,
                                                                no_model):
    rc, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "o", resolution=100000), capsys)
    line = one_error(err)
    assert rc == 2 and "--resolution 100000" in line and "maximum 2048" in line
    assert not (tmp_path / "o").exists()


def test_row_num_vectors_100000_is_refused_at_once_not_a_hang(tiny_model_en, demo_images, tmp_path, capsys,
                                                              no_weights):
    started = time.monotonic()
    rc, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "o", num_vectors=100000), capsys)
    assert rc == 2 and time.monotonic() - started < 60
    line = one_error(err)
    assert "--num_vectors 100000" in line and "at most" in line and "prompt length" in line
    assert not (tmp_path / "o").exists()


def test_row_num_vectors_80_is_refused_before_the_weights_load_saying_the_maximum(tiny_model_en, demo_images,
                                                                                 tmp_path, capsys, no_weights):
    rc, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "o", num_vectors=80), capsys)
    line = one_error(err)
    assert rc == 2 and "--num_vectors 80" in line and "at most" in line and len(line) < 400, line
    maximum = int(line.split("at most ")[1].split()[0])
    assert 60 < maximum < 77  # a 77-token CLIP prompt less the template's words


def test_row_num_vectors_at_the_maximum_trains_every_vector(tiny_model_en, demo_images, tmp_path, capsys):
    """The maximum the refusal names is the real one: with that many vectors every training prompt holds every
    vector once, in order, and the longest prompt ends exactly at the prompt length (no room for one more, which is
    refused); one optimizer step then moves every row."""
    from ppti.config import parse_config
    from ppti.distributed import DistContext
    from ppti.prompts import check_prompt_room
    from ppti.train import batches, optimizer_step, setup

    _, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "o", num_vectors=80), capsys)
    maximum = int(one_error(err).split("at most ")[1].split()[0])
    with pytest.raises(Exception, match=f"--num_vectors {maximum + 1}: .*at most {maximum}"):
        check_prompt_room(parse_config(train_args(tiny_model_en, demo_images, tmp_path / "o",
                                                  num_vectors=maximum + 1)))
    run = setup(parse_config(train_args(tiny_model_en, demo_images, tmp_path / "o", num_vectors=maximum)),
                DistContext())
    ids, eos = run.placeholder_ids, run.components.tokenizer.eos_token_id
    assert len(ids) == maximum
    prompts = run.stream.prompt_ids  # (templates, prompt length)
    for prompt in prompts.tolist():
        start = prompt.index(ids[0])
        assert prompt[start:start + maximum] == ids and all(prompt.count(i) == 1 for i in ids), prompt
    ends = [prompt.index(eos) for prompt in prompts.tolist()]  # the position of each prompt's end token
    assert max(ends) == prompts.shape[1] - 1, ends  # the longest prompt fills the length exactly
    before = run.rows.rows.numpy().copy()
    optimizer_step(run, iter(batches(run, 0)))
    moved = np.abs(run.rows.rows.numpy() - before).max(axis=1)
    assert (moved > 0).all(), f"rows {np.flatnonzero(moved == 0).tolist()} of {maximum} did not train"


def test_row_yaml_that_is_not_utf8(tmp_path, capsys, no_model):
    config = tmp_path / "c.yaml"
    config.write_bytes("placeholder_token: \"<风格>\"\n".encode("gbk"))  # (GBK: Chinese Windows editors)
    rc, err = cli(["--config", config], capsys)
    line = one_error(err)
    assert rc == 2 and "--config" in line and "not UTF-8" in line


@pytest.mark.parametrize("text, expected", [
    ("resolution: null", "'resolution' must be an integer, got null"),
    ("learning_rate: null", "'learning_rate' must be a number, got null"),
    ("center_crop: null", "'center_crop' must be true or false, got null"),
    ("output_dir: null", "'output_dir' must be a string, got null"),
    ("resolution: [512]", "'resolution' must be an integer, got list"),
    ("resolution: 5.5", "'resolution' must be an integer, got float"),
    ("center_crop: 3", "'center_crop' must be true or false, got int"),
])
def test_row_yaml_values_of_the_wrong_type(tmp_path, capsys, no_model, text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n", encoding="utf-8")
    rc, err = cli(["--config", config], capsys)
    assert rc == 2 and expected in one_error(err)


def test_yaml_null_for_an_optional_key_means_its_default(tmp_path):
    from ppti.config import load_yaml

    config = tmp_path / "c.yaml"
    config.write_text("seed: null\nvalidation_prompt: null\n", encoding="utf-8")
    assert load_yaml(str(config)) == {"seed": None, "validation_prompt": None}


def test_row_placeholder_with_invalid_utf8_bytes_from_the_shell(tiny_model_en, demo_images, tmp_path):
    args = [os.fsencode(a) for a in train_args(tiny_model_en, demo_images, tmp_path / "o")]
    args[args.index(b"--placeholder_token") + 1] = b"<caf\xe9>"  # Latin-1, as a non-UTF-8 terminal sends it
    done = subprocess.run([sys.executable, os.fsencode(ENTRY), *args], capture_output=True, timeout=120,
                          env={**os.environ, "LC_ALL": "C.UTF-8", "PYTHONUTF8": "1"})
    err = done.stderr.decode("utf-8", "replace")
    line = one_error(err)
    assert done.returncode == 2 and "--placeholder_token" in line and "not valid UTF-8" in line
    assert "Loading" not in err  # refused in the input checks, before the model


def test_row_placeholder_with_invalid_utf8_is_refused_before_any_model(tiny_model_en, demo_images, tmp_path,
                                                                      capsys, no_model):
    """The same bytes as Python hands them to main() (surrogate-escaped, as sys.argv holds them)."""
    args = train_args(tiny_model_en, demo_images, tmp_path / "o", placeholder_token=os.fsdecode(b"<caf\xe9>"))
    rc, err = cli(args, capsys)
    line = one_error(err)
    assert rc == 2 and "--placeholder_token" in line and "not valid UTF-8" in line


@pytest.mark.parametrize("which", ["latest", "explicit"])
def test_row_corrupt_checkpoint_marker(finished_run, tmp_path, capsys, no_model, which):
    out = copy_of(finished_run, tmp_path)
    marker = out / "checkpoints" / "checkpoint-4" / "checkpoint_complete.json"
    marker.write_text('{"step": 4, "files": {', encoding="utf-8")
    resume = "latest" if which == "latest" else out / "checkpoints" / "checkpoint-4"
    rc, err = cli(_args_for(finished_run, out, resume_from_checkpoint=resume, max_train_steps=6), capsys)
    line = one_error(err)
    assert rc == 2 and "damaged" in line and "resume from an earlier checkpoint" in line and "checkpoint-2" in line


def _args_for(run: Path, out: Path, **overrides) -> list[str]:
    """The finished run's command (from its train_config.yaml) into `out`, with overrides."""
    import yaml

    saved = yaml.safe_load((run / "train_config.yaml").read_text(encoding="utf-8"))
    return train_args(saved["pretrained_model_name_or_path"], saved["train_data_dir"], out, **overrides)


def test_row_initializer_equal_to_the_placeholder(tiny_model_en, demo_images, tmp_path, capsys, no_model):
    rc, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "o", initializer_token="<demo-toy>"), capsys)
    line = one_error(err)
    assert rc == 2 and "--initializer_token '<demo-toy>' is the placeholder itself" in line


def test_row_empty_output_dir(tiny_model_en, demo_images, tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = cli(train_args(tiny_model_en, demo_images, ""), capsys)
    assert rc == 2 and "--output_dir is empty" in one_error(err)
    assert list(tmp_path.iterdir()) == []


def test_row_second_run_into_a_finished_run_is_refused_naming_both_options(finished_run, tmp_path, capsys, no_model):
    out = copy_of(finished_run, tmp_path)
    before = digests(out)
    rc, err = cli(_args_for(finished_run, out, seed=8), capsys)
    line = one_error(err)
    assert rc == 2 and "--overwrite_output_dir" in line and "--resume_from_checkpoint" in line and str(out) in line
    assert digests(out) == before


def test_overwrite_output_dir_removes_the_earlier_run_so_nothing_mixes(finished_run, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # not a ppti file: stays
    rc, err = cli(_args_for(finished_run, out, seed=8, save_steps=3, checkpointing_steps=0, max_train_steps=3,
                            overwrite_output_dir=True), capsys)
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["learned_embeds-steps-3.pdparams", "learned_embeds.pdparams", "notes.txt",
                     "token_identifier.txt", "train_config.yaml", "type_of_concept.txt"], names
    assert "seed: 8" in (out / "train_config.yaml").read_text(encoding="utf-8")


def test_overwrite_keeps_the_new_runs_own_log_file(finished_run, tmp_path, capsys, monkeypatch):
    """tensorboardX's SummaryWriter creates and opens its events file during set-up, before the earlier run's files
    are removed: only those are removed, the new log stays. (A stand-in SummaryWriter that does what tensorboardX
    does: tensorboardX is optional and not installed here.)"""
    import types

    class SummaryWriter:
        def __init__(self, logdir):
            Path(logdir).mkdir(parents=True, exist_ok=True)
            self.file = open(Path(logdir) / f"events.out.tfevents.{os.getpid()}", "a", encoding="utf-8")

        def add_scalar(self, tag, value, step):
            self.file.write(f"{tag} {step} {value}\n")

        def close(self):
            self.file.close()

    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    out = copy_of(finished_run, tmp_path)
    (out / "logs").mkdir()
    (out / "logs" / "events.out.tfevents.earlier").write_text("train/loss 1 0.5\n", encoding="utf-8")
    rc, err = cli(_args_for(finished_run, out, max_train_steps=2, checkpointing_steps=0, report_to="tensorboard",
                            overwrite_output_dir=True), capsys)
    assert rc == 0, err
    (log,) = (out / "logs").iterdir()  # the earlier run's log removed, this run's kept
    assert [line.split()[:2] for line in log.read_text().splitlines() if line.startswith("train/loss")] == \
        [["train/loss", "1"], ["train/loss", "2"]]


def test_resume_into_the_same_folder_with_the_same_command_still_continues(finished_run, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    rc, err = cli(_args_for(finished_run, out, save_steps=1, checkpointing_steps=2, max_train_steps=6,
                            resume_from_checkpoint="latest"), capsys)
    assert rc == 0 and "resuming from" in err, err
    assert (out / "learned_embeds-steps-2.pdparams").read_bytes() == \
        (finished_run / "learned_embeds-steps-2.pdparams").read_bytes()  # the earlier steps are kept
    assert (out / "learned_embeds-steps-6.pdparams").is_file()


def test_resume_latest_without_a_checkpoint_starts_over_without_mixing(finished_run, tmp_path, capsys):
    """--resume_from_checkpoint latest in a folder whose run has no checkpoint: the run starts from step 0 (as the
    same command always did) and first removes the earlier run's files."""
    out = copy_of(finished_run, tmp_path)
    shutil.rmtree(out / "checkpoints")
    rc, err = cli(_args_for(finished_run, out, seed=8, save_steps=3, checkpointing_steps=0, max_train_steps=3,
                            resume_from_checkpoint="latest"), capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.glob("learned_embeds*")) == ["learned_embeds-steps-3.pdparams",
                                                                    "learned_embeds.pdparams"]


def test_the_quick_start_config_stays_re_runnable():
    from ppti.config import load_yaml

    assert load_yaml(str(REPO / "configs" / "demo.yaml"))["overwrite_output_dir"] is True


def test_row_initializer_of_single_letters_gets_the_fragment_warning(tiny_model_en, caplog):
    from ppti.models import load_text_side
    from ppti.tokens import initializer_ids, letter_fragments

    tokenizer = load_text_side(str(tiny_model_en)).tokenizer
    with caplog.at_level(logging.WARNING, logger="ppti"):
        initializer_ids(tokenizer, "toy")
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="ppti"):
        initializer_ids(tokenizer, "qwzxjvkq")
    assert "'qwzxjvkq'" in caplog.text and "letter fragment(s)" in caplog.text and "close to noise" in caplog.text
    assert letter_fragments(["风", "格"]) == [] and letter_fragments(["gy", "ro", "scope</w>"]) == []


def test_row_looping_and_broken_symlinks_are_named_in_the_skip_list(demo_images, tmp_path, caplog):
    from ppti.data import DataError, load_concept_images

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(next(demo_images.glob("*.png")), data / "real.png")
    os.symlink(data / "b.png", data / "a.png")
    os.symlink(data / "a.png", data / "b.png")  # a -> b -> a
    os.symlink(tmp_path / "gone.jpg", data / "dangling.jpg")
    with caplog.at_level(logging.WARNING, logger="ppti"):
        images = load_concept_images(data, 64, 64, False)
    assert images.num_images == 1
    assert {p.name: why for p, why in images.skipped} == {name: "a broken or looping symbolic link"
                                                          for name in ("a.png", "b.png", "dangling.jpg")}
    assert "dangling.jpg" in caplog.text
    (data / "real.png").unlink()
    with pytest.raises(DataError, match="a.png: a broken or looping symbolic link"):
        load_concept_images(data, 64, 64, False)


def test_row_abbreviated_flags_are_refused(tiny_model_en, demo_images, tmp_path, capsys, no_model):
    rc, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "o", max_train_steps=None) + ["--max_train", "3"],
                  capsys)
    line = one_error(err)
    assert rc == 2 and "--max_train" in line and "did you mean --max_train_steps" in line


def test_row_generate_output_that_is_a_directory_is_refused_before_rendering(tiny_model_en, tmp_path, capsys,
                                                                            no_model):
    rc, err = run_tool("generate", ["--model", tiny_model_en, "--embeddings", tmp_path, "--prompt", "a <t>",
                                    "-o", tmp_path], capsys)
    line = one_error(err)
    assert rc == 2 and f"-o {tmp_path} is a directory" in line


# cosmetic rows
def test_row_resolution_7_says_use_8_once(capsys, tmp_path, tiny_model_en, demo_images, no_model):
    rc, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "o", resolution=7), capsys)
    line = one_error(err)
    assert rc == 2 and line.count("--resolution") == 1 and line.endswith("use 8") and "8 or 8" not in line


def test_row_empty_placeholder_reports_only_that_it_is_required(capsys, tmp_path, tiny_model_en, demo_images,
                                                                 no_model):
    rc, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "o", placeholder_token=""), capsys)
    line = one_error(err)
    assert rc == 2 and line.endswith("--placeholder_token is required") and "white space" not in err


def test_row_config_that_is_a_directory(tmp_path, capsys, no_model):
    rc, err = cli(["--config", tmp_path], capsys)
    assert rc == 2 and "is a directory" in one_error(err)


def test_row_resume_from_a_file(finished_run, tmp_path, capsys, no_model):
    out = copy_of(finished_run, tmp_path)
    rc, err = cli(_args_for(finished_run, out, resume_from_checkpoint=out / "learned_embeds.pdparams"), capsys)
    assert rc == 2 and "a file, not a checkpoint folder" in one_error(err)


def test_row_checkpoints_and_tiny_model_weights_get_normal_permissions(finished_run, tiny_model_en):
    mask = os.umask(0)
    os.umask(mask)
    checkpoint = finished_run / "checkpoints" / "checkpoint-2"
    for path in [checkpoint, *checkpoint.iterdir(), *tiny_model_en.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == expected, path
    assert not [p for p in tiny_model_en.rglob(f"*{TMP_MARK}*")]


# ------------------------------------------------------------------------------------------------------------
# the sweep: further hostile inputs to the trainer, each refused in one line naming its flag, before any model
# ------------------------------------------------------------------------------------------------------------
def _yaml(ctx, text: str, raw: bytes = b"") -> list:
    path = ctx["tmp"] / "c.yaml"
    path.write_bytes(raw or text.encode("utf-8"))
    return ["--config", path]


def _data(ctx, files: dict[str, bytes]) -> Path:
    folder = ctx["tmp"] / "data"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def _broken_model(ctx, model_index: bytes) -> Path:
    folder = ctx["tmp"] / "model"
    folder.mkdir()
    (folder / "model_index.json").write_bytes(model_index)
    return folder


def _checkpoint_without_marker(ctx) -> Path:
    folder = ctx["out"] / "checkpoints" / "checkpoint-3"
    folder.mkdir(parents=True)
    return folder


def _file(ctx, name: str, content: bytes = b"x") -> Path:
    path = ctx["tmp"] / name
    path.write_bytes(content)
    return path


TRAINER_CASES = {
    # flag values
    "resolution_0": (lambda c: c["args"](resolution=0), "--resolution must be >= 1"),
    "resolution_negative": (lambda c: c["args"](resolution=-64), "--resolution must be >= 1"),
    "resolution_not_a_number": (lambda c: c["args"](resolution="abc"), "--resolution: invalid int value"),
    "height_4096": (lambda c: c["args"](height=4096), "--height 4096 is above the maximum 2048"),
    "width_12": (lambda c: c["args"](width=12), "--width = 12 is not a multiple of 8"),
    "num_vectors_0": (lambda c: c["args"](num_vectors=0), "--num_vectors must be >= 1"),
    "learning_rate_nan": (lambda c: c["args"](learning_rate="nan"), "--learning_rate must be a positive number"),
    "learning_rate_inf": (lambda c: c["args"](learning_rate="inf"), "--learning_rate must be a positive number"),
    "learning_rate_negative": (lambda c: c["args"](learning_rate=-1), "--learning_rate must be a positive number"),
    "adam_beta1_above_1": (lambda c: c["args"](adam_beta1=1.5), "--adam_beta1 and --adam_beta2 must be in [0, 1)"),
    "adam_epsilon_0": (lambda c: c["args"](adam_epsilon=0), "--adam_epsilon must be > 0"),
    "seed_negative": (lambda c: c["args"](seed=-1), "--seed must be in [0, 2**32)"),
    "seed_too_large": (lambda c: c["args"](seed=2**32), "--seed must be in [0, 2**32)"),
    "train_batch_size_0": (lambda c: c["args"](train_batch_size=0), "--train_batch_size must be >= 1"),
    "accumulation_0": (lambda c: c["args"](gradient_accumulation_steps=0), "--gradient_accumulation_steps must be"),
    "max_train_steps_0": (lambda c: c["args"](max_train_steps=0), "--max_train_steps must be >= 1"),
    "epochs_negative": (lambda c: c["args"](num_train_epochs=-3, max_train_steps=None), "--num_train_epochs must"),
    "lr_scheduler_typo": (lambda c: c["args"](lr_scheduler="cosin"), "--lr_scheduler: invalid choice: 'cosin'"),
    "mixed_precision_fp8": (lambda c: c["args"](mixed_precision="fp8"), "--mixed_precision: invalid choice"),
    "report_to_wandb": (lambda c: c["args"](report_to="wandb"), "--report_to: invalid choice: 'wandb'"),
    "save_format_npz": (lambda c: c["args"](save_format="npz"), "--save_format: invalid choice"),
    "unknown_flag": (lambda c: c["args"]() + ["--placeholder", "x"], "unrecognized arguments: --placeholder"),
    "checkpointing_steps_negative": (lambda c: c["args"](checkpointing_steps=-1), "--checkpointing_steps must be"),
    "checkpoints_total_limit_0": (lambda c: c["args"](checkpoints_total_limit=0), "--checkpoints_total_limit must"),
    "validation_steps_0": (lambda c: c["args"](validation_steps=0), "--validation_steps must be >= 1"),
    "dataloader_workers_negative": (lambda c: c["args"](dataloader_num_workers=-1), "--dataloader_num_workers must"),
    "noise_offset_negative": (lambda c: c["args"](noise_offset=-0.1), "--noise_offset must be >= 0"),
    "num_vectors_511": (lambda c: c["args"](num_vectors=511), "--num_vectors 511: the placeholders cannot fit"),
    # text
    "empty_validation_prompt": (lambda c: c["args"](validation_prompt=""), "--validation_prompt is empty"),
    "placeholder_with_a_space": (lambda c: c["args"](placeholder_token="<a b>"), "contains white space"),
    "blank_initializer": (lambda c: c["args"](initializer_token="   "), "--initializer_token is empty"),
    "initializer_holding_the_placeholder": (lambda c: c["args"](initializer_token="toy <demo-toy>"),
                                            "is the placeholder itself"),
    "empty_logging_dir": (lambda c: c["args"](logging_dir=""), "--logging_dir is empty"),
    # folders and files
    "output_dir_is_the_data_dir": (lambda c: c["args"](output_dir=c["data"]), "is the --train_data_dir folder"),
    "output_dir_is_the_model": (lambda c: c["args"](output_dir=c["model"]),
                                "is the --pretrained_model_name_or_path folder"),
    "output_dir_is_a_file": (lambda c: c["args"](output_dir=_file(c, "out.txt")), "cannot write there"),
    "output_dir_inside_a_file": (lambda c: c["args"](output_dir=_file(c, "f") / "sub"), "cannot write there"),
    "train_data_dir_missing": (lambda c: c["args"](train_data_dir=c["tmp"] / "nope"), "no such directory"),
    "train_data_dir_is_a_file": (lambda c: c["args"](train_data_dir=_file(c, "a.png")), "not a directory"),
    "data_dir_only_text": (lambda c: c["args"](train_data_dir=_data(c, {"notes.txt": b"hi"})),
                           "notes.txt: not an image file"),
    "data_dir_truncated_png": (lambda c: c["args"](train_data_dir=_data(
        c, {"cut.png": (REPO / "examples" / "demo_concept" / "toy-1.png").read_bytes()[:200]})),
        "cut.png: cannot decode"),
    "data_dir_empty_png": (lambda c: c["args"](train_data_dir=_data(c, {"zero.png": b""})), "zero.png: cannot decode"),
    "model_without_model_index": (lambda c: c["args"](pretrained_model_name_or_path=c["tmp"]), "no model_index.json"),
    "model_index_not_json": (lambda c: c["args"](pretrained_model_name_or_path=_broken_model(c, b"{nope")),
                             "model_index.json is not valid JSON"),
    "model_index_not_utf8": (lambda c: c["args"](pretrained_model_name_or_path=_broken_model(c, b"\xff\xfe{}")),
                             "model_index.json is not valid JSON"),
    "model_path_missing": (lambda c: c["args"](pretrained_model_name_or_path=c["tmp"] / "a" / "b" / "c"),
                           "no such directory"),
    "templates_missing": (lambda c: c["args"](templates=c["tmp"] / "t.txt"), "--templates"),
    "templates_is_a_directory": (lambda c: c["args"](templates=c["tmp"]), "is a directory"),
    "templates_not_utf8": (lambda c: c["args"](templates=_file(c, "t.txt", "一幅{}的画".encode("gbk"))), "not UTF-8"),
    "templates_without_braces": (lambda c: c["args"](templates=_file(c, "t.txt", b"a photo\n")), "--templates"),
    # YAML
    "yaml_missing": (lambda c: c["args"]() + ["--config", c["tmp"] / "none.yaml"], "no such file"),
    "yaml_a_list": (lambda c: c["args"]() + _yaml(c, "- a\n- b\n"), "expected a mapping"),
    "yaml_unknown_key": (lambda c: c["args"]() + _yaml(c, "resolutoin: 64\n"), "unknown key(s) resolutoin"),
    "yaml_string_for_int": (lambda c: c["args"]() + _yaml(c, "resolution: big\n"), "must be an integer, got str"),
    "yaml_bool_for_int": (lambda c: c["args"]() + _yaml(c, "resolution: true\n"), "must be an integer, got bool"),
    "yaml_syntax_error": (lambda c: c["args"]() + _yaml(c, "a: [1,\n"), "not valid YAML"),
    "yaml_number_prompt": (lambda c: c["args"]() + _yaml(c, "validation_prompt: 5\n"), "'validation_prompt' must"),
    "yaml_choice_typo": (lambda c: c["args"]() + _yaml(c, "learnable_property: objcet\n"), "must be one of object"),
    "yaml_utf16": (lambda c: c["args"]() + _yaml(c, "", "seed: 1\n".encode("utf-16")), "not UTF-8"),
    # checkpoints
    "resume_missing_folder": (lambda c: c["args"](resume_from_checkpoint=c["tmp"] / "nope"), "no such directory"),
    "resume_an_output_dir": (lambda c: c["args"](resume_from_checkpoint=_checkpoint_without_marker(c).parent.parent),
                             "this is a run's output directory"),
    "resume_incomplete_checkpoint": (lambda c: c["args"](resume_from_checkpoint=_checkpoint_without_marker(c)),
                                     "not a complete checkpoint"),
}


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_trainer_refuses_before_any_model_loads(case, tiny_model_en, demo_images, tmp_path, capsys, no_model):
    ctx = {"tmp": tmp_path, "model": tiny_model_en, "data": demo_images, "out": tmp_path / "out"}
    ctx["args"] = lambda **overrides: train_args(tiny_model_en, demo_images, ctx["out"], **overrides)
    make, expected = TRAINER_CASES[case]
    rc, err = cli(make(ctx), capsys)
    line = one_error(err)
    assert rc == 2 and expected in line, line
    assert not [p for p in tmp_path.rglob(f"*{TMP_MARK}*")]


# refused from the tokenizer alone: before the weights load
TOKENIZER_CASES = {
    "placeholder_already_a_word": (dict(placeholder_token="toy", initializer_token="cat"),
                                   "--placeholder_token 'toy' is already a word of the tokenizer"),
    "placeholder_a_special_token": (dict(placeholder_token="<|endoftext|>"), "--placeholder_token '<|endoftext|>'"),
    "initializer_without_tokens": (dict(initializer_token="\ufeff"), "tokenizes to no usable token"),
}


@pytest.mark.parametrize("case", TOKENIZER_CASES)
def test_trainer_refuses_token_problems_before_the_weights_load(case, tiny_model_en, demo_images, tmp_path, capsys,
                                                                no_weights):
    overrides, expected = TOKENIZER_CASES[case]
    rc, err = cli(train_args(tiny_model_en, demo_images, tmp_path / "out", **overrides), capsys)
    line = one_error(err)
    assert rc == 2 and expected in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mount", ["tmpfs", "simulated"])
def test_trainer_on_a_read_only_output_folder(tiny_model_en, demo_images, tmp_path, capsys, no_model, monkeypatch,
                                              mount):
    """Root ignores permission bits, so a read-only tmpfs stands for a read-only share. Where mounting is not
    allowed, the simulated variant answers access(2) as a read-only mount does (no write access under the folder),
    and any directory made under it fails with EROFS."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if mount == "tmpfs":
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode:
            pytest.skip("cannot mount a read-only tmpfs here (not root); the simulated variant runs instead")
    else:
        import errno

        real_access, real_mkdir = os.access, os.mkdir

        def under(path) -> bool:
            return os.path.abspath(os.fsdecode(path)).startswith(str(folder))

        def access(path, mode, *args, **kwargs):
            return False if under(path) and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

        def mkdir(path, *args, **kwargs):
            if under(path):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        rc, err = cli(train_args(tiny_model_en, demo_images, folder / "run"), capsys)
    finally:
        if mount == "tmpfs":
            subprocess.run(["umount", "-l", str(folder)], check=False)
    line = one_error(err)
    assert rc == 2 and f"--output_dir {folder / 'run'}: cannot write there" in line
    assert list(folder.iterdir()) == []


def test_damaged_checkpoint_file_is_refused_before_any_model(finished_run, tmp_path, capsys, no_model):
    out = copy_of(finished_run, tmp_path)
    (out / "checkpoints" / "checkpoint-4" / "optimizer.safetensors").write_bytes(b"garbage")
    rc, err = cli(_args_for(finished_run, out, resume_from_checkpoint="latest", max_train_steps=6), capsys)
    line = one_error(err)
    assert rc == 2 and "optimizer.safetensors is missing or damaged" in line and "checkpoint-2" in line


def test_a_log_folder_shared_by_runs_is_not_an_earlier_run_of_a_new_output_dir(tmp_path, demo_images):
    """--logging_dir outside --output_dir (absolute, or ../logs: one TensorBoard folder for every run) holds other
    runs' logs: they neither make a new --output_dir "hold an earlier run" nor are removed by an overwrite."""
    from ppti.config import parse_config
    from ppti.outputs import check_output_dir, previous_run

    shared = tmp_path / "all-logs"
    shared.mkdir()
    (shared / "events.out.tfevents.other-run").write_text("x")
    (shared / "vdlrecords.1700000000.log").write_text("x")
    (tmp_path / "new-run").mkdir()  # (made by the user, empty)
    for logging_dir in (str(shared), "../all-logs"):
        config = parse_config(train_args(tmp_path / "model", demo_images, tmp_path / "new-run",
                                         logging_dir=logging_dir))
        assert previous_run(config) == []
        check_output_dir(config)  # not refused


def test_overwrite_does_not_touch_files_of_other_tools(finished_run, tmp_path):
    """--overwrite_output_dir removes only what a run writes (documented)."""
    from ppti.config import parse_config
    from ppti.outputs import previous_run, remove_previous_run

    out = copy_of(finished_run, tmp_path)
    (out / "README.md").write_text("mine", encoding="utf-8")
    (out / "logs").mkdir(exist_ok=True)
    (out / "logs" / "notes.txt").write_text("mine", encoding="utf-8")
    (out / "logs" / "vdlrecords.1.log").write_bytes(b"old")
    config = parse_config(_args_for(finished_run, out, overwrite_output_dir=True))
    assert previous_run(config)
    remove_previous_run(config)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["README.md", "logs", "logs/notes.txt"]


# ------------------------------------------------------------------------------------------------------------
# the sweep: the tools
# ------------------------------------------------------------------------------------------------------------
def _embedding(ctx, name="e.pdparams", dim=32) -> Path:
    from ppti.embeddings import write_embeddings

    path = ctx["tmp"] / name
    write_embeddings(path, {"<t>": np.ones((1, dim), np.float32)}, fmt="pdparams")
    return path


def _malicious_pt(ctx) -> Path:
    """A .pt whose pickle would run `touch PWNED` if unpickled permissively."""
    import pickle
    import zipfile

    class Boom:
        def __reduce__(self):
            return os.system, (f"touch {ctx['tmp'] / 'PWNED'}",)

    path = ctx["tmp"] / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"string_to_param": {"*": Boom()}}, protocol=2))
        archive.writestr("evil/version", "3\n")
    return path


TOOL_CASES = {
    "convert_missing_input": ("convert", lambda c: [c["tmp"] / "none.pt", "--to", "paddle"], "none.pt"),
    "convert_random_bytes": ("convert", lambda c: [_file(c, "x.pt", os.urandom(256)), "--to", "paddle"], "x.pt"),
    "convert_malicious_pickle": ("convert", lambda c: [_malicious_pt(c), "--to", "paddle"], "evil.pt"),
    "convert_no_target": ("convert", lambda c: [_embedding(c)], "give INPUT and --to torch|paddle"),
    "convert_missing_step": ("convert", lambda c: [_embedding(c).parent, "--to", "torch", "--step", "999"], "999"),
    "convert_wrong_dim": ("convert", lambda c: [_embedding(c), "--to", "torch", "--expect_dim", "768"], "768"),
    "convert_abbreviated_flag": ("convert", lambda c: [_embedding(c), "--to", "torch", "--forc"], "--forc"),
    "convert_existing_output": ("convert", lambda c: [_embedding(c), "--to", "paddle", "-o", _embedding(c, "o.pdparams")],
                                "--force"),
    "generate_height_7": ("generate", lambda c: ["--model", c["model"], "--embeddings", _embedding(c), "--prompt",
                                                 "<t>", "--height", "7", "-o", c["tmp"] / "g.png"], "--height 7"),
    "generate_num_images_0": ("generate", lambda c: ["--model", c["model"], "--embeddings", _embedding(c), "--prompt",
                                                     "<t>", "--num_images", "0", "-o", c["tmp"] / "g.png"],
                              "--num_images must be >= 1"),
    "generate_missing_model": ("generate", lambda c: ["--model", c["tmp"] / "nope", "--embeddings", _embedding(c),
                                                      "--prompt", "<t>", "-o", c["tmp"] / "g.png"], "--model"),
    "generate_missing_embeddings": ("generate", lambda c: ["--model", c["model"], "--embeddings", c["tmp"] / "no.pt",
                                                           "--prompt", "<t>", "-o", c["tmp"] / "g.png"], "no.pt"),
    "generate_abbreviated_flag": ("generate", lambda c: ["--model", c["model"], "--emb", _embedding(c), "--prompt",
                                                         "<t>", "-o", c["tmp"] / "g.png"], "--emb"),
    "generate_sweep_without_steps": ("generate", lambda c: ["--model", c["model"], "--steps_sweep", c["tmp"],
                                                            "--prompt", "<t>", "-o", c["tmp"] / "g.png"],
                                     "learned_embeds-steps-N"),
    "generate_output_inside_a_file": ("generate", lambda c: ["--model", c["model"], "--embeddings", _embedding(c),
                                                             "--prompt", "<t>", "-o", _file(c, "f") / "g.png"],
                                      "a parent of it is a file"),
    "tiny_model_abbreviated_flag": ("make_tiny_model", lambda c: [c["tmp"] / "m", "--lang", "zh"], "--lang"),
    "tiny_model_into_a_file": ("make_tiny_model", lambda c: [_file(c, "m")], "exists and is not empty"),
}


@pytest.mark.parametrize("case", TOOL_CASES)
def test_tools_refuse_in_one_line(case, tiny_model_en, tmp_path, capsys, monkeypatch):
    import ppti.generate

    def forbidden(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the input was refused")

    monkeypatch.setattr(ppti.generate, "load_pipeline", forbidden)
    tool, make, expected = TOOL_CASES[case]
    rc, err = run_tool(tool, make({"tmp": tmp_path, "model": tiny_model_en}), capsys)
    assert "Traceback" not in err and rc == 2, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "PWNED").exists()
