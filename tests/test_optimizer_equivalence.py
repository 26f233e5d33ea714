"""ppti's optimizer over the placeholder rows only gives exactly the update of the ppdiffusers example's AdamW over
the whole embedding matrix followed by the restore of every other row -- weight decay and LR schedule included --
while holding moments for 2 rows instead of the whole vocabulary."""

import numpy as np
import paddle
import pytest

from ppti.config import parse_config
from ppti.data import tokenize_templates
from ppti.models import tokenize_fn
from ppti.templates import templates_for
from ppti.tokens import add_placeholder_tokens, initializer_ids, install_trainable_rows
from ppti.train import build_optimizer

STEPS = 20
PLACEHOLDERS = ["<demo-toy>", "<demo-toy>_1"]
FLAGS = ["--pretrained_model_name_or_path", "m", "--train_data_dir", "d", "--placeholder_token", "<demo-toy>",
         "--initializer_token", "toy", "--num_vectors", "2", "--learning_rate", "2e-2", "--lr_scheduler", "cosine",
         "--lr_warmup_steps", "3", "--adam_beta1", "0.8", "--adam_beta2", "0.95"]


def _load(model_dir):
    from ppdiffusers.transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(str(model_dir / "text_encoder"))
    text_encoder.eval()
    ids = add_placeholder_tokens(tokenizer, PLACEHOLDERS)
    init_ids, _ = initializer_ids(tokenizer, "toy")
    prompts = tokenize_templates(templates_for("object", "en")[:5], " ".join(PLACEHOLDERS),
                                 tokenize_fn(tokenizer, tokenizer.model_max_length))
    return tokenizer, text_encoder, ids, init_ids, prompts


def _loss(text_encoder, input_ids: np.ndarray, target: paddle.Tensor) -> paddle.Tensor:
    hidden = text_encoder(paddle.to_tensor(input_ids))[0]  # (B, T, D)
    return ((hidden - target) ** 2).mean()


def _targets(prompts: np.ndarray, dim: int) -> list[paddle.Tensor]:
    rng = np.random.default_rng(0)
    return [paddle.to_tensor(rng.standard_normal((2, prompts.shape[1], dim)).astype(np.float32))
            for _ in range(STEPS)]


def _batch(prompts: np.ndarray, step: int) -> np.ndarray:
    return prompts[[step % len(prompts), (step + 2) % len(prompts)]]  # (2, T): different prompts every step


def train_full_matrix(model_dir, weight_decay: float):
    """The example: AdamW over the whole matrix, then every non-placeholder row restored after each step."""
    from ppdiffusers.optimization import get_scheduler

    config = parse_config(FLAGS + ["--adam_weight_decay", str(weight_decay)])
    tokenizer, text_encoder, ids, init_ids, prompts = _load(model_dir)
    text_encoder.resize_token_embeddings(len(tokenizer))
    for p in text_encoder.parameters():
        p.stop_gradient = True
    weight = text_encoder.get_input_embeddings().weight
    with paddle.no_grad():
        weight[paddle.to_tensor(ids)] = weight[paddle.to_tensor(init_ids)].mean(0, keepdim=True).tile([len(ids), 1])
    weight.stop_gradient = False
    original = weight.clone()
    keep = paddle.to_tensor([i for i in range(weight.shape[0]) if i not in ids])
    scheduler = get_scheduler(config.lr_scheduler, learning_rate=config.learning_rate,
                              num_warmup_steps=config.lr_warmup_steps, num_training_steps=STEPS)
    optimizer = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=[weight], beta1=config.adam_beta1,
                                       beta2=config.adam_beta2, epsilon=config.adam_epsilon,
                                       weight_decay=config.adam_weight_decay)
    targets, first_grad = _targets(prompts, weight.shape[1]), None
    for step in range(STEPS):
        _loss(text_encoder, _batch(prompts, step), targets[step]).backward()
        if first_grad is None:
            first_grad = weight.grad.numpy()[ids]
        optimizer.step()
        optimizer.clear_grad()
        scheduler.step()
        with paddle.no_grad():
            weight[keep] = original[keep]
    return weight.numpy(), original.numpy(), ids, first_grad


def train_placeholder_rows(model_dir, weight_decay: float):
    """ppti: PlaceholderEmbedding + ppti.train.build_optimizer (AdamW over the [2, dim] rows)."""
    config = parse_config(FLAGS + ["--adam_weight_decay", str(weight_decay)])
    tokenizer, text_encoder, ids, init_ids, prompts = _load(model_dir)
    layer = install_trainable_rows(text_encoder, len(tokenizer), ids, init_ids)
    optimizer, scheduler = build_optimizer(config, layer.rows, config.learning_rate, STEPS)
    targets, first_grad = _targets(prompts, layer.rows.shape[1]), None
    for step in range(STEPS):
        _loss(text_encoder, _batch(prompts, step), targets[step]).backward()
        if first_grad is None:
            first_grad = layer.rows.grad.numpy()
        optimizer.step()
        optimizer.clear_grad()
        scheduler.step()
    return layer.merged_weight().numpy(), first_grad, optimizer


@pytest.fixture(scope="module")
def full_run(tiny_model_en):
    return train_full_matrix(tiny_model_en, weight_decay=0.1)


def test_gradient_of_the_placeholder_rows_is_the_full_matrix_gradient(tiny_model_en, full_run):
    _, _, _, full_grad = full_run
    _, rows_grad, _ = train_placeholder_rows(tiny_model_en, weight_decay=0.1)
    assert np.abs(rows_grad).max() > 0
    np.testing.assert_allclose(rows_grad, full_grad, rtol=0, atol=1e-9)


def test_sparse_rows_equal_full_matrix_adamw_plus_restore_over_20_steps(tiny_model_en, full_run):
    full, original, ids, _ = full_run
    merged, _, optimizer = train_placeholder_rows(tiny_model_en, weight_decay=0.1)
    assert full.shape == merged.shape
    assert np.abs(full[ids] - original[ids]).max() > 1e-2  # the rows did train
    np.testing.assert_allclose(merged[ids], full[ids], rtol=0, atol=1e-6)
    others = [i for i in range(full.shape[0]) if i not in ids]
    assert np.array_equal(merged[others], original[others])  # every other row untouched, bit for bit
    # the optimizer state is the rows' size, not the vocabulary's
    moments = [v for k, v in optimizer.state_dict().items() if "moment" in k]
    assert moments and all(tuple(m.shape) == (len(ids), full.shape[1]) for m in moments)


def test_weight_decay_is_part_of_the_equivalence(tiny_model_en, full_run):
    full, _, ids, _ = full_run
    no_decay, _, _ = train_placeholder_rows(tiny_model_en, weight_decay=0.0)
    assert np.abs(no_decay[ids] - full[ids]).max() > 1e-5  # decay changes the result the test compares
