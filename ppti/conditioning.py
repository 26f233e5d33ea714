"""Prompt ids -> UNet conditioning, one implementation per architecture, each owning its trainable rows.

    TextConditioning  SD-1.x/2.x, Taiyi, AltDiffusion: the last hidden states of the one text encoder.
    SDXLConditioning  SDXL: the penultimate hidden states of both text encoders concatenated, the pooled (projected)
                      output of the second as `text_embeds`, and `time_ids` (original size, crop top-left, target
                      size) -- exactly what StableDiffusionXLPipeline.encode_prompt / _get_add_time_ids compute.

Both are `paddle.nn.Layer`s holding their text encoder(s), so `paddle.DataParallel` can wrap the conditioning as a
whole: the reducer then sees every placeholder row set (one per text encoder) and nothing else. The loop calls
`conditioning(input_ids, time_ids, dtype)` and passes the result to the UNet; it does not know which one it has.

`input_ids` is (B, T) for one text encoder and (B, E, T) for E text encoders (the prompt tokenized by each
encoder's own tokenizer; SDXL concatenates the encoders' states per token, so both pad to the same length).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle
import paddle.nn as nn

from .tokens import PlaceholderEmbedding, add_placeholder_tokens, initializer_ids, install_trainable_rows

log = logging.getLogger("ppti")


@dataclass(frozen=True)
class TextEncoderSlot:
    """One tokenizer + text encoder pair of a pipeline, by its component names."""

    tokenizer: Any
    text_encoder: Any
    name: str  # "text_encoder" | "text_encoder_2"


def text_encoder_slots(components) -> list[TextEncoderSlot]:
    """The pipeline's (tokenizer, text encoder) pairs in order: one for SD-1.x, two for SDXL."""
    slots = [TextEncoderSlot(components.tokenizer, components.text_encoder, "text_encoder")]
    if components.is_sdxl:
        pipe = components.pipeline
        slots.append(TextEncoderSlot(pipe.tokenizer_2, pipe.text_encoder_2, "text_encoder_2"))
    return slots


def install_placeholders(slot: TextEncoderSlot, tokens: list[str], initializer: str) -> PlaceholderEmbedding:
    """Add the placeholder tokens to the slot's tokenizer and its trainable rows (initialised from the
    initializer's mean in that tokenizer's own vocabulary) to its text encoder."""
    ids = add_placeholder_tokens(slot.tokenizer, tokens)
    init_ids, _ = initializer_ids(slot.tokenizer, initializer)
    return install_trainable_rows(slot.text_encoder, len(slot.tokenizer), ids, init_ids)


class Conditioning(nn.Layer):
    """Base: the row sets (one PlaceholderEmbedding per text encoder) and their text encoders."""

    def __init__(self, slots: list[TextEncoderSlot], row_layers: list[PlaceholderEmbedding]):
        super().__init__()
        self.slots = slots
        self.encoders = nn.LayerList([slot.text_encoder for slot in slots])
        self.row_layers = row_layers  # already sublayers of the encoders

    @property
    def rows(self) -> list[paddle.Tensor]:
        """The trainable parameters, one [num_vectors, dim] tensor per text encoder."""
        return [layer.rows for layer in self.row_layers]

    def tokenizers_and_ids(self) -> list[tuple[Any, list[int]]]:
        """(tokenizer, placeholder ids in it) per text encoder."""
        return [(slot.tokenizer, layer.placeholder_ids) for slot, layer in zip(self.slots, self.row_layers)]

    def learned_rows(self) -> list[np.ndarray]:
        return [layer.rows.numpy().astype(np.float32) for layer in self.row_layers]


class TextConditioning(Conditioning):
    """One text encoder; the UNet attends to its last hidden states."""

    def __init__(self, slots, row_layers, pad_token_id: int | None):
        super().__init__(slots, row_layers)
        self.pad_token_id = pad_token_id  # None: the encoder takes no attention mask

    def forward(self, input_ids: paddle.Tensor, time_ids: paddle.Tensor, dtype) -> tuple[paddle.Tensor, dict]:
        attention_mask = None
        if self.pad_token_id is not None:
            attention_mask = (input_ids != self.pad_token_id).astype("int64")
        hidden = self.encoders[0](input_ids, attention_mask=attention_mask)[0]  # (B, T, D)
        return hidden.astype(dtype), {}


class SDXLConditioning(Conditioning):
    """Two CLIP text encoders, conditioned as StableDiffusionXLPipeline does it (clip_skip None)."""

    def forward(self, input_ids: paddle.Tensor, time_ids: paddle.Tensor, dtype) -> tuple[paddle.Tensor, dict]:
        out_1 = self.encoders[0](input_ids[:, 0], output_hidden_states=True)
        out_2 = self.encoders[1](input_ids[:, 1], output_hidden_states=True)
        hidden = paddle.concat([out_1.hidden_states[-2], out_2.hidden_states[-2]], axis=-1)  # (B, T, D1 + D2)
        pooled = out_2[0]  # (B, P): the projected text_embeds of the second encoder
        added = {"text_embeds": pooled.astype(dtype), "time_ids": time_ids.astype(dtype)}  # time_ids (B, 6)
        return hidden.astype(dtype), {"added_cond_kwargs": added}


def build_conditioning(components, tokens: list[str], initializer: str) -> Conditioning:
    """Install the placeholder rows in every text encoder of the pipeline; the conditioning of its architecture."""
    slots = text_encoder_slots(components)
    row_layers = [install_placeholders(slot, tokens, initializer) for slot in slots]
    ids = [layer.placeholder_ids for layer in row_layers]
    if len(slots) > 1:
        log.info("placeholder rows in %s: %s", " and ".join(
            f"{s.name} ({layer.rows.shape[1]} wide, ids {i})" for s, layer, i in zip(slots, row_layers, ids)), tokens)
        return SDXLConditioning(slots, row_layers)
    pad = components.tokenizer.pad_token_id if components.use_attention_mask else None
    return TextConditioning(slots, row_layers, pad)
