"""CLIP similarity, the two scores of the textual-inversion paper (Gal et al. 2022, section 5):

    image similarity  mean cosine similarity, in CLIP image space, between the images generated from the
                      reconstruction prompt and the training images (every pair): does the word show the concept?
    text similarity   mean cosine similarity between each image generated from an edit prompt and that prompt's
                      CLIP text embedding with the placeholder removed: does the rest of the prompt still count?

Any CLIP that ppdiffusers or paddlenlp loads: `CLIPModel` + `CLIPProcessor` (ppdiffusers.transformers, English),
or paddlenlp's `ChineseCLIPModel` + `ChineseCLIPProcessor` (Chinese prompts). The folder's config.json decides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_CLIP = {"en": "openai/clip-vit-base-patch32", "zh": "OFA-Sys/chinese-clip-vit-base-patch16",
                "zh_en": "OFA-Sys/chinese-clip-vit-base-patch16"}
KINDS = ("CLIPModel", "ChineseCLIPModel")


class EvaluationError(ValueError):
    """A problem with tools/evaluate.py's arguments or the run it scores; the message says what to do."""


def clip_kind(name: str) -> str:
    """CLIPModel or ChineseCLIPModel, from a local folder's config.json (a Hub id: from its name)."""
    flag = f"--clip_model {name}"
    path = Path(name)
    if not path.exists():
        if name.count("/") != 1 or name.startswith((".", "/", "~")):
            raise EvaluationError(f"{flag}: no such directory; give a CLIP folder (e.g. made by "
                                  "tools/make_tiny_model.py --arch clip) or a Hub id such as openai/clip-vit-base-patch32")
        return "ChineseCLIPModel" if "chinese" in name.lower() else "CLIPModel"
    config = path / "config.json"
    if not config.is_file():
        what = " (it is a Stable Diffusion pipeline folder)" if (path / "model_index.json").is_file() else ""
        raise EvaluationError(f"{flag}: no config.json{what}; give a CLIP model folder with a config.json naming "
                              f"{' or '.join(KINDS)}, e.g. openai/clip-vit-base-patch32")
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or ["?"]
    except (ValueError, OSError) as exc:
        raise EvaluationError(f"{flag}: cannot read {config} ({exc})") from None
    if architectures[0] not in KINDS:
        raise EvaluationError(f"{flag}: {config} describes a {architectures[0]}, not a CLIP with text and vision "
                              f"towers ({' or '.join(KINDS)}); give e.g. openai/clip-vit-base-patch32 or "
                              "OFA-Sys/chinese-clip-vit-base-patch16")
    return architectures[0]


class ClipScorer:
    """A CLIP model and its processor; features are L2-normalised numpy arrays."""

    def __init__(self, name: str):
        kind = clip_kind(name)
        if kind == "CLIPModel":
            from ppdiffusers.transformers import CLIPModel as Model, CLIPProcessor as Processor
        else:
            from paddlenlp.transformers import ChineseCLIPModel as Model, ChineseCLIPProcessor as Processor
        from ..models import record_loading_info

        try:
            with record_loading_info() as records:
                self.model = Model.from_pretrained(name)
            self.processor = Processor.from_pretrained(name)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line naming the flag
            raise EvaluationError(f"--clip_model {name}: cannot load a {kind} with its processor "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        missing = [key for _, keys, _ in records for key in keys]
        if missing:
            raise EvaluationError(f"--clip_model {name}: {len(missing)} weight(s) missing from the files (e.g. "
                                  f"{missing[0]}); the scores would come from random weights. Re-download the model")
        self.model.eval()
        self.name, self.kind = name, kind

    def image_features(self, images: Sequence) -> np.ndarray:
        """(N, P) for N PIL images."""
        import paddle

        pixels = self.processor(images=list(images), return_tensors="pd")["pixel_values"]
        with paddle.no_grad():
            dtype = self.model.parameters()[0].dtype  # (paddlenlp's ChineseCLIPModel has no .dtype)
            features = self.model.get_image_features(pixel_values=pixels.astype(dtype))
        return _normalise(features.astype("float32").numpy())

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        """(N, P) for N texts (truncated to the model's length)."""
        import paddle

        inputs = self.processor(text=list(texts), padding=True, truncation=True, return_tensors="pd")
        keys = ("input_ids", "attention_mask", "token_type_ids") if self.kind == "ChineseCLIPModel" else ("input_ids",)
        with paddle.no_grad():
            features = self.model.get_text_features(**{k: inputs[k] for k in keys if k in inputs})
        return _normalise(features.astype("float32").numpy())


def _normalise(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity over every pair of rows of normalised a (N, P) and b (M, P)."""
    return float((a @ b.T).mean())
