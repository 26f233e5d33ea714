"""Multi-card data parallelism, run for real: `python -m paddle.distributed.launch --nproc_per_node 2` on CPU (gloo).

What the launched tests prove:
- two ranks x batch 1 give the same embedding update as one process x batch 2 (gradients averaged, data sharded,
  also with gradient accumulation and gradient checkpointing), every rank ends with the same rows, and only one
  set of output files is written (rank 0); rank 1 prints nothing but errors;
- the gradient all-reduce carries only the `[num_vectors, dim]` placeholder rows, once per optimizer step: Paddle's
  own reducer logs (GLOG_vmodule=reducer=3) what it groups and each fused all-reduce it starts, and
  tests/dist_scripts/comm_probe.py records the reducer's parameters and the start-up broadcast from Python;
- a rank that fails (data missing on that machine, or an exception mid-step) ends the run quickly and non-zero,
  with its error on the launcher's console.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import train_args
from helpers import (
    FAILURE_BOUND, SCALE_SENSITIVE_ADAM, assert_same_update, initial_rows, launch, logged, saved_rows,
)
from ppti.config import parse_config
from ppti.distributed import DistContext, agree_on_step, init_distributed, wrap_data_parallel
from ppti.models import load_components
from ppti.train import learned_rows, setup, train, train_loop

SCRIPTS = Path(__file__).parent / "dist_scripts"


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.parent.name != "logs")


# ------------------------------------------------------------------------------------------------------------
# launched
# ------------------------------------------------------------------------------------------------------------
def test_two_ranks_train_like_one_process_with_the_same_global_batch(tiny_model_en, tiny_clip, demo_images,
                                                                     tmp_path):
    """2 ranks x batch 1 x accumulation 2 (+ gradient checkpointing) == 1 process x batch 2 x accumulation 2."""
    steps = 2
    common = dict(num_vectors=2, max_train_steps=steps, gradient_accumulation_steps=2, scale_lr=True,
                  eval_steps=1, report_to="visualdl",  # eval/loss on the frozen batch at every step
                  **SCALE_SENSITIVE_ADAM)  # --scale_lr: x 4 = accumulation 2 x batch 1 x 2 cards = 2 x batch 2
    two, dumps, logs = tmp_path / "two-ranks", tmp_path / "rank-rows", tmp_path / "launch-log"
    dumps.mkdir()
    code, console, _ = launch(
        SCRIPTS / "train_and_save_rows.py",
        [dumps, *train_args(tiny_model_en, demo_images, two, train_batch_size=1, gradient_checkpointing=True,
                            **common)],
        logs, env={"GLOG_vmodule": "reducer=3"},
    )
    assert code == 0, console[-3000:]
    one_config = parse_config(train_args(tiny_model_en, demo_images, tmp_path / "one", train_batch_size=2, **common))
    train(one_config, DistContext())

    # every rank holds the same rows, which are the saved ones, and they moved as one process moves them
    rank0, rank1 = np.load(dumps / "rank-0-rows.npy"), np.load(dumps / "rank-1-rows.npy")
    assert np.array_equal(rank0, rank1)
    assert np.array_equal(rank0, saved_rows(two))
    assert_same_update(rank0, saved_rows(tmp_path / "one"), initial_rows(tiny_model_en, one_config))

    # one set of output files, the same set a single process writes (VisualDL names its log by the time)
    assert files_under(two) == files_under(tmp_path / "one")

    # the frozen evaluation batch is the same for 1 and 2 processes: the same eval/loss for the same rows; and
    # tools/evaluate.py, in one process, recomputes the 2-rank run's logged values from its saved files
    from ppti.evaluate import Settings, evaluate_run

    eval_two, eval_one = logged(two, "eval/loss"), logged(tmp_path / "one", "eval/loss")
    assert sorted(eval_two) == [1, 2]
    assert [eval_two[s] for s in (1, 2)] == pytest.approx([eval_one[s] for s in (1, 2)], rel=1e-5)
    result = evaluate_run(Settings(two, str(tiny_model_en), str(tiny_clip), num_images=1, num_inference_steps=1))
    assert [r.eval_loss for r in result.rows] == pytest.approx([eval_two[steps]], rel=1e-6)

    # Paddle's reducer: one group holding one tensor of num_vectors x dim values, all-reduced once per optimizer
    # step (not on the accumulation micro-steps)
    for rank in (0, 1):
        reducer_log = (logs / f"workerlog.{rank}").read_text(errors="replace")
        assert re.findall(r"The Group\[\d+\]:numel: (\d+) ;var number: (\d+)", reducer_log) == [(str(rank0.size), "1")]
        assert reducer_log.count("start fused_allreduce") == steps

    # rank 0 alone logs, shows progress and the summary (world size, global batch); rank 1 stays quiet
    assert re.search(r"cards \(world size\)\s+= 2\n", console) and re.search(r"global batch\s+= 4\n", console)
    assert re.search(r"learning rate\s+= 4 \(scaled\)\n", console)
    assert "Train steps" in console
    rank1_log = (logs / "workerlog.1").read_text(errors="replace")
    for chatter in ("Running training", "Train steps", "Loading pipeline components", " INFO "):
        assert chatter not in rank1_log


def test_only_the_placeholder_rows_are_communicated(tiny_model_en, demo_images, tmp_path):
    """The reducer holds just the rows; the start-up broadcast sends just the rows (and buffers), never the frozen
    vocabulary x width matrix or the rest of the text encoder."""
    probe = tmp_path / "probe"
    probe.mkdir()
    code, console, _ = launch(SCRIPTS / "comm_probe.py",
                              [probe, *train_args(tiny_model_en, demo_images, tmp_path / "out", num_vectors=2)],
                              tmp_path / "launch-log")
    assert code == 0, console[-3000:]
    for rank in (0, 1):
        seen = json.loads((probe / f"rank-{rank}.json").read_text())
        assert seen["wrapped"]
        assert seen["reducer_param_shapes"] == [seen["rows_shape"]] == [[2, 32]]
        vocab, dim = seen["embedding_matrix_shape"]
        assert sorted(seen["broadcast_numels"]) == sorted([2 * dim] + seen["persistable_buffer_numels"])
        assert sum(seen["broadcast_numels"]) < vocab * dim  # (untagged, every text-encoder weight would be sent)


@pytest.mark.parametrize("when, error", [
    ("data", "no such directory"),  # rank 1 stops in setup; rank 0 loads the model, then waits for it
    ("step", "RuntimeError: injected failure"),  # rank 1 raises mid-run; rank 0 waits in the all-reduce
])
def test_a_failing_rank_ends_the_run_with_its_error_on_the_console(tiny_model_en, demo_images, tmp_path, when, error):
    out = tmp_path / "out"
    code, console, seconds = launch(
        SCRIPTS / "fail_on_rank.py",
        [1, when, *train_args(tiny_model_en, demo_images, out, train_batch_size=1, max_train_steps=6)],
        tmp_path / "launch-log",
    )
    assert code != 0
    assert seconds < FAILURE_BOUND
    relayed = re.search(r"rank 1 failed: (.*)", console)
    assert relayed and error in relayed.group(1), console[-3000:]
    assert not (out / "learned_embeds.pdparams").exists()


def test_a_nan_loss_on_one_rank_stops_every_rank_after_the_same_step(tiny_model_en, demo_images, tmp_path):
    """The loss is averaged over the ranks before it is checked, so every rank sees the NaN of one and stops
    before updating; rank 0 keeps the embedding of the last good step: step 2, the rows one process with the same
    global batch reaches after 2 steps (not the initial rows, not step 1's, not NaN)."""
    out, logs = tmp_path / "out", tmp_path / "launch-log"
    flags = dict(max_train_steps=6, **SCALE_SENSITIVE_ADAM)  # updates proportional to the gradient
    code, console, seconds = launch(
        SCRIPTS / "fail_on_rank.py",
        [1, "nan", *train_args(tiny_model_en, demo_images, out, train_batch_size=1, **flags)], logs,
    )
    assert code != 0 and seconds < FAILURE_BOUND
    for rank in (0, 1):  # each rank stopped by itself, on the loss check (not killed, not on a later check)
        assert "error: the loss became nan at step 3" in (logs / f"workerlog.{rank}").read_text(errors="replace")
    kept = saved_rows(out)
    assert np.isfinite(kept).all()
    one_process = {}
    for steps in (1, 2):
        config = parse_config(train_args(tiny_model_en, demo_images, tmp_path / f"one-{steps}", train_batch_size=2,
                                         **dict(flags, max_train_steps=steps)))
        train(config, DistContext())
        one_process[steps] = saved_rows(tmp_path / f"one-{steps}")
    initial = initial_rows(tiny_model_en, config)
    assert_same_update(kept, one_process[2], initial)  # the last good step
    assert np.abs((kept - one_process[1])).max() > 100 * np.abs(one_process[2] - kept).max()  # not step 1's


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tiny_model_en, demo_images, tmp_path):
    """The stop flag travels with the step's loss (one collective per optimizer step): the rank that was not
    signalled stops after the same step, and rank 0 saves that step's embedding and checkpoint."""
    out, logs = tmp_path / "out", tmp_path / "launch-log"
    code, console, seconds = launch(
        SCRIPTS / "fail_on_rank.py",
        [1, "signal", *train_args(tiny_model_en, demo_images, out, train_batch_size=1, max_train_steps=6,
                                  checkpointing_steps=100)], logs,
    )
    assert code != 0 and seconds < FAILURE_BOUND, console[-3000:]
    for rank in (0, 1):
        assert "SIGTERM at step 3/6" in (logs / f"workerlog.{rank}").read_text(errors="replace")
    assert (out / "checkpoints" / "checkpoint-3").is_dir()
    assert np.array_equal(saved_rows(out), saved_rows(out / "checkpoints" / "checkpoint-3"))


