"""The judge of the toy world: a small Paddle CNN that reads a 32x32 image's shape, colour, texture and background.

Trained on the renderer's ground truth (clean renderings and their VAE reconstructions, so that it reads the world
model's decoded samples as well as drawings) and shipped with the world as `judge/model.safetensors`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import numpy as np

from .render import ATTRIBUTES, Attributes

HEADS = tuple(ATTRIBUTES)  # shape, colour, texture, background
WEIGHTS_FILE = "model.safetensors"


def _layers():
    import paddle.nn as nn

    class Judge(nn.Layer):
        """3 conv blocks (32x32 -> 4x4) + one linear layer per attribute."""

        def __init__(self):
            super().__init__()
            blocks = []
            for c_in, c_out in ((3, 16), (16, 32), (32, 32)):
                blocks += [nn.Conv2D(c_in, c_out, 3, padding=1), nn.BatchNorm2D(c_out), nn.ReLU(), nn.MaxPool2D(2)]
            self.features = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(32 * 16, 128), nn.ReLU())
            self.heads = nn.LayerList([nn.Linear(128, len(ATTRIBUTES[h])) for h in HEADS])

        def forward(self, x):  # x: float [B, 3, 32, 32] in [-1, 1]
            h = self.features(x)
            return [head(h) for head in self.heads]

    return Judge()


def to_tensor(images: np.ndarray):
    """uint8 [B, 32, 32, 3] -> float32 paddle [B, 3, 32, 32] in [-1, 1]."""
    import paddle

    return paddle.to_tensor(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)


def labels(attrs: Sequence[Attributes]) -> dict[str, np.ndarray]:
    return {h: np.array([a.label(h) for a in attrs], dtype=np.int64) for h in HEADS}


def train_judge(images: np.ndarray, attrs: Sequence[Attributes], steps: int, seed: int, batch_size: int = 64,
                progress=None):
    """A judge trained for `steps` Adam steps on (images, attrs)."""
    import paddle
    import paddle.nn.functional as F

    paddle.seed(seed)
    rng = random.Random(seed)
    judge = _layers()
    truth = labels(attrs)
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(3e-3, steps)
    optimizer = paddle.optimizer.Adam(learning_rate=schedule, parameters=judge.parameters())
    judge.train()
    for _ in range(steps):
        idx = np.array(rng.sample(range(len(images)), batch_size))
        logits = judge(to_tensor(images[idx]))
        loss = sum(F.cross_entropy(lg, paddle.to_tensor(truth[h][idx])) for lg, h in zip(logits, HEADS))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        if progress is not None:
            progress(float(loss))
    judge.eval()
    return judge


def predict(judge, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Class index per attribute for uint8 [B, 32, 32, 3] images (other sizes are resized to 32x32)."""
    import paddle

    if images.shape[1:3] != (32, 32):
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BOX)) for im in images])
    out: dict[str, list] = {h: [] for h in HEADS}
    with paddle.no_grad():
        for start in range(0, len(images), batch_size):
            for h, lg in zip(HEADS, judge(to_tensor(images[start:start + batch_size]))):
                out[h].append(lg.argmax(-1).numpy())
    return {h: np.concatenate(v) for h, v in out.items()}


def predict_names(judge, images: np.ndarray) -> list[dict[str, str]]:
    """[{"shape": "star", "colour": "red", ...}] per image."""
    pred = predict(judge, images)
    return [{h: ATTRIBUTES[h][int(pred[h][i])] for h in HEADS} for i in range(len(images))]


def accuracy(judge, images: np.ndarray, attrs: Sequence[Attributes]) -> dict[str, float]:
    pred, truth = predict(judge, images), labels(attrs)
    return {h: float((pred[h] == truth[h]).mean()) for h in HEADS}


def save_judge(judge, folder: Path) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.numpy() for k, v in judge.state_dict().items()}, str(folder / WEIGHTS_FILE))


def load_judge(folder: Path):
    """The judge saved in `folder` (eval mode)."""
    import paddle
    from safetensors.numpy import load_file

    judge = _layers()
    state = load_file(str(Path(folder) / WEIGHTS_FILE))
    judge.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    judge.eval()
    return judge
