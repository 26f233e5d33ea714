"""Placeholder tokens: adding them, initialising their rows, and training only those rows.

Only the placeholder rows train. Instead of training the whole `[vocab, dim]` embedding matrix and restoring the
other rows after every step (the ppdiffusers example), the text encoder's input-embedding layer is replaced by
`PlaceholderEmbedding`: the pretrained matrix stays frozen, a small `[num_vectors, dim]` parameter holds the
placeholder rows and is substituted wherever a placeholder id occurs. The optimizer, gradient clipping and the
multi-card all-reduce then see only the rows that train, and every other row is untouched by construction.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class TokenError(ValueError):
    """A problem with --placeholder_token / --initializer_token the user must fix."""


def add_placeholder_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add the placeholder tokens to the tokenizer and return their ids; refuse tokens it already knows."""
    vocab = tokenizer.get_vocab()
    known = [t for t in tokens if t in vocab]
    if known:
        raise TokenError(
            f"--placeholder_token: the tokenizer already contains {', '.join(known)}; "
            "choose a new word, e.g. '<my-concept>'"
        )
    existing = tokenizer(tokens[0], add_special_tokens=False)["input_ids"]
    if len(existing) == 1 and existing[0] != getattr(tokenizer, "unk_token_id", None):
        raise TokenError(
            f"--placeholder_token {tokens[0]!r} is already a word of the tokenizer (token id {existing[0]}); "
            f"it would replace that word in every prompt. Choose a new word, e.g. '<{tokens[0]}-concept>'"
        )
    added = tokenizer.add_tokens(list(tokens))
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = getattr(tokenizer, "unk_token_id", None)
    if added != len(tokens) or len(set(ids)) != len(tokens) or unk in ids:
        raise TokenError(
            f"--placeholder_token {tokens[0]!r}: the tokenizer did not add it as {len(tokens)} new token(s) "
            f"(ids {ids}); try a lower-case placeholder such as {tokens[0].lower()!r}"
        )
    return ids


def initializer_ids(tokenizer, word: str) -> tuple[list[int], list[str]]:
    """Ids (and pieces) the initializer word tokenizes to, without special, unknown or blank pieces."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    kept = [
        (i, p) for i, p in zip(ids, pieces)
        if i not in special and p.replace("</w>", "").replace("▁", "").strip()
    ]
    if not kept:
        raise TokenError(
            f"--initializer_token {word!r} tokenizes to no usable token ({pieces}); "
            "give a common word close to the concept, e.g. 'toy' or 'style'"
        )
    return [i for i, _ in kept], [p for _, p in kept]


def check_prompts_contain(prompt_ids: np.ndarray, token_ids: Sequence[int], templates: Sequence[str]) -> None:
    """Every tokenized prompt must hold every placeholder id exactly once (else the concept silently
    does not train: truncated prompt, or a tokenizer that split the placeholder)."""
    for row, template in zip(prompt_ids, templates):
        counts = [int((row == t).sum()) for t in token_ids]
        if counts != [1] * len(token_ids):
            raise TokenError(
                f"--placeholder_token: the prompt {template!r} does not contain each placeholder token exactly "
                f"once after tokenization (counts {counts}); use a simpler placeholder such as '<my-concept>'"
            )


class PlaceholderEmbedding(nn.Layer):
    """A frozen `[vocab, dim]` embedding with trainable rows for the placeholder ids.

    `weight` keeps the pretrained matrix (placeholder rows hold their initial values), `rows` the trained rows.
    """

    def __init__(self, weight: paddle.Tensor, placeholder_ids: Sequence[int], rows: np.ndarray):
        super().__init__()
        self.weight = weight  # the pretrained Parameter itself (no copy of the vocabulary-size matrix)
        self.weight.stop_gradient = True
        self.rows = self.create_parameter(list(rows.shape), dtype="float32")
        self.rows.set_value(paddle.to_tensor(rows, dtype="float32"))
        slot = np.full([weight.shape[0]], -1, dtype=np.int64)  # vocab id -> row index, -1 elsewhere
        slot[list(placeholder_ids)] = np.arange(len(placeholder_ids))
        self.register_buffer("slot", paddle.to_tensor(slot), persistable=False)
        self.placeholder_ids = list(placeholder_ids)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        frozen = F.embedding(input_ids, self.weight)  # (B, T, D)
        slot = paddle.gather(self.slot, input_ids.flatten()).reshape(input_ids.shape)
        trained = F.embedding(slot.clip(min=0), self.rows.astype(frozen.dtype))  # (B, T, D)
        return paddle.where((slot >= 0).unsqueeze(-1), trained, frozen)

    def merged_weight(self) -> paddle.Tensor:
        """The full matrix with the trained rows written in (a copy)."""
        merged = self.weight.detach().clone()
        merged[paddle.to_tensor(self.placeholder_ids)] = self.rows.detach().astype(merged.dtype)
        return merged


def install_trainable_rows(
    text_encoder, vocab_size: int, placeholder_ids: Sequence[int], init_ids: Sequence[int]
) -> PlaceholderEmbedding:
    """Grow the text encoder's embedding to the tokenizer's size, initialise the placeholder rows from the mean of the
    initializer rows, freeze the text encoder and swap in a PlaceholderEmbedding. Returns the new layer."""
    if vocab_size > text_encoder.get_input_embeddings().weight.shape[0]:
        # never shrink: some text encoders have more rows than their tokenizer has tokens
        text_encoder.resize_token_embeddings(vocab_size)
    weight = text_encoder.get_input_embeddings().weight
    init = weight[paddle.to_tensor(list(init_ids))].astype("float32").mean(axis=0).numpy()  # (D,)
    rows = np.tile(init, (len(placeholder_ids), 1))  # (n, D)
    with paddle.no_grad():
        weight[paddle.to_tensor(list(placeholder_ids))] = paddle.to_tensor(rows, dtype=weight.dtype)
    for p in text_encoder.parameters():
        p.stop_gradient = True
    layer = PlaceholderEmbedding(weight, placeholder_ids, rows)
    install_placeholder_layer(text_encoder, layer)
    return layer


def install_placeholder_layer(text_encoder, layer: PlaceholderEmbedding) -> None:
    text_encoder.set_input_embeddings(layer)


def restore_plain_embedding(text_encoder, layer: PlaceholderEmbedding) -> nn.Embedding:
    """Put back an ordinary nn.Embedding holding the merged weights (for save_pretrained / plain pipelines)."""
    merged = layer.merged_weight()
    plain = nn.Embedding(merged.shape[0], merged.shape[1])
    plain.weight.set_value(merged.astype(plain.weight.dtype))
    plain.weight.stop_gradient = True
    text_encoder.set_input_embeddings(plain)
    return plain