# ------------------------------------------------------------------------------------------------------------
# one process
# ------------------------------------------------------------------------------------------------------------
def _train_in_process(model: Path, data: Path, out: Path, **flags) -> tuple[np.ndarray, np.ndarray]:
    """(rows before, rows after) of a run in this process."""
    run = setup(parse_config(train_args(model, data, out, num_vectors=2, max_train_steps=2, **SCALE_SENSITIVE_ADAM,
                                        **flags)), DistContext(), load_components(str(model)))
    before = learned_rows(run)
    train_loop(run)
    return before, learned_rows(run)


def test_accumulating_two_micro_batches_equals_one_batch_of_two(tiny_model_en, demo_images, tmp_path):
    initial, accumulated = _train_in_process(tiny_model_en, demo_images, tmp_path / "a", train_batch_size=1,
                                             gradient_accumulation_steps=2)
    _, batched = _train_in_process(tiny_model_en, demo_images, tmp_path / "b", train_batch_size=2)
    assert_same_update(accumulated, batched, initial)


def test_gradient_checkpointing_recomputes_the_unet_and_keeps_the_update(tiny_model_en, demo_images, tmp_path,
                                                                         monkeypatch):
    import ppdiffusers.models.transformer_2d as transformer_2d
    import ppdiffusers.models.unet_2d_blocks as unet_2d_blocks

    calls = []
    for module in (unet_2d_blocks, transformer_2d):
        real = module.recompute
        monkeypatch.setattr(module, "recompute", lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    initial, plain = _train_in_process(tiny_model_en, demo_images, tmp_path / "a")
    assert not calls
    _, checkpointed = _train_in_process(tiny_model_en, demo_images, tmp_path / "b", gradient_checkpointing=True)
    assert calls, "--gradient_checkpointing did not recompute anything"
    assert_same_update(checkpointed, plain, initial)


def test_a_single_process_is_rank_0_of_1_and_wraps_nothing():
    ctx = init_distributed()
    assert ctx == DistContext(rank=0, world_size=1) and ctx.is_main and not ctx.enabled
    layer = paddle.nn.Linear(2, 2)
    assert wrap_data_parallel(layer, ctx) is layer
    loss, overflow, signum = agree_on_step(paddle.to_tensor(1.5), paddle.to_tensor(0.0), 0, ctx)
    assert (loss, overflow, signum) == (1.5, False, 0)
