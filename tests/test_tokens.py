"""The trainable-rows embedding: only placeholder rows change, whatever their position in the vocabulary."""

import numpy as np
import paddle

from ppti.tokens import PlaceholderEmbedding


def _layer(vocab=10, dim=4, ids=(3, 7)):
    weight = paddle.create_parameter([vocab, dim], "float32")
    weight.set_value(paddle.to_tensor(np.arange(vocab * dim, dtype=np.float32).reshape(vocab, dim)))
    rows = np.full((len(ids), dim), -1.0, dtype=np.float32)
    return PlaceholderEmbedding(weight, list(ids), rows), weight.numpy().copy()


def test_placeholder_positions_read_the_trained_rows():
    layer, original = _layer()
    out = layer(paddle.to_tensor([[1, 3, 7, 3]])).numpy()
    assert np.array_equal(out[0, 0], original[1])
    assert np.array_equal(out[0, 1], [-1, -1, -1, -1]) and np.array_equal(out[0, 2], [-1, -1, -1, -1])


def test_gradient_reaches_only_the_rows_and_each_placeholder_row():
    layer, _ = _layer()
    out = layer(paddle.to_tensor([[1, 3, 7, 2]]))
    (out * paddle.arange(16, dtype="float32").reshape([1, 4, 4])).sum().backward()
    assert layer.weight.grad is None  # the vocabulary matrix is frozen
    grad = layer.rows.grad.numpy()
    assert np.array_equal(grad[0], [4, 5, 6, 7]) and np.array_equal(grad[1], [8, 9, 10, 11])


def test_optimizer_step_leaves_every_other_row_bit_identical():
    # placeholder rows 3 and 7 sit in the middle of the vocabulary, not at the end
    layer, original = _layer()
    optimizer = paddle.optimizer.AdamW(learning_rate=0.1, parameters=[layer.rows], weight_decay=0.01)
    for _ in range(3):
        layer(paddle.to_tensor([[0, 3, 5, 7, 9]])).pow(2).sum().backward()
        optimizer.step()
        optimizer.clear_grad()
    merged = layer.merged_weight().numpy()
    others = [i for i in range(10) if i not in (3, 7)]
    assert np.array_equal(merged[others], original[others])
    assert not np.allclose(merged[[3, 7]], -1.0)
    assert np.array_equal(merged[[3, 7]], layer.rows.numpy())
