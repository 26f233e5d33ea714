"""Precision and memory of the frozen models: --mixed_precision runs or refuses in one clear line, the UNet/VAE
compute no weight gradients, --gradient_checkpointing trains the same embedding, and memory-efficient attention
says why it is unavailable."""

import logging

import numpy as np
import paddle
import pytest

from ppti.config import ConfigError, parse_config
from ppti.distributed import DistContext
from ppti.models import load_components
from ppti.precision import Precision, kernel_problem, prepare_frozen_models, resolve_precision
from ppti.tokens import add_placeholder_tokens, initializer_ids, install_trainable_rows
from ppti.train import batches, optimizer_step, setup

from conftest import DEMO_IMAGES, run_entry, train_args

DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def _embedding(path) -> np.ndarray:
    return np.asarray(next(iter(paddle.load(str(path)).values())), dtype=np.float32)


def _trainer_problem(model, data, out, mode: str):
    """What decides which of the tests below runs, found without kernel_problem (the code under test): three
    optimizer steps of the real trainer in `mode` with the device check switched off. None when they run with finite
    losses, else the first line of why not."""
    import ppti.precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppti.precision, "device_problem", lambda *args, **kwargs: None)
        try:
            run = setup(parse_config(train_args(model, data, out, mixed_precision=mode)), DistContext())
            micro_batches = iter(batches(run, 0))
            losses = [optimizer_step(run, micro_batches) for _ in range(3)]
        except Exception as exc:  # noqa: BLE001 - any failure means "this device cannot train in this mode"
            return str(exc).strip().splitlines()[0].split(". ")[0][:200] or type(exc).__name__
    return None if all(np.isfinite(losses)) else f"non-finite losses {losses}"


@pytest.fixture(scope="module")
def trainer_problems(tiny_model_en, tmp_path_factory) -> dict:
    """{mode: None if the trainer trains in it here, else why not} for no (float32), fp16 and bf16."""
    return {mode: _trainer_problem(tiny_model_en, DEMO_IMAGES, tmp_path_factory.mktemp(f"probe-{mode}"), mode)
            for mode in ("no", "fp16", "bf16")}


@pytest.mark.parametrize("mode", ["no", "fp16", "bf16"])
def test_kernel_problem_says_no_exactly_where_the_trainer_cannot_train(trainer_problems, mode):
    """kernel_problem's small probe agrees with the real trainer on this device, for float32 too (a probe that
    always said "no kernels" would fail there on every device; one that always said "fine" fails on CPU)."""
    problem = kernel_problem(DTYPES.get(mode, "float32"))
    assert (problem is None) == (trainer_problems[mode] is None), (mode, problem, trainer_problems[mode])


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_mixed_precision_refused_clearly_where_the_device_has_no_kernels(trainer_problems, mode):
    if trainer_problems[mode] is None:
        pytest.skip(f"this device trains in {DTYPES[mode]}; see test_mixed_precision_trains_where_supported")
    with pytest.raises(ConfigError, match=rf"--mixed_precision {mode}: .*cannot compute in {DTYPES[mode]} on "
                                          rf".*Use --mixed_precision no"):
        resolve_precision(mode)


