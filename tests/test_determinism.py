"""`--deterministic` keeps its promise: ppdiffusers' environment variable is set before the models load, the UNet's
nearest upsampling has a backward without atomic adds that gives Paddle's own bits, and checkpoints take generator
states of three or four values.

No GPU here: what can only be measured on one is listed in tools/gpu_check.sh; these tests check everything a CPU
can (same bits as F.interpolate forward and backward, the same training step, the flag and environment set)."""

from __future__ import annotations

import inspect
import json
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import ppti.determinism as determinism
import ppti.train
from conftest import train_args
from ppti import checkpoint
from ppti.config import parse_config
from ppti.determinism import ATTENTION_ENV, deterministic_upsampling, make_deterministic, nearest_upsample
from ppti.distributed import DistContext
from ppti.models import load_components
from ppti.train import learned_rows, setup, train_loop


# ------------------------------------------------------------------------------------------------------------
# the environment variable ppdiffusers reads
# ------------------------------------------------------------------------------------------------------------
def test_make_deterministic_sets_the_environment_variable_ppdiffusers_reads(monkeypatch):
    import ppdiffusers.patches.paddle_patch as paddle_patch

    # ppdiffusers 0.29 chooses math attention from this variable, read at every attention call
    source = inspect.getsource(paddle_patch)
    assert f'os.getenv("{ATTENTION_ENV}", "no")' in source
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    make_deterministic()
    assert paddle_patch.str2bool(os.getenv(ATTENTION_ENV, "no")) is True


@pytest.mark.parametrize("deterministic", [True, False])
def test_setup_sets_the_variable_before_the_models_load_and_only_with_the_flag(tiny_model_en, demo_images, tmp_path,
                                                                               monkeypatch, deterministic):
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    seen = []

    class Loaded(Exception):
        pass

    def load_components(*args, **kwargs):
        seen.append(os.environ.get(ATTENTION_ENV))
        raise Loaded

    monkeypatch.setattr(ppti.train, "load_components", load_components)
    args = train_args(tiny_model_en, demo_images, tmp_path / "out") + (["--deterministic"] if deterministic else [])
    with pytest.raises(Loaded):
        setup(parse_config(args), DistContext())
    assert seen == (["True"] if deterministic else [None])


# ------------------------------------------------------------------------------------------------------------
# nearest upsampling: the same bits as F.interpolate, forward and backward
# ------------------------------------------------------------------------------------------------------------
def _forward_backward(upsample, x: np.ndarray, dtype: str, seed: int = 1):
    """(output, input gradient) as float32 arrays for a fixed random output gradient."""
    tensor = paddle.to_tensor(x).astype(dtype)
    tensor.stop_gradient = False
    out = upsample(tensor)
    grad = paddle.to_tensor(np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32) * 4)
    (grad_in,) = paddle.grad([out], [tensor], [grad.astype(dtype)])
    assert out.dtype == tensor.dtype and grad_in.dtype == tensor.dtype
    return out.astype("float32").numpy(), grad_in.astype("float32").numpy()


# SD-1.5's up-block upsamplers at 512 px (latent 64: 8->16, 16->32, 32->64) and at 520 px (latent 65: the UNet then
# passes output_size 9->17, 17->33, 33->65); channels as SD-1.5 (1280, 1280, 640), batch 2.
UNET_UPSAMPLES = [((2, 1280, 8, 8), None), ((2, 1280, 16, 16), None), ((2, 640, 32, 32), (64, 64)),
                  ((2, 1280, 9, 9), (17, 17)), ((2, 640, 33, 33), (65, 65)), ((2, 64, 5, 7), (9, 13))]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])  # (the CPU has nearest kernels for all three)
@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape, size", UNET_UPSAMPLES)
def test_nearest_upsample_equals_interpolate_forward_and_backward_bit_for_bit(dtype, data_format, shape, size):
    if data_format == "NHWC":
        shape = (shape[0], shape[2], shape[3], shape[1])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3

    def reference(t):
        return F.interpolate(t, size=size, scale_factor=None if size else 2.0, mode="nearest",
                             data_format=data_format)

    out, grad = _forward_backward(reference, x, dtype)
    mine_out, mine_grad = _forward_backward(lambda t: nearest_upsample(t, size=size, data_format=data_format), x,
                                            dtype)
    assert out.tobytes() == mine_out.tobytes()
    assert grad.tobytes() == mine_grad.tobytes()
    # (the gradients do add up several values: a plain "copy" backward would not pass)
    assert not np.array_equal(grad.reshape(-1)[:100], np.zeros(100))


