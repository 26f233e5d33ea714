"""Checkpoints, exact resume, crash-safe saves, stopping on signals, and non-finite losses."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file

import ppti.train
from conftest import ENTRY, REPO, train_args
from ppti import checkpoint
from ppti.atomic import TMP_MARK
from ppti.checkpoint import CheckpointError
from ppti.config import parse_config
from ppti.distributed import DistContext
from ppti.embeddings import read_embeddings
from ppti.signals import TrainingInterrupted
from ppti.train import TrainingError, train


def _config(model, data, out, **overrides):
    return parse_config(train_args(model, data, out, **overrides))


def _rows(path: Path) -> np.ndarray:
    (embedding,) = read_embeddings(path)
    return embedding.vectors


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARK in p.name]


# A schedule whose learning rate changes every step, so a resume that lost the scheduler state would diverge.
SCHEDULE = {"lr_scheduler": "linear", "lr_warmup_steps": 2, "max_train_steps": 6, "checkpointing_steps": 3,
            "save_steps": 3}


@pytest.fixture(scope="module")
def finished_run(tiny_model_en, tmp_path_factory) -> Path:
    """A 6-step run with checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("run") / "out"
    train(_config(tiny_model_en, REPO / "examples" / "demo_concept", out, **SCHEDULE), DistContext())
    return out