def test_mixed_precision_refusal_is_one_line_and_exit_code_2(tiny_model_en, demo_images, tmp_path,
                                                             trainer_problems):
    if trainer_problems["bf16"] is None:
        pytest.skip("this device trains in bfloat16")
    done = run_entry(train_args(tiny_model_en, demo_images, tmp_path / "out", mixed_precision="bf16"))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--mixed_precision bf16" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "learned_embeds.pdparams").exists()


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_mixed_precision_trains_where_supported(tiny_model_en, demo_images, tmp_path, mode, trainer_problems):
    if trainer_problems[mode] is not None:
        pytest.skip(f"the trainer cannot run {mode} on {paddle.device.get_device()} ({trainer_problems[mode]}; the "
                    "refusal is tested above)")
    run = setup(parse_config(train_args(tiny_model_en, demo_images, tmp_path, mixed_precision=mode)), DistContext())
    micro_batches = iter(batches(run, 0))
    losses = [optimizer_step(run, micro_batches) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert str(run.components.unet.dtype) == f"paddle.{DTYPES[mode]}"
    assert run.rows.rows.dtype == paddle.float32 and np.isfinite(run.rows.rows.numpy()).all()


def test_half_precision_unet_with_float32_text_encoder_vae_and_rows(tiny_model_en):
    # The order of ppti.train.setup; casting works on every device (only computing needs kernels), so this runs
    # on CPU too. Only the UNet is cast: the text encoder (every gradient to the rows passes through it) and the
    # VAE (it encodes the latent cache; SD VAEs overflow in fp16) stay float32.
    components = load_components(str(tiny_model_en))
    prepare_frozen_models(components, Precision("bf16", "bfloat16"))
    ids = add_placeholder_tokens(components.tokenizer, ["<demo-toy>"])
    init_ids, _ = initializer_ids(components.tokenizer, "toy")
    layer = install_trainable_rows(components.text_encoder, len(components.tokenizer), ids, init_ids)
    assert {str(p.dtype) for p in components.unet.parameters()} == {"paddle.bfloat16"}
    for model in (components.vae, components.text_encoder):
        assert {str(p.dtype) for p in model.parameters()} == {"paddle.float32"}
    for model in (components.unet, components.vae, components.text_encoder):
        assert all(p.stop_gradient for p in model.parameters() if p is not layer.rows)
    assert layer.rows.dtype == paddle.float32 and not layer.rows.stop_gradient
    initializer_row = components.text_encoder.get_input_embeddings().weight[init_ids[0]]
    np.testing.assert_array_equal(layer.rows.numpy()[0], initializer_row.numpy())


def test_frozen_models_compute_no_weight_gradients(tiny_model_en, demo_images, tmp_path):
    # A validation prompt keeps the VAE in memory, so its parameters can be checked too.
    run = setup(parse_config(train_args(tiny_model_en, demo_images, tmp_path, validation_prompt="a <demo-toy>")),
                DistContext())
    before = run.rows.rows.numpy().copy()
    optimizer_step(run, iter(batches(run, 0)))
    for model in (run.components.unet, run.components.vae, run.components.text_encoder):
        others = [p for p in model.parameters() if p is not run.rows.rows]
        assert others and all(p.stop_gradient and p.grad is None for p in others)
    assert not np.array_equal(run.rows.rows.numpy(), before)  # the rows alone trained


def test_gradient_checkpointing_recomputes_and_trains_the_same_embedding(tiny_model_en, demo_images, tmp_path,
                                                                        monkeypatch):
    import ppdiffusers.models.unet_2d_blocks as blocks

    from ppti.train import train

    calls = []
    original = blocks.recompute
    monkeypatch.setattr(blocks, "recompute", lambda *a, **k: calls.append(1) or original(*a, **k))
    plain = train(parse_config(train_args(tiny_model_en, demo_images, tmp_path / "plain")))
    assert not calls
    checkpointed = train(parse_config(train_args(tiny_model_en, demo_images, tmp_path / "ckpt",
                                                 gradient_checkpointing=True)))
    assert calls  # the UNet blocks did recompute their activations in the backward pass
    np.testing.assert_allclose(_embedding(checkpointed), _embedding(plain), rtol=0, atol=1e-6)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_memory_efficient_attention_unavailable_says_why_and_training_goes_on(tiny_model_en, demo_images, tmp_path):
    from ppdiffusers.utils import is_ppxformers_available

    if is_ppxformers_available():
        pytest.skip("memory-efficient attention is available on this device")
    records = _Records()
    logging.getLogger("ppti").addHandler(records)
    try:
        run = setup(parse_config(train_args(tiny_model_en, demo_images, tmp_path,
                                            enable_xformers_memory_efficient_attention=True)), DistContext())
    finally:
        logging.getLogger("ppti").removeHandler(records)
    [message] = [m for m in records.messages if "--enable_xformers_memory_efficient_attention" in m]
    assert f"does not run on {paddle.device.get_device()}" in message and "needs a CUDA GPU" in message
    assert "continues with standard attention" in message
    assert np.isfinite(optimizer_step(run, iter(batches(run, 0))))