def test_sequential_order_matters_so_the_equality_above_is_not_trivial():
    """Summing each pixel's four gradients pairwise (what expand's own backward does) differs from Paddle's CPU
    kernel in the last bits; the replacement must add them one after the other, in the kernel's order."""
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 64, 16, 16)).astype(np.float32))
    x.stop_gradient = False
    out = x.reshape([2, 64, 16, 1, 16, 1]).expand([2, 64, 16, 2, 16, 2]).reshape([2, 64, 32, 32])
    grad = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 64, 32, 32)).astype(np.float32) * 4)
    (pairwise,) = paddle.grad([out], [x], [grad])
    _, reference = _forward_backward(lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest"),
                                     x.numpy(), "float32")
    assert pairwise.numpy().tobytes() != reference.tobytes()


@pytest.mark.parametrize("use_conv, output_size, dtype", [
    (True, None, "float32"), (True, [17, 17], "float32"), (False, None, "float32"), (False, [17, 17], "bfloat16"),
])
def test_the_upsample2d_layer_gives_the_same_bits_with_and_without_the_replacement(use_conv, output_size, dtype):
    from ppdiffusers.models.resnet import Upsample2D

    paddle.seed(3)
    layer = Upsample2D(32, use_conv=use_conv)
    x = np.random.default_rng(2).standard_normal((2, 32, 9 if output_size else 8, 9 if output_size else 8))

    def run():
        tensor = paddle.to_tensor(x.astype(np.float32)).astype(dtype)
        tensor.stop_gradient = False
        out = layer(tensor, output_size)
        params = [p for p in layer.parameters()]
        grads = paddle.grad([out.astype("float32").sum() * 1.7], [tensor, *params])
        return [out.astype("float32").numpy().tobytes()] + [g.astype("float32").numpy().tobytes() for g in grads]

    plain = run()
    assert deterministic_upsampling(layer) == 1
    assert layer.forward.__func__ is determinism._upsample2d_forward
    assert run() == plain


def test_only_the_unets_upsampling_is_replaced_and_a_training_step_gives_the_same_bits(tiny_model_en, demo_images,
                                                                                      tmp_path, monkeypatch):
    from ppdiffusers.models.resnet import Upsample2D

    monkeypatch.delenv(ATTENTION_ENV, raising=False)  # (make_deterministic sets it for the rest of the process)
    calls = []
    real = determinism.nearest_upsample
    monkeypatch.setattr(determinism, "nearest_upsample", lambda *a, **k: calls.append(1) or real(*a, **k))

    def trained(out, *flags):
        run = setup(parse_config(train_args(tiny_model_en, demo_images, out, max_train_steps=2, num_vectors=2)
                                 + list(flags)), DistContext(), load_components(str(tiny_model_en)))
        start = learned_rows(run)
        train_loop(run)
        return run, start, learned_rows(run)

    _, start, plain = trained(tmp_path / "plain")
    assert not calls
    run, _, deterministic = trained(tmp_path / "det", "--deterministic")
    upsamplers = [layer for layer in run.components.unet.sublayers() if isinstance(layer, Upsample2D)]
    assert upsamplers and all(layer.forward.__func__ is determinism._upsample2d_forward for layer in upsamplers)
    assert calls, "the deterministic upsampling never ran"
    vae = run.components.vae
    if vae is not None:  # another model's upsampling stays as it was
        assert all("forward" not in vars(layer) for layer in vae.sublayers() if isinstance(layer, Upsample2D))
    assert not np.array_equal(plain, start)  # the rows moved ...
    assert deterministic.tobytes() == plain.tobytes()  # ... by the same bits


