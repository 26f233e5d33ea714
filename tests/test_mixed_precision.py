"""Mixed precision made correct without a GPU: explicit fp16 loss scaling (scale, skip, back off, grow), skipped
steps that change nothing, the text encoder and VAE encoding in float32 with a UNet in another dtype (float64
stands in for half precision on CPU: this build has no fp16/bf16 conv kernels), one collective and one host read
per optimizer step, and --deterministic."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

import ppti.train
from ppti import checkpoint
from ppti.config import parse_config
from ppti.determinism import DETERMINISTIC_FLAGS, make_deterministic
from ppti.distributed import DistContext
from ppti.models import load_components
from ppti.precision import MAX_SKIPPED_IN_A_ROW, LossScaler, Precision, prepare_frozen_models
from ppti.reporting import NullReporter
from ppti.signals import StopRequest
from ppti.train import TrainingError, batches, optimizer_step, setup, train_loop
from ppti.validation import render

from conftest import train_args

FP32_ROUNDING = 1e-5


class Scalars(NullReporter):
    def __init__(self):
        super().__init__()
        self.values: dict[str, list] = {}

    def scalar(self, tag, value, step):
        self.values.setdefault(tag, []).append((step, value))


def _run(model, data, tmp_path, precision: Precision | None = None, monkeypatch=None, **flags):
    """A set-up run; `precision` replaces what --mixed_precision would resolve to (e.g. fp16 loss scaling around
    float32 models, or a float64 UNet standing in for a half-precision one)."""
    if precision is not None:
        monkeypatch.setattr(ppti.train, "resolve_precision", lambda mode: precision)
    run = setup(parse_config(train_args(model, data, tmp_path / "out", **flags)), DistContext())
    run.reporter = Scalars()
    return run


def _overflow_at(monkeypatch, steps: set[int]) -> None:
    """The rows' gradient of these optimizer steps (1-based, batch = 1 micro-step) is infinite."""
    real, calls, hooks = ppti.train.micro_step_loss, [0], []

    def loss(run, batch):
        calls[0] += 1
        while hooks:  # (a parameter's hook stays until removed)
            hooks.pop().remove()
        if calls[0] in steps:
            hooks.append(run.rows.rows.register_hook(lambda grad: grad * float("inf")))
        return real(run, batch)

    monkeypatch.setattr(ppti.train, "micro_step_loss", loss)


def _optimizer_state(run) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in checkpoint.optimizer_arrays(run.optimizer, run.rows.rows).items()}


# ------------------------------------------------------------------------------------------------------------
# the scaler alone
# ------------------------------------------------------------------------------------------------------------
def test_loss_scale_halves_on_overflow_and_doubles_after_a_clean_interval():
    scaler = LossScaler(enabled=True, growth_interval=3)
    assert scaler.scale == 2.0**16  # the diffusers/torch default
    for overflow, scale in [(True, 2**15), (True, 2**14), (False, 2**14), (False, 2**14), (False, 2**15),
                            (False, 2**15), (True, 2**14), (False, 2**14)]:
        scaler.update(overflow)
        assert scaler.scale == scale
    assert (scaler.skipped_steps, scaler.skipped_in_a_row, scaler.clean_steps) == (3, 0, 1)
    restored = LossScaler(enabled=True, growth_interval=3)
    restored.load_state_dict(json.loads(json.dumps(scaler.state_dict())))
    assert restored == scaler

    grad = paddle.to_tensor([2.0**16, -2.0**17])
    assert float(LossScaler(enabled=True).unscale_(grad)) == 0.0 and grad.numpy().tolist() == [1.0, -2.0]
    assert float(LossScaler(enabled=True).unscale_(paddle.to_tensor([1.0, float("nan")]))) == 1.0
    disabled = LossScaler(enabled=False)
    disabled.update(True)
    assert disabled.scale == 2.0**16 and disabled.skipped_steps == 1  # counted, never rescaled


