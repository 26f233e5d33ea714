"""End-to-end training on the tiny model, the textual-inversion invariants, and the example's bugs ppti must not have."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml
from PIL import Image

from conftest import REPO, run_entry, train_args
from ppti.config import parse_config
from ppti.distributed import DistContext
from ppti.models import load_components
from ppti.train import micro_step_loss, optimizer_step, setup, train, train_loop


def _config(model, data, out, **overrides):
    return parse_config(train_args(model, data, out, **overrides))


def _load_pdparams(path: Path) -> dict:
    return {k: np.asarray(v) for k, v in paddle.load(str(path)).items()}


# ------------------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------------------
def test_demo_config_end_to_end(tiny_model_en, tmp_path):
    """configs/demo.yaml as shipped (only the model and output paths moved), through the real entry point."""
    out = tmp_path / "demo"
    proc = run_entry(["--config", str(REPO / "configs" / "demo.yaml"),
                      "--pretrained_model_name_or_path", str(tiny_model_en), "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    steps = demo["max_train_steps"]
    for name in ("learned_embeds.pdparams", f"learned_embeds-steps-{demo['save_steps']}.pdparams",
                 f"learned_embeds-steps-{steps}.pdparams", "token_identifier.txt", "type_of_concept.txt",
                 "train_config.yaml"):
        assert (out / name).is_file(), name
    assert (out / "token_identifier.txt").read_text() == "<demo-toy>"
    assert (out / "type_of_concept.txt").read_text() == "object"
    saved = _load_pdparams(out / "learned_embeds.pdparams")
    assert list(saved) == ["<demo-toy>"] and saved["<demo-toy>"].shape == (1, 32)
    assert saved["<demo-toy>"].dtype == np.float32
    assert list((out / "logs").iterdir()), "VisualDL wrote no log"
    pngs = sorted((out / "validation").glob("step-*.png"))
    assert pngs, "validation images missing"
    # the resolved config reads back as a config
    again = parse_config(["--config", str(out / "train_config.yaml")])
    assert again.placeholder_token == "<demo-toy>" and again.max_train_steps == steps
    assert "Running training" in proc.stderr and "Train steps" in proc.stderr
    assert not list(out.rglob("*.ppti-tmp-*"))


def test_saved_embedding_loads_in_ppdiffusers_and_changes_the_prompt(tiny_model_en, demo_images, tmp_path):
    from ppdiffusers import StableDiffusionPipeline

    out = tmp_path / "run"
    train(_config(tiny_model_en, demo_images, out, max_train_steps=3), DistContext())
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_en), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(out / "learned_embeds.pdparams"))
    token_id = pipe.tokenizer.convert_tokens_to_ids("<demo-toy>")
    saved = _load_pdparams(out / "learned_embeds.pdparams")["<demo-toy>"]
    weight = pipe.text_encoder.get_input_embeddings().weight
    assert np.array_equal(weight[token_id].numpy(), saved[0])

    prompt = "a photo of a <demo-toy>"
    assert pipe.tokenizer(prompt)["input_ids"].count(token_id) == 1  # one token, not split into pieces
    with paddle.no_grad():
        trained_embeds = pipe.encode_prompt(prompt, 1, False)[0].numpy()
        initializer = pipe.tokenizer("toy", add_special_tokens=False)["input_ids"]
        weight[token_id] = weight[initializer].mean(axis=0)  # the row training started from
        initial_embeds = pipe.encode_prompt(prompt, 1, False)[0].numpy()
        weight[token_id] = paddle.to_tensor(saved[0])
    change = np.abs(trained_embeds - initial_embeds)
    assert change.max() > 1e-4, "the trained row does not change the prompt's encoding"
    position = pipe.tokenizer(prompt)["input_ids"].index(token_id)
    assert change[0, :position].max() == 0  # causal attention: the words before the placeholder are untouched
    image = pipe(prompt, num_inference_steps=2, height=64, width=64,
                 generator=paddle.Generator().manual_seed(0)).images[0]
    assert isinstance(image, Image.Image) and image.size == (64, 64)


def test_full_pipeline_saved_with_no_only_save_embeds(tiny_model_en, demo_images, tmp_path):
    from ppdiffusers import StableDiffusionPipeline

    out = tmp_path / "full"
    train(_config(tiny_model_en, demo_images, out, max_train_steps=2, only_save_embeds=False), DistContext())
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    token_id = pipe.tokenizer.convert_tokens_to_ids("<demo-toy>")
    assert token_id != pipe.tokenizer.unk_token_id
    saved = _load_pdparams(out / "learned_embeds.pdparams")["<demo-toy>"]
    assert np.array_equal(pipe.text_encoder.get_input_embeddings().weight[token_id].numpy(), saved[0])


# ------------------------------------------------------------------------------------------------------------
# invariants
# ------------------------------------------------------------------------------------------------------------
def test_only_placeholder_rows_change_even_in_the_middle_of_the_vocabulary(tiny_model_en, demo_images, tmp_path):
    """The text encoder has more rows than the tokenizer has tokens, so the placeholders are NOT the last rows."""
    components = load_components(str(tiny_model_en))
    extra = 8
    components.text_encoder.resize_token_embeddings(len(components.tokenizer) + extra)
    pretrained = components.text_encoder.get_input_embeddings().weight.numpy().copy()
    config = _config(tiny_model_en, demo_images, tmp_path / "o", num_vectors=2, max_train_steps=3)
    run = setup(config, DistContext(), components)
    vocab_rows = pretrained.shape[0]
    assert max(run.placeholder_ids) < vocab_rows - 1  # placeholders sit in the middle
    train_loop(run)
    merged = run.rows.merged_weight().numpy()
    assert merged.shape[0] == vocab_rows  # never shrunk
    others = np.setdiff1d(np.arange(vocab_rows), run.placeholder_ids)
    assert np.array_equal(merged[others], pretrained[others])  # bitwise
    assert not np.allclose(merged[run.placeholder_ids], pretrained[run.placeholder_ids])


def test_every_vector_of_a_multi_vector_placeholder_trains(tiny_model_en, demo_images, tmp_path):
    run = setup(_config(tiny_model_en, demo_images, tmp_path / "o", num_vectors=3), DistContext())
    assert run.stream.prompt_ids.shape[0] == len(run.templates)
    for row in run.stream.prompt_ids:  # every prompt holds <t> <t>_1 <t>_2 once each
        assert all(int((row == t).sum()) == 1 for t in run.placeholder_ids)
    before = run.rows.rows.numpy().copy()
    batch = _fixed_batch(run)
    micro_step_loss(run, batch).backward()
    grad = run.rows.rows.grad.numpy()
    assert grad.shape == (3, 32) and np.all(np.abs(grad).sum(axis=1) > 0), "a vector got no gradient"
    run.optimizer.clear_grad()
    train_loop(run)
    assert np.all(np.abs(run.rows.rows.numpy() - before).sum(axis=1) > 0)


def test_multi_token_initializer_initialises_from_the_mean(tiny_model_en, demo_images, tmp_path):
    components = load_components(str(tiny_model_en))
    tokenizer = components.tokenizer
    weight = components.text_encoder.get_input_embeddings().weight.numpy().copy()
    ids = tokenizer("toy cat", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    run = setup(_config(tiny_model_en, demo_images, tmp_path / "o", initializer_token="toy cat", num_vectors=2),
                DistContext(), components)
    expected = weight[ids].mean(axis=0)
    np.testing.assert_allclose(run.rows.rows.numpy(), np.stack([expected, expected]), rtol=0, atol=1e-7)


def _fixed_batch(run, timestep: int = 500) -> dict:
    keys = list(range(run.config.train_batch_size))
    examples = [run.stream[k] for k in keys]
    batch = {name: paddle.to_tensor(np.stack([e[name] for e in examples])) for name in examples[0]}
    batch["timestep"] = paddle.full([len(keys)], timestep, dtype="int64")
    return batch


def test_loss_goes_down_on_a_fixed_batch(tiny_model_en, demo_images, tmp_path):
    run = setup(_config(tiny_model_en, demo_images, tmp_path / "o", learning_rate=5e-2, adam_weight_decay=0.0),
                DistContext())
    batch = _fixed_batch(run)
    losses = []
    for _ in range(30):
        loss = micro_step_loss(run, batch)
        loss.backward()
        run.optimizer.step()
        run.optimizer.clear_grad()
        losses.append(float(loss))
    # the random tiny UNet leaves the embedding little leverage: the loss falls slowly but steadily
    assert losses[-1] < losses[0] - 5e-3, losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 25, losses


@pytest.mark.parametrize("size, latent_hw", [
    ({"resolution": 64}, (8, 8)),
    ({"resolution": 64, "width": 96}, (8, 12)),  # a lone --width is honoured
    ({"height": 96, "width": 64, "resolution": 128}, (12, 8)),
    ({"resolution": 48, "height": 80}, (10, 6)),
])
def test_image_sizes_give_the_right_tensor_shapes(tiny_model_en, demo_images, tmp_path, size, latent_hw):
    run = setup(_config(tiny_model_en, demo_images, tmp_path / "o", **size), DistContext())
    h, w = latent_hw
    assert run.stream.latent_shape == (4, h, w)
    assert tuple(run.latents.mean.shape[1:]) == (4, h, w)
    batch = _fixed_batch(run)
    latents = run.latents.sample(batch["variant"], batch["posterior_eps"])
    assert tuple(latents.shape) == (2, 4, h, w)
    assert float(micro_step_loss(run, batch)) > 0  # the UNet runs on the non-square latents
    train_loop(run)


# ------------------------------------------------------------------------------------------------------------
# the example's bugs
# ------------------------------------------------------------------------------------------------------------
def test_lr_schedule_ends_exactly_at_max_train_steps_with_accumulation(tiny_model_en, demo_images, tmp_path):
    config = _config(tiny_model_en, demo_images, tmp_path / "o", lr_scheduler="linear", lr_warmup_steps=1,
                     gradient_accumulation_steps=4, train_batch_size=1, max_train_steps=4)
    run = setup(config, DistContext())
    seen = []
    micro_batches = iter(__import__("ppti.train", fromlist=["batches"]).batches(run, 0))
    for _ in range(4):
        seen.append(run.lr_scheduler.get_lr())
        optimizer_step(run, micro_batches)
    assert seen[0] == 0.0 and seen[1] == pytest.approx(5e-3)  # 1 warmup step, counted in optimizer steps
    assert run.lr_scheduler.get_lr() == pytest.approx(0.0)  # fully decayed at max_train_steps, not at 25 %


def test_logged_loss_is_the_mean_over_accumulated_micro_batches(tiny_model_en, demo_images, tmp_path):
    config = _config(tiny_model_en, demo_images, tmp_path / "o", gradient_accumulation_steps=2,
                     train_batch_size=1, learning_rate=1e-12)
    run = setup(config, DistContext())
    from ppti.train import batches

    micro = list(batches(run, 0))[:2]
    expected = np.mean([float(micro_step_loss(run, b)) for b in micro])
    run.optimizer.clear_grad()
    assert optimizer_step(run, iter(micro)) == pytest.approx(expected, rel=1e-5)


def test_gradient_clipping_limits_the_update_to_max_grad_norm(tiny_model_en, demo_images, tmp_path):
    """--max_grad_norm clips the rows' gradient to that global norm before AdamW uses it. With epsilon 1 (far above
    the gradient) AdamW's first update is lr * g / (|g| + 1) elementwise, so it shows the gradient it was given: the
    clipped one, g * max_grad_norm / |g|, not the raw one (about 100 times larger here)."""
    from ppti.train import batches

    max_grad_norm = 1e-4
    run = setup(_config(tiny_model_en, demo_images, tmp_path / "o", max_grad_norm=max_grad_norm, learning_rate=1.0,
                        adam_epsilon=1.0, adam_weight_decay=0.0), DistContext())
    assert [p.name for p in run.optimizer._parameter_list] == [run.rows.rows.name]
    micro = list(batches(run, 0))[:1]
    micro_step_loss(run, micro[0]).backward()
    raw = run.rows.rows.grad.numpy().copy()
    run.optimizer.clear_grad()
    assert np.linalg.norm(raw) > 20 * max_grad_norm, "the gradient must be well above the clip for this test"
    before = run.rows.rows.numpy().copy()
    optimizer_step(run, iter(micro))
    update = before - run.rows.rows.numpy()
    clipped = raw * (max_grad_norm / np.linalg.norm(raw))
    expected = clipped / (np.abs(clipped) + 1.0)
    error = np.abs(update - expected).max() / np.abs(expected).max()
    assert error < 1e-3, f"the update is not the clipped gradient's: relative error {error:.2e}"
    assert np.linalg.norm(update) <= max_grad_norm


def test_seed_zero_is_a_seed(tiny_model_en, demo_images, tmp_path):
    finals = []
    for name in ("a", "b"):
        final = train(_config(tiny_model_en, demo_images, tmp_path / name, seed=0, max_train_steps=2), DistContext())
        finals.append(_load_pdparams(final)["<demo-toy>"])
    assert np.array_equal(finals[0], finals[1])
    other = train(_config(tiny_model_en, demo_images, tmp_path / "c", seed=1, max_train_steps=2), DistContext())
    assert not np.array_equal(_load_pdparams(other)["<demo-toy>"], finals[0])


def test_v_prediction_with_noise_offset_trains_the_rows(tmp_path, demo_images):
    from ppti.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "vpred", prediction_type="v_prediction")
    config = _config(model, demo_images, tmp_path / "o", noise_offset=0.1, max_train_steps=2)
    run = setup(config, DistContext())
    assert run.components.noise_scheduler.config.prediction_type == "v_prediction"
    before = run.rows.rows.numpy().copy()
    train_loop(run)
    after = run.rows.rows.numpy()
    assert np.isfinite(after).all() and np.abs(after - before).max() > 1e-3


def test_noise_offset_adds_one_draw_per_example_and_channel_to_the_noise(tiny_model_en, demo_images, tmp_path):
    """--noise_offset s (https://www.crosslabs.org//blog/diffusion-with-offset-noise): the noise of each example is
    the plain Gaussian noise plus s x one standard normal draw per channel, the same at every pixel -- seen in the
    batches the trainer draws, against the same run without it."""
    from ppti.train import batches

    def noise_of(out, offset):
        run = setup(_config(tiny_model_en, demo_images, out, noise_offset=offset, max_train_steps=8), DistContext())
        draws = list(batches(run, 0))
        return np.concatenate([b["noise"].numpy() for b in draws]), [b["variant"].numpy() for b in draws]

    plain, plain_variants = noise_of(tmp_path / "a", 0.0)
    offset, offset_variants = noise_of(tmp_path / "b", 0.1)
    assert all(np.array_equal(a, b) for a, b in zip(plain_variants, offset_variants))  # the same examples
    shift = offset - plain  # (N, C, h, w)
    per_channel = shift.mean(axis=(2, 3), keepdims=True)
    assert np.abs(shift - per_channel).max() < 1e-6, "the offset is not one value per example and channel"
    draws = per_channel.ravel() / 0.1  # N x C standard normal draws
    assert len(draws) >= 32 and 0.7 < draws.std() < 1.3 and abs(draws.mean()) < 0.5, draws
    assert len(np.unique(np.round(draws, 5))) == len(draws)  # a new draw for every example and channel


# ------------------------------------------------------------------------------------------------------------
# bad input: one actionable line, exit != 0, nothing written
# ------------------------------------------------------------------------------------------------------------
def _expect_refusal(args, out: Path, *needles: str):
    proc = run_entry(args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-2000:])
    assert not out.exists(), f"{out} was written"


def test_bad_data_dirs_are_refused(tiny_model_en, tmp_path):
    out = tmp_path / "out"
    _expect_refusal(train_args(tiny_model_en, tmp_path / "nope", out), out, "--train_data_dir", "no such directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_refusal(train_args(tiny_model_en, empty, out), out, "--train_data_dir", "no decodable images")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"\xff\xd8garbage")
    _expect_refusal(train_args(tiny_model_en, junk, out), out, "no decodable images", "a.jpg")


def test_corrupt_image_among_good_ones_is_skipped(tiny_model_en, demo_images, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_images, data)
    (data / "corrupt.png").write_bytes((data / "toy-1.png").read_bytes()[:100])
    proc = run_entry(train_args(tiny_model_en, data, tmp_path / "out", max_train_steps=1))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "corrupt.png" in proc.stderr and "skipping" in proc.stderr


def test_bad_model_folders_are_refused(tiny_model_en, demo_images, tmp_path):
    out = tmp_path / "out"
    no_index = tmp_path / "no_index"
    shutil.copytree(tiny_model_en, no_index)
    (no_index / "model_index.json").unlink()
    _expect_refusal(train_args(no_index, demo_images, out), out, "model_index.json")
    no_unet = tmp_path / "no_unet"
    shutil.copytree(tiny_model_en, no_unet)
    shutil.rmtree(no_unet / "unet")
    _expect_refusal(train_args(no_unet, demo_images, out), out, "missing subfolder(s) unet")


def test_model_whose_weights_do_not_fully_load_is_refused(tiny_model_en, demo_images, tmp_path):
    """ppdiffusers only warns and leaves such weights random; ppti refuses, naming the keys."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_en, broken)
    weights = next((broken / "text_encoder").glob("model_state.pdparams"))
    state = paddle.load(str(weights))
    dropped = next(k for k in state if "final_layer_norm" in k)
    del state[dropped]
    state["text_model.unused_extra.weight"] = paddle.zeros([2])
    paddle.save(state, str(weights))
    out = tmp_path / "out"
    _expect_refusal(train_args(broken, demo_images, out), out, "do not fully load", dropped,
                    "text_model.unused_extra.weight")


def test_bad_tokens_are_refused(tiny_model_en, demo_images, tmp_path):
    out = tmp_path / "out"
    _expect_refusal(train_args(tiny_model_en, demo_images, out, placeholder_token="toy", initializer_token="cat"), out,
                    "--placeholder_token 'toy' is already a word of the tokenizer")
    _expect_refusal(train_args(tiny_model_en, demo_images, out, placeholder_token="<|endoftext|>"), out,
                    "--placeholder_token", "already")
    _expect_refusal(train_args(tiny_model_en, demo_images, out, initializer_token="\ufeff"), out,
                    "--initializer_token", "tokenizes to no usable token")


def test_bad_flags_and_values_are_refused(tiny_model_en, demo_images, tmp_path):
    out = tmp_path / "out"
    _expect_refusal(train_args(tiny_model_en, demo_images, out) + ["--no_such_flag", "1"], out, "--no_such_flag")
    _expect_refusal(train_args(tiny_model_en, demo_images, out, max_train_steps=0), out, "--max_train_steps")
    config = tmp_path / "bad.yaml"
    config.write_text("learnig_rate: 0.1\n")
    _expect_refusal(["--config", str(config)] + train_args(tiny_model_en, demo_images, out), out, "learnig_rate")


def test_unwritable_output_dir_is_refused(tiny_model_en, demo_images, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _expect_refusal(train_args(tiny_model_en, demo_images, blocker / "out"), blocker / "out", "--output_dir")
