"""The frozen evaluation batch: the same latents, noise, timesteps and prompts at every evaluation of a run.

Its examples are those the example stream (data.ExampleStream) defines for `FROZEN_EPOCH`, an epoch number no
training run reaches. Every field of an example is a pure function of (seed, epoch, position), so the batch
depends only on the seed, the images and the prompt templates: it is the same at every evaluation, after a resume,
on every rank and for any number of cards or batch size. Being made by the stream itself, it carries every field
the training loss reads. Its loss is therefore comparable from step to step (only the embedding changed) and is
much smoother than the training loss, which sees new examples every step (the DVAR observation).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import paddle

FROZEN_EPOCH = 2**40  # training would need 2**40 epochs to reach these examples
CHUNK = 4  # examples per forward pass: a fixed size, so the loss does not depend on the training batch size


class FrozenBatch:
    """`size` examples drawn once from the stream; `loss(loss_fn)` is their mean denoising loss."""

    def __init__(self, stream, size: int):
        from paddle.io.dataloader.collate import default_collate_fn

        per_epoch = len(stream.order(FROZEN_EPOCH))  # with --buckets, without each bucket's incomplete batch
        examples = [stream.example(FROZEN_EPOCH + i // per_epoch, i % per_epoch) for i in range(size)]
        by_size: dict[tuple, list] = {}  # with --buckets a chunk holds one bucket's examples (one latent size)
        for example in examples:
            by_size.setdefault(example["noise"].shape, []).append(example)
        self.size = size
        self.chunks = [default_collate_fn(group[i:i + CHUNK]) for group in by_size.values()
                       for i in range(0, len(group), CHUNK)]
        self.timesteps = np.concatenate([np.asarray(c["timestep"]) for c in self.chunks])  # (size,)

    def loss(self, loss_fn: Callable[[dict], paddle.Tensor]) -> float:
        """The mean over every example of `loss_fn(chunk)` (the batch-mean loss of a chunk), without gradients."""
        total = 0.0
        with paddle.no_grad():
            for chunk in self.chunks:
                batch = {k: paddle.to_tensor(v) for k, v in chunk.items()}
                total += float(loss_fn(batch)) * len(chunk["timestep"])
        return total / self.size