# ------------------------------------------------------------------------------------------------------------
# exact resume
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accumulation", [1, 2])
def test_resumed_run_is_bitwise_identical_to_an_uninterrupted_one(tiny_model_en, demo_images, tmp_path,
                                                                  accumulation):
    """6 steps in one go == 3 steps + resume from checkpoint-3 to 6: embedding, optimizer state, LR schedule and
    file names. The resumed run is a second run in this process, so Paddle's parameter and accumulator names
    differ from the first run's (the checkpoint must not depend on them)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    settings = dict(SCHEDULE, gradient_accumulation_steps=accumulation, train_batch_size=1)
    train(_config(tiny_model_en, demo_images, whole, **settings), DistContext())
    train(_config(tiny_model_en, demo_images, resumed, **settings,
                  resume_from_checkpoint=whole / "checkpoints" / "checkpoint-3"), DistContext())

    assert np.array_equal(_rows(resumed / "learned_embeds.pdparams"), _rows(whole / "learned_embeds.pdparams"))
    assert not np.array_equal(_rows(whole / "learned_embeds-steps-3.pdparams"),
                              _rows(whole / "learned_embeds.pdparams"))  # steps 4-6 did train
    # the resumed run continues the numbering: it writes step 6, never re-does step 3
    assert sorted(p.name for p in resumed.glob("learned_embeds*")) == [
        "learned_embeds-steps-6.pdparams", "learned_embeds.pdparams"]
    assert [p.name for _, p in checkpoint.complete_checkpoints(resumed)] == ["checkpoint-6"]
    opt_whole = load_file(str(whole / "checkpoints/checkpoint-6/optimizer.safetensors"))
    opt_resumed = load_file(str(resumed / "checkpoints/checkpoint-6/optimizer.safetensors"))
    assert sorted(opt_whole) == ["beta1_pow_acc", "beta2_pow_acc", "moment1", "moment2"]
    for kind in opt_whole:
        assert np.array_equal(opt_whole[kind], opt_resumed[kind]), kind
    state = [json.loads((d / "checkpoints/checkpoint-6/trainer_state.json").read_text()) for d in (whole, resumed)]
    assert state[0]["lr_scheduler"] == state[1]["lr_scheduler"]
    assert state[0]["lr_scheduler"]["last_epoch"] == 6
    assert state[0]["micro_step"] == 6 * accumulation


def test_checkpoint_describes_its_run(finished_run):
    path = finished_run / "checkpoints" / "checkpoint-3"
    state = json.loads((path / "trainer_state.json").read_text())
    assert (state["global_step"], state["micro_step"], state["seed"], state["world_size"]) == (3, 3, 7, 1)
    # 4 images x 4 repeats = 16 examples per epoch, batch 2: step 3 ends at position 6 of epoch 0
    assert (state["epoch"], state["position_in_epoch"], state["num_images"]) == (0, 6, 4)
    marker = json.loads((path / "checkpoint_complete.json").read_text())
    assert sorted(marker["files"]) == ["learned_embeds.pdparams", "optimizer.safetensors", "rng_state.json",
                                       "train_config.yaml", "trainer_state.json"]
    assert _rows(path / "learned_embeds.pdparams").shape == (1, 32)
    assert np.array_equal(_rows(path / "learned_embeds.pdparams"),
                          _rows(finished_run / "learned_embeds-steps-3.pdparams"))
    assert parse_config(["--config", str(path / "train_config.yaml")]).max_train_steps == 6


def test_global_generators_continue_exactly_after_restore():
    saved = json.loads(json.dumps(checkpoint.rng_states()))  # through JSON, as on disk
    expected = (random.random(), np.random.rand(3).tolist(), paddle.rand([3]).numpy().tolist())
    random.seed(99), np.random.seed(99), paddle.seed(99)
    checkpoint.set_rng_states(saved)
    assert (random.random(), np.random.rand(3).tolist(), paddle.rand([3]).numpy().tolist()) == expected


def test_resume_latest_continues_from_step_6_to_8_and_changed_length_is_allowed(finished_run, tiny_model_en,
                                                                                demo_images, tmp_path, monkeypatch):
    """`latest` picks checkpoint-6 of the run (not checkpoint-3, not a fresh start): the resumed run starts from
    checkpoint-6's rows, makes exactly optimizer steps 7 and 8 of the longer --max_train_steps, writes only their
    files, and ends where an explicit resume from checkpoint-6 ends."""
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    before = {p.name: p.read_bytes() for p in out.glob("learned_embeds*")}
    steps_made = []
    real_step = ppti.train.optimizer_step

    def counted_step(run, *args, **kwargs):
        steps_made.append(run.lr_scheduler.last_epoch + 1)  # the step this call makes
        return real_step(run, *args, **kwargs)

    monkeypatch.setattr(ppti.train, "optimizer_step", counted_step)
    settings = dict(SCHEDULE, max_train_steps=8, save_steps=1)  # (save_steps 1: every step it makes leaves a file)
    result = ppti.train.run_training(_config(tiny_model_en, demo_images, out, **settings,
                                             resume_from_checkpoint="latest"), DistContext())
    assert steps_made == [7, 8] and result.steps == 8
    checkpoint_6 = _rows(finished_run / "checkpoints" / "checkpoint-6" / "learned_embeds.pdparams")
    assert np.array_equal(result.start_rows, checkpoint_6)
    after = {p.name: p.read_bytes() for p in out.glob("learned_embeds*")}
    assert sorted(set(after) - set(before)) == ["learned_embeds-steps-7.pdparams", "learned_embeds-steps-8.pdparams"]
    assert all(after[name] == data for name, data in before.items() if name != "learned_embeds.pdparams")
    assert not np.array_equal(_rows(result.final), checkpoint_6)  # steps 7 and 8 trained
    steps_made.clear()
    explicit = ppti.train.run_training(_config(tiny_model_en, demo_images, tmp_path / "explicit", **settings,
                                               resume_from_checkpoint=finished_run / "checkpoints" / "checkpoint-6"),
                                       DistContext())
    assert steps_made == [7, 8]
    assert np.array_equal(_rows(result.final), _rows(explicit.final))


def test_latest_with_no_checkpoint_starts_from_step_zero(tiny_model_en, demo_images, tmp_path):
    """The same command works for the first launch and every relaunch after a pre-emption."""
    out = tmp_path / "out"
    train(_config(tiny_model_en, demo_images, out, max_train_steps=2, resume_from_checkpoint="latest"),
          DistContext())
    fresh = train(_config(tiny_model_en, demo_images, tmp_path / "fresh", max_train_steps=2), DistContext())
    assert np.array_equal(_rows(out / "learned_embeds.pdparams"), _rows(fresh))


def test_latest_ignores_and_cleans_interrupted_saves(finished_run, tiny_model_en, demo_images, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    root = out / "checkpoints"
    leftover = root / f"checkpoint-9{TMP_MARK}abcd"  # what a kill during a save leaves
    shutil.copytree(root / "checkpoint-6", leftover)
    (leftover / "checkpoint_complete.json").unlink()
    no_marker = root / "checkpoint-12"
    shutil.copytree(root / "checkpoint-6", no_marker)
    (no_marker / "checkpoint_complete.json").unlink()
    config = _config(tiny_model_en, demo_images, out, resume_from_checkpoint="latest")
    resume = checkpoint.find_resume(config, world_size=1, is_main=True)
    assert resume.path == root / "checkpoint-6" and resume.step == 6
    assert resume.config.seed == 7
    assert not leftover.exists()
    with pytest.raises(CheckpointError, match="not a complete checkpoint.*checkpoint-3, checkpoint-6"):
        checkpoint.find_resume(_config(tiny_model_en, demo_images, out, resume_from_checkpoint=no_marker), 1, True)


def test_damaged_checkpoint_file_is_detected(finished_run, tiny_model_en, demo_images, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    optimizer_file = out / "checkpoints" / "checkpoint-6" / "optimizer.safetensors"
    data = bytearray(optimizer_file.read_bytes())
    data[-1] ^= 0xFF
    optimizer_file.write_bytes(bytes(data))
    config = _config(tiny_model_en, demo_images, out, resume_from_checkpoint="latest")
    with pytest.raises(CheckpointError, match="optimizer.safetensors is missing or damaged"):
        checkpoint.find_resume(config, world_size=1, is_main=True)


def test_incompatible_resume_is_refused_before_any_model_loads(finished_run, tiny_model_en, demo_images, tmp_path,
                                                               monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the checkpoint was checked")

    monkeypatch.setattr(ppti.train, "load_components", no_loading)
    ckpt = finished_run / "checkpoints" / "checkpoint-3"
    config = _config(tiny_model_en, demo_images, tmp_path / "o", placeholder_token="<other>", num_vectors=2,
                     train_batch_size=4, seed=8, resume_from_checkpoint=ckpt)
    with pytest.raises(CheckpointError) as info:
        train(config, DistContext())
    message = str(info.value)
    for expected in ("--placeholder_token is '<other>' but the checkpoint was trained with '<demo-toy>'",
                     "--num_vectors is 2 but the checkpoint was trained with 1",
                     "--seed is 8 but the checkpoint's run used 7",
                     "--train_batch_size 4 x 1 card(s) = 4 examples per micro-step"):
        assert expected in message
    other_model = tmp_path / "other-model"
    shutil.copytree(tiny_model_en, other_model)
    with pytest.raises(CheckpointError, match="--pretrained_model_name_or_path is .*other-model"):
        train(_config(other_model, demo_images, tmp_path / "o", resume_from_checkpoint=ckpt), DistContext())
    with pytest.raises(CheckpointError, match="beyond --max_train_steps 2"):
        monkeypatch.undo()
        train(_config(tiny_model_en, demo_images, tmp_path / "o", max_train_steps=2, resume_from_checkpoint=ckpt),
              DistContext())


def test_refusal_through_the_entry_point_is_one_error_with_exit_code_2(finished_run, tiny_model_en, demo_images,
                                                                       tmp_path):
    from conftest import run_entry

    proc = run_entry(train_args(tiny_model_en, demo_images, tmp_path / "o", num_vectors=3,
                                resume_from_checkpoint=finished_run / "checkpoints" / "checkpoint-3"))
    assert proc.returncode == 2
    assert proc.stderr.count("error:") == 1 and "--num_vectors is 3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_paths_that_are_not_checkpoints_are_refused(finished_run, tiny_model_en, demo_images, tmp_path):
    for path, expected in ((tmp_path / "missing", "no such directory"),
                           (finished_run, "this is a run's output directory; use --output_dir")):
        with pytest.raises(CheckpointError, match=expected):
            checkpoint.find_resume(_config(tiny_model_en, demo_images, tmp_path / "o", resume_from_checkpoint=path),
                                   world_size=1, is_main=True)


def test_checkpoints_total_limit_keeps_the_newest(tiny_model_en, demo_images, tmp_path):
    out = tmp_path / "out"
    train(_config(tiny_model_en, demo_images, out, max_train_steps=5, checkpointing_steps=1,
                  checkpoints_total_limit=2), DistContext())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-5"]


# ------------------------------------------------------------------------------------------------------------
# crash safety
# ------------------------------------------------------------------------------------------------------------
def test_crash_between_write_and_rename_keeps_the_previous_embedding(finished_run, tmp_path, monkeypatch):
    from ppti import outputs

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    before = (out / "learned_embeds.pdparams").read_bytes()
    config = parse_config(train_args("m", "d", out))

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        outputs.save_embeddings(config, np.full((1, 32), np.nan, dtype=np.float32))
    monkeypatch.undo()
    assert (out / "learned_embeds.pdparams").read_bytes() == before
    assert not _temp_files(out)


def test_crash_during_a_checkpoint_save_keeps_the_previous_checkpoints(finished_run, tiny_model_en, demo_images,
                                                                       tmp_path, monkeypatch):
    """An exception after every file of checkpoint-7 is written but before it is published."""
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)

    def crash(tmp, final):
        assert (tmp / "checkpoint_complete.json").is_file()  # everything was written...
        raise KeyboardInterrupt  # ...and then the process is interrupted

    monkeypatch.setattr(checkpoint, "_publish", crash)
    config = _config(tiny_model_en, demo_images, out, **dict(SCHEDULE, max_train_steps=7, checkpointing_steps=7),
                     resume_from_checkpoint="latest")
    with pytest.raises(KeyboardInterrupt):
        train(config, DistContext())
    assert [p.name for _, p in checkpoint.complete_checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]
    assert not _temp_files(out)
    checkpoint.verify_files(out / "checkpoints" / "checkpoint-6")


# ------------------------------------------------------------------------------------------------------------
# stopping
# ------------------------------------------------------------------------------------------------------------
def test_ctrl_c_mid_run_saves_the_current_step_and_resume_matches_an_uninterrupted_run(tiny_model_en, demo_images,
                                                                                       tmp_path):
    """Ctrl-C (SIGINT to the whole process group, DataLoader worker included) of the real entry point."""
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    args = train_args(tiny_model_en, demo_images, out, max_train_steps=5000, checkpointing_steps=5,
                      dataloader_num_workers=1)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(ENTRY), *args], cwd=REPO, stdout=fh, stderr=fh,
                                start_new_session=True)
        try:
            deadline = time.time() + 120
            while not (out / "checkpoints" / "checkpoint-5" / "checkpoint_complete.json").is_file():
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = log.read_text()
    assert code == 130, stderr[-2000:]
    stopped = int(re.search(r"interrupted: SIGINT at step (\d+)/5000", stderr).group(1))
    assert 5 <= stopped < 5000
    assert "Traceback" not in stderr
    assert not _temp_files(out)
    final = _rows(out / "learned_embeds.pdparams")
    assert np.isfinite(final).all()
    assert np.array_equal(final, _rows(out / "checkpoints" / f"checkpoint-{stopped}" / "learned_embeds.pdparams"))

    # continue two more steps (a shorter --max_train_steps is fine with a constant LR) == never interrupted
    resumed = train(_config(tiny_model_en, demo_images, out, max_train_steps=stopped + 2,
                            resume_from_checkpoint="latest"), DistContext())
    whole = train(_config(tiny_model_en, demo_images, tmp_path / "whole", max_train_steps=stopped + 2), DistContext())
    assert np.array_equal(_rows(resumed), _rows(whole))


def test_sigterm_saves_embedding_and_checkpoint_of_the_current_step(tiny_model_en, demo_images, tmp_path,
                                                                    monkeypatch):
    original = ppti.train.optimizer_step
    calls = []

    def step_then_terminate(*args):
        loss = original(*args)
        calls.append(loss)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-loop, like a scheduler's pre-emption
        return loss

    monkeypatch.setattr(ppti.train, "optimizer_step", step_then_terminate)
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted) as info:
        train(_config(tiny_model_en, demo_images, out, max_train_steps=50, checkpointing_steps=100), DistContext())
    assert info.value.exit_code == 143 and "SIGTERM at step 3/50" in str(info.value)
    assert len(calls) == 3  # stopped right after the step in progress
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    assert [p.name for _, p in checkpoint.complete_checkpoints(out)] == ["checkpoint-3"]
    assert np.array_equal(_rows(out / "learned_embeds.pdparams"),
                          _rows(out / "checkpoints" / "checkpoint-3" / "learned_embeds.pdparams"))


# ------------------------------------------------------------------------------------------------------------
# non-finite values
# ------------------------------------------------------------------------------------------------------------
def _fail_at_third_step(monkeypatch, how: str) -> None:
    original = ppti.train.micro_step_loss
    calls = []

    def loss_fn(run, batch):
        calls.append(1)
        loss = original(run, batch)
        if len(calls) == 3 and how == "loss":
            return loss * float("nan")
        if len(calls) == 3 and how == "gradient":  # the loss stays finite, its gradient does not
            run.rows.rows.register_hook(lambda grad: grad * float("inf"))
        return loss

    monkeypatch.setattr(ppti.train, "micro_step_loss", loss_fn)


@pytest.mark.parametrize("how", ["loss", "gradient"])
def test_non_finite_step_stops_and_keeps_the_last_good_embedding(tiny_model_en, demo_images, tmp_path, monkeypatch,
                                                                 how):
    _fail_at_third_step(monkeypatch, how)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="previous step was kept"):
        train(_config(tiny_model_en, demo_images, out, max_train_steps=10, save_steps=1), DistContext())
    kept = _rows(out / "learned_embeds.pdparams")
    assert np.isfinite(kept).all()
    assert np.array_equal(kept, _rows(out / "learned_embeds-steps-2.pdparams"))
    assert not (out / "learned_embeds-steps-3.pdparams").exists()