# ------------------------------------------------------------------------------------------------------------
# tools/selfcheck.py: the repeatability line
# ------------------------------------------------------------------------------------------------------------
def test_selfcheck_repeatability_is_bit_identical_on_this_cpu_and_reports_the_largest_difference(tiny_model_en,
                                                                                                 tmp_path,
                                                                                                 monkeypatch):
    import dataclasses

    import ppti.selfcheck as selfcheck

    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    data = selfcheck.write_images(tmp_path / "images")
    line = selfcheck.repeatability(tiny_model_en, data, tmp_path / "a", "no")
    assert str(line) == "[ ok ] repeatability (fp32, --deterministic): two 4-step runs, embeddings bit-identical"
    assert os.environ.get(ATTENTION_ENV) == "True"  # (the runs really were --deterministic)

    # a second run that ends 2^-20 away on one value: a failed check naming the largest difference
    real, calls = ppti.train.run_training, []

    def drifting(config, ctx=None):
        result = real(config, ctx)
        calls.append(config.deterministic)
        if len(calls) == 2:
            rows = result.rows.copy()
            rows[0, 0] += 2.0 ** -20
            result = dataclasses.replace(result, rows=rows)
        return result

    monkeypatch.setattr(ppti.train, "run_training", drifting)
    line = selfcheck.repeatability(tiny_model_en, data, tmp_path / "b", "no")
    assert calls == [True, True]
    assert line.ok is False and str(line).startswith("[FAIL] repeatability (fp32, --deterministic): two 4-step "
                                                     "runs, embeddings DIFFER, largest difference 9.5")
    calls.clear()
    plain = selfcheck.repeatability(tiny_model_en, data, tmp_path / "c", "no", deterministic=False)
    assert calls == [False, False] and plain.ok is None and "without --deterministic" in str(plain)


def test_selfcheck_runs_the_plain_pair_before_deterministic_flags_stay_set_and_only_for_trained_modes(monkeypatch,
                                                                                                         tmp_path):
    import ppti.selfcheck as selfcheck
    import ppti.tiny

    monkeypatch.setattr(ppti.tiny, "make_tiny_model", lambda *a, **k: tmp_path / "model")
    monkeypatch.setattr(selfcheck, "kernel_lines", lambda: ([], ["no", "fp16"]))
    monkeypatch.setattr(selfcheck, "train_precisions", lambda model, data, work, modes: [
        selfcheck.Line(True, "fp32: fine"), selfcheck.Line(False, "fp16: training failed")])
    calls = []

    def repeatability(model, data, work, mode, deterministic=True):
        calls.append((mode, deterministic))
        return selfcheck.Line(True if deterministic else None, f"repeatability ({mode}, {deterministic})")

    monkeypatch.setattr(selfcheck, "repeatability", repeatability)
    printed = []
    assert selfcheck.selfcheck(print_line=printed.append) == 1  # (the fp16 line failed)
    assert calls == [("no", False), ("no", True)]  # plain first; no repeatability for the mode that failed