def test_an_fp16_gradient_that_underflows_unscaled_survives_with_loss_scaling():
    """The gradient path of a ppti step in miniature: float32 rows -> float16 compute -> float32 loss. The fp16
    cast's backward turns a float32 gradient of 1e-9 (below fp16's smallest subnormal, 6e-8) into 0; scaled by
    2**16 it is representable, and unscaling in float32 recovers it. This CPU build has fp16 cast/scale kernels."""

    def rows_gradient(backward) -> np.ndarray:
        rows = paddle.create_parameter([2, 4], "float32")
        rows.set_value(paddle.ones([2, 4]))
        half = paddle.scale(rows.astype("float16"), 0.5)  # (2, 4) float16: a "UNet" computing in fp16
        loss = (half.astype("float32") * 2e-9).sum()  # d loss / d half = 2e-9: underflows in fp16
        backward(loss)
        return rows.grad

    assert not rows_gradient(lambda loss: loss.backward()).numpy().any()  # unscaled: lost
    # paddle.amp.GradScaler, which ppti used before, does not scale here either (on a CPU it switches itself off by
    # place; on a GPU outside paddle.amp.auto_cast, by amp_global_state().amp_dtype -- grad_scaler.py scale())
    old = paddle.amp.GradScaler(init_loss_scaling=2.0**16)
    assert not rows_gradient(lambda loss: old.scale(loss).backward()).numpy().any()

    precision = Precision("fp16", "float16", LossScaler(enabled=True))
    rows = paddle.create_parameter([2, 4], "float32")
    rows.set_value(paddle.ones([2, 4]))
    loss = (paddle.scale(rows.astype("float16"), 0.5).astype("float32") * 2e-9).sum()
    precision.backward(loss)
    assert float(precision.unscale(rows)) == 0.0
    recovered = rows.grad.numpy()  # (2, 4): 0.5 * 2e-9 each, up to fp16 rounding of the scaled value
    assert np.abs(recovered / 1e-9 - 1).max() < 1e-3, recovered


# ------------------------------------------------------------------------------------------------------------
# in the training loop
# ------------------------------------------------------------------------------------------------------------
def test_fp32_with_loss_scaling_trains_the_same_rows(tiny_model_en, demo_images, tmp_path, monkeypatch):
    plain = _run(tiny_model_en, demo_images, tmp_path / "plain")
    initial = plain.rows.rows.numpy().copy()
    train_loop(plain)
    scaled = _run(tiny_model_en, demo_images, tmp_path / "scaled", Precision("fp16", "float32", LossScaler(True)),
                  monkeypatch)
    train_loop(scaled)
    assert np.abs(plain.rows.rows.numpy() - initial).max() > 100 * FP32_ROUNDING  # the rows did move
    np.testing.assert_allclose(scaled.rows.rows.numpy(), plain.rows.rows.numpy(), rtol=0, atol=FP32_ROUNDING)
    assert scaled.precision.scaler.skipped_steps == 0


def test_an_overflowing_step_is_skipped_and_changes_nothing(tiny_model_en, demo_images, tmp_path, monkeypatch):
    _overflow_at(monkeypatch, {2})
    run = _run(tiny_model_en, demo_images, tmp_path, Precision("fp16", "float32", LossScaler(True)), monkeypatch,
               train_batch_size=1, max_train_steps=3, save_steps=1000)
    micro_batches = iter(batches(run, 0))
    optimizer_step(run, micro_batches)  # step 1: applied
    rows, moments, lr_epoch = run.rows.rows.numpy().copy(), _optimizer_state(run), run.lr_scheduler.last_epoch
    optimizer_step(run, micro_batches)  # step 2: inf gradient
    assert np.array_equal(run.rows.rows.numpy(), rows)
    after = _optimizer_state(run)
    assert all(np.array_equal(after[k], moments[k]) for k in moments)
    assert run.lr_scheduler.last_epoch == lr_epoch
    assert run.precision.scaler.scale == 2.0**15 and run.precision.scaler.skipped_steps == 1
    assert run.rows.rows.grad is None or not run.rows.rows.grad.numpy().any()  # nothing leaks into step 3
    optimizer_step(run, micro_batches)  # step 3: applied again
    assert not np.array_equal(run.rows.rows.numpy(), rows) and run.lr_scheduler.last_epoch == lr_epoch + 1


def test_loss_scale_and_skipped_steps_are_logged(tiny_model_en, demo_images, tmp_path, monkeypatch):
    _overflow_at(monkeypatch, {2})
    run = _run(tiny_model_en, demo_images, tmp_path, Precision("fp16", "float32", LossScaler(True)), monkeypatch,
               train_batch_size=1, max_train_steps=3, save_steps=1000)
    assert train_loop(run) == 3
    assert run.reporter.values["train/loss_scale"] == [(1, 2.0**16), (2, 2.0**15), (3, 2.0**15)]
    assert run.reporter.values["train/skipped_steps"] == [(1, 0), (2, 1), (3, 1)]


def test_twenty_skipped_steps_in_a_row_end_the_run_with_the_last_good_embedding(tiny_model_en, demo_images,
                                                                                tmp_path, monkeypatch):
    _overflow_at(monkeypatch, set(range(3, 100)))
    monkeypatch.setattr(ppti.train, "resolve_precision",
                        lambda mode: Precision("fp16", "float32", LossScaler(True)))
    out = tmp_path / "out"
    config = parse_config(train_args(tiny_model_en, demo_images, out, train_batch_size=1, max_train_steps=40,
                                     save_steps=1, checkpointing_steps=0))
    with pytest.raises(TrainingError, match=rf"{MAX_SKIPPED_IN_A_ROW} optimizer steps in a row \(up to step 22\) "
                                            r"had inf/NaN gradients.*last good step was kept"):
        ppti.train.train(config, DistContext())
    kept = np.asarray(next(iter(paddle.load(str(out / "learned_embeds.pdparams")).values())))
    good = np.asarray(next(iter(paddle.load(str(out / "learned_embeds-steps-2.pdparams")).values())))
    assert np.array_equal(kept, good)
    assert not (out / "learned_embeds-steps-22.pdparams").exists()  # step 21 was the last to finish


def test_the_loss_scaler_state_resumes_exactly(tiny_model_en, demo_images, tmp_path, monkeypatch):
    """A skipped step before the checkpoint: the scale, counters and rows continue as if never interrupted."""
    monkeypatch.setattr(ppti.train, "resolve_precision",
                        lambda mode: Precision("fp16", "float32", LossScaler(True)))
    real, hooks = ppti.train.micro_step_loss, []

    def overflow_at_step_2(run, batch):  # by the run's own step count, so it holds in a resumed run too
        while hooks:
            hooks.pop().remove()
        if run.lr_scheduler.last_epoch + run.precision.scaler.skipped_steps + 1 == 2:
            hooks.append(run.rows.rows.register_hook(lambda grad: grad * float("nan")))
        return real(run, batch)

    monkeypatch.setattr(ppti.train, "micro_step_loss", overflow_at_step_2)
    flags = dict(train_batch_size=1, checkpointing_steps=3)
    out, whole = tmp_path / "out", tmp_path / "whole"
    ppti.train.train(parse_config(train_args(tiny_model_en, demo_images, out, max_train_steps=3, **flags)))
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["loss_scaler"] == {"scale": 2.0**15, "clean_steps": 1, "skipped_in_a_row": 0, "skipped_steps": 1}
    resumed = ppti.train.run_training(parse_config(train_args(tiny_model_en, demo_images, out, max_train_steps=5,
                                                              resume_from_checkpoint="latest", **flags)))
    straight = ppti.train.run_training(parse_config(train_args(tiny_model_en, demo_images, whole, max_train_steps=5,
                                                               **flags)))
    assert np.array_equal(resumed.rows, straight.rows)
    assert (resumed.loss_scale, resumed.skipped_steps) == (straight.loss_scale, straight.skipped_steps) == (2**15, 1)


# ------------------------------------------------------------------------------------------------------------
# which model computes in which dtype
# ------------------------------------------------------------------------------------------------------------
def test_unet_in_another_dtype_trains_fp32_rows_through_an_fp32_text_encoder(tiny_model_en, demo_images, tmp_path,
                                                                             monkeypatch):
    """float64 stands in for fp16/bf16 (no half conv kernels on this CPU): the UNet computes in it, the text
    encoder and the latent cache stay float32, and the gradient reaches the float32 rows."""
    fp32 = _run(tiny_model_en, demo_images, tmp_path / "fp32")  # --mixed_precision no
    run = _run(tiny_model_en, demo_images, tmp_path, Precision("bf16", "float64"), monkeypatch,
               validation_prompt="a <demo-toy>")
    assert {str(p.dtype) for p in run.components.unet.parameters()} == {"paddle.float64"}
    assert {str(p.dtype) for p in run.components.text_encoder.parameters()} == {"paddle.float32"}
    # the cache is the float32 VAE's encoding, exactly as without mixed precision
    assert np.array_equal(run.latents.mean.numpy(), fp32.latents.mean.numpy())
    assert np.array_equal(run.latents.std.numpy(), fp32.latents.std.numpy())
    assert {str(p.dtype) for p in run.components.vae.parameters()} == {"paddle.float64"}  # decodes validation
    before = run.rows.rows.numpy().copy()
    assert np.isfinite(optimizer_step(run, iter(batches(run, 0))))
    assert run.rows.rows.dtype == paddle.float32 and not np.array_equal(run.rows.rows.numpy(), before)


def test_validation_renders_with_an_fp32_text_encoder_and_a_unet_in_another_dtype(tiny_model_en):
    """ppdiffusers' pipeline takes the prompt embeddings' and latents' dtype from the text encoder; the UNet in
    another dtype fails on them unless ppti casts at its boundary (render does)."""
    components = load_components(str(tiny_model_en))
    prepare_frozen_models(components, Precision("bf16", "float64"))
    pipeline = components.pipeline
    pipeline.set_progress_bar_config(disable=True)
    with pytest.raises(Exception):  # what the pipeline does on its own: float32 embeddings into float64 weights
        pipeline("a toy", num_inference_steps=2, height=64, width=64)
    [image] = render(pipeline, "a toy", 1, seed=3, height=64, width=64, num_inference_steps=2)
    assert image.size == (64, 64) and np.asarray(image).std() > 0
    assert pipeline.unet._forward_pre_hooks == {} and pipeline.unet._forward_post_hooks == {}  # hooks removed