# ------------------------------------------------------------------------------------------------------------
# what --help and the docs promise and what they say it costs
# ------------------------------------------------------------------------------------------------------------
def sd15_math_attention_gib(pixels: int) -> float:
    """GiB that fp32 math attention keeps for the backward per image in SD-1.5: 8 heads; 5 self-attention layers
    (2 down, 3 up) at each of the three attention levels (tokens (pixels/8/2^level)^2), 1 in the middle block."""
    total = 0
    for level, layers in ((0, 5), (1, 5), (2, 5), (3, 1)):
        tokens = (pixels // 8 >> level) ** 2
        total += layers * 8 * tokens**2 * 4
    return total / 2**30


def test_help_and_docs_state_the_guarantee_and_the_memory_cost():
    from conftest import REPO
    from ppti.config import build_parser

    estimates = {px: sd15_math_attention_gib(px) for px in (512, 768, 1024)}
    assert [round(v, 1) for v in estimates.values()] == [2.7, 13.5, 42.7]
    help_text = " ".join(build_parser().format_help().split())
    assert "repeat bit for bit (same GPU model, driver and Paddle build)" in help_text
    assert "about 2.7 GiB more per image at 512 px, 13.5 GiB at 768 px, 43 GiB at 1024 px" in help_text
    assert "CPU runs repeat without it" in help_text and "python tools/selfcheck.py" in help_text
    for doc, words in (("docs/gpu.md", ("about 2.7 GiB", "about 13.5 GiB", "about 43 GiB", "**Guarantee (GPU).**")),
                       ("docs/zh/gpu.md", ("约 2.7 GiB", "约 13.5 GiB", "约 43 GiB", "**保证（GPU）。**"))):
        text = (REPO / doc).read_text(encoding="utf-8")
        for word in words + ("FLAGS_cudnn_deterministic=True", "tools/gpu_check.sh", "512 MiB", "8 GiB"):
            assert word in text, (doc, word)


def test_the_gpu_check_script_runs_its_checks_on_the_cpu_in_a_dry_run():
    import subprocess

    from conftest import REPO

    done = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--cpu-dry-run"], capture_output=True,
                          text=True, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert sum(line.startswith("[ ok ] nearest upsampling (") for line in lines) == 2, done.stdout + done.stderr
    assert any(line.startswith("[ ok ] GPU generator state: this build gives 4 values") for line in lines)
    # the CPU build has no deterministic flags: on a GPU that line must pass, here it must fail
    assert any(line.startswith("[FAIL] --deterministic flags set: none; MISSING") for line in lines)
    assert done.returncode == 1 and done.stdout.strip().endswith("some GPU checks FAILED")


# ------------------------------------------------------------------------------------------------------------
# generator states of three or four values
# ------------------------------------------------------------------------------------------------------------
class ThreeValueState:
    """A GeneratorState of a build whose pickle protocol has three values (device, current_seed, thread_offset);
    its __setstate__ refuses anything else, as such a build's does."""

    def __init__(self, device: int = -1, seed: int = 0, offset: int = 0):
        self.values = (device, seed, offset)

    def __getstate__(self):
        return self.values

    def __setstate__(self, values):
        if len(values) != 3:
            raise TypeError(f"Invalid state! expected 3 values, got {len(values)}")
        self.values = tuple(values)


class FakeBuild:
    """paddle.get_device / get_rng_state / set_rng_state of a build on `device` whose generators are `make()`."""

    def __init__(self, monkeypatch, device: str, cpu, gpus: list):
        self.cpu, self.gpus, self.device = [cpu], list(gpus), device
        monkeypatch.setattr(paddle, "get_device", lambda: self.device)
        monkeypatch.setattr(paddle, "get_rng_state", lambda device=None: list(self.cpu if device == "cpu" else self.gpus))

        def set_rng_state(states, device=None):
            if device == "cpu":
                self.cpu = list(states)
            else:
                assert len(states) == len(self.gpus)
                self.gpus = list(states)

        monkeypatch.setattr(paddle, "set_rng_state", set_rng_state)


def _through_json(states: dict) -> dict:
    return json.loads(json.dumps(states))  # as on disk


def test_a_three_value_build_saves_and_restores_its_generators(monkeypatch):
    with monkeypatch.context() as patch:
        FakeBuild(patch, "gpu:1", ThreeValueState(-1, 11, 22), [ThreeValueState(0, 5, 6), ThreeValueState(1, 7, 8)])
        saved = _through_json(checkpoint.rng_states())  # raised "not enough values to unpack" before
    assert saved["paddle"]["cpu"] == [[-1, 11, 22]] and saved["paddle"]["current_device"] == [1, 7, 8]
    build = FakeBuild(monkeypatch, "gpu:1", ThreeValueState(-1, 0, 0), [ThreeValueState(0, 1, 1),
                                                                          ThreeValueState(1, 2, 2)])
    checkpoint.set_rng_states(saved)
    assert [s.values for s in build.cpu] == [(-1, 11, 22)]
    assert [s.values for s in build.gpus] == [(0, 1, 1), (1, 7, 8)]  # this process's generator continues


def test_four_value_checkpoints_restore_on_three_value_builds_and_back(monkeypatch):
    four = _through_json(checkpoint.rng_states())  # this CPU build: four values
    assert len(four["paddle"]["cpu"][0]) == 4
    with monkeypatch.context() as patch:
        build = FakeBuild(patch, "cpu", ThreeValueState(), [])
        checkpoint.set_rng_states(four)
        assert build.cpu[0].values == tuple(four["paddle"]["cpu"][0][:3])
    with monkeypatch.context() as patch:
        FakeBuild(patch, "cpu", ThreeValueState(-1, 1234, 3), [])
        three = _through_json(checkpoint.rng_states())
    checkpoint.set_rng_states(three)  # on this four-value build: seed and offset restored, engine kept
    device, seed, offset, _ = paddle.get_rng_state("cpu")[0].__getstate__()
    assert (seed, offset) == (1234, 3)


def test_a_four_value_state_restores_bit_for_bit():
    paddle.seed(5)
    paddle.rand([7])
    saved = _through_json(checkpoint.rng_states())
    expected = paddle.rand([4]).numpy().tobytes()
    paddle.seed(99)
    checkpoint.set_rng_states(saved)
    assert paddle.rand([4]).numpy().tobytes() == expected