# ------------------------------------------------------------------------------------------------------------
# host syncs and collectives
# ------------------------------------------------------------------------------------------------------------
def test_one_collective_and_one_host_read_per_optimizer_step(tiny_model_en, demo_images, tmp_path, monkeypatch):
    """With accumulation over 2 micro-batches: per optimizer step one all_gather (loss, overflow flag and stop
    signal together), no other collective, and one device-to-host read."""
    import ppti.distributed as distributed

    run = _run(tiny_model_en, demo_images, tmp_path, train_batch_size=1, gradient_accumulation_steps=2,
               max_train_steps=3)
    run.ctx = DistContext(rank=0, world_size=2)  # (the model stays unwrapped: no real process group)
    gathered, reduced, reads = [], [], []

    def all_gather(out, tensor, *args, **kwargs):  # two ranks holding the same values; rank 1 saw SIGTERM
        other = tensor.clone()
        if len(gathered) == 1:
            other[2] = 15.0
        gathered.append(tensor.numpy().copy())
        out.extend([tensor, other])

    monkeypatch.setattr(distributed.dist, "all_gather", all_gather)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda *a, **k: reduced.append(a))
    package = str(Path(ppti.train.__file__).parent)

    def counted(real, name):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(package):  # ppti's own reads (ppdiffusers' UNet reads shape tensors, which
                reads.append(f"{caller}:{name}")  # Paddle keeps on the host: no device sync)
            return real(self, *args, **kwargs)
        return read

    for name in ("numpy", "item", "__float__", "__bool__", "__int__", "tolist"):
        monkeypatch.setattr(paddle.Tensor, name, counted(getattr(paddle.Tensor, name), name))
    stop = StopRequest()
    micro_batches = iter(batches(run, 0))
    losses = [optimizer_step(run, micro_batches, stop) for _ in range(2)]
    monkeypatch.undo()
    assert len(gathered) == 2 and not reduced
    assert reads == [f"{package}/distributed.py:numpy"] * 2, reads  # one read per step: the gathered values
    assert [g[0] for g in gathered] == pytest.approx(losses)  # the summed loss of 2 micro-batches, on device
    assert stop.requested and stop.signal_name == "SIGTERM"  # rank 1's signal, carried by step 2's collective
    assert stop.stops_now(run.ctx)
    late = StopRequest()  # a signal arriving here after the step's exchange: the other ranks do not know yet
    late.agree(0)
    late.request(15)
    assert not late.stops_now(run.ctx) and late.stops_now(DistContext())  # one process: at once


# ------------------------------------------------------------------------------------------------------------
# --deterministic
# ------------------------------------------------------------------------------------------------------------
def test_deterministic_sets_the_flags_the_build_has_and_says_which(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="ppti")
    set_flags, absent = make_deterministic()  # this CPU build has neither flag (GPU builds only)
    assert set_flags == [] and sorted(absent) == sorted(DETERMINISTIC_FLAGS)
    assert "not in this Paddle build" in caplog.text and "FLAGS_cudnn_deterministic" in caplog.text

    seen = {}

    def gpu_build_set_flags(flags):  # a GPU build: both flags exist; one older build lacks the embedding flag
        if "FLAGS_embedding_deterministic" in flags and seen.get("old"):
            raise ValueError("Flag FLAGS_embedding_deterministic cannot set its value through this function.")
        seen.update(flags)

    monkeypatch.setattr(paddle, "set_flags", gpu_build_set_flags)
    assert make_deterministic() == (["FLAGS_cudnn_deterministic=True", "FLAGS_embedding_deterministic=1"], [])
    assert seen == {"FLAGS_cudnn_deterministic": True, "FLAGS_embedding_deterministic": 1}
    seen["old"] = True
    assert make_deterministic() == (["FLAGS_cudnn_deterministic=True"], ["FLAGS_embedding_deterministic"])


def test_deterministic_is_off_by_default_and_setup_applies_it(tiny_model_en, demo_images, tmp_path, monkeypatch):
    args = train_args(tiny_model_en, demo_images, tmp_path)
    assert parse_config(args).deterministic is False
    calls = []
    monkeypatch.setattr(ppti.train, "make_deterministic", lambda: calls.append(1))
    setup(parse_config(args), DistContext())
    assert not calls
    setup(parse_config(args + ["--deterministic"]), DistContext())
    assert calls == [1]
