"""Concept recovery on the toy world: does textual inversion teach the model a concept it can already draw?

For a concept (object = one shape, style = one texture) whose true word the world model knows, ppti trains a
placeholder from ~5 renderings, initialised from a neutral word ("object" / "pattern"), and the judge scores
fixed-seed samples of:
- before: the prompts with the placeholder's initial embedding (the initializer word, once per vector);
- after: the prompts with the trained embedding (loaded with ppdiffusers `load_textual_inversion`);
- true_word: the prompts with the concept's own word (the ceiling);
- edit: prompts that also ask for a colour or a background, scored as "what was asked is there and the concept is
  kept";
- transfer (styles): the style applied to each of the six shapes, scored as "that shape and the style".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .render import ATTRIBUTES, NEUTRAL_OBJECT, NEUTRAL_STYLE, Attributes, render, sample_attributes

SAMPLE_SEED = 1000  # sample i of a prompt list uses seed SAMPLE_SEED + i
EDIT_COLOURS = ("blue", "red", "yellow", "green")
CONCEPT_SAMPLES = 12  # concept samples per evaluate() repeat
SAMPLES_PER_EDIT = 2  # per edit (and per shape, for a style's transfer) per repeat


@dataclass(frozen=True)
class Concept:
    word: str  # the true word: a shape (object) or a texture (style)
    kind: str  # "object" | "style"

    @property
    def attribute(self) -> str:
        return "shape" if self.kind == "object" else "texture"

    @property
    def initializer(self) -> str:
        return NEUTRAL_OBJECT if self.kind == "object" else NEUTRAL_STYLE

    @property
    def token(self) -> str:
        return f"<{self.word}-concept>"

    @property
    def chance(self) -> float:
        return 1.0 / len(ATTRIBUTES[self.attribute])


CONCEPTS = (Concept("star", "object"), Concept("heart", "object"), Concept("striped", "style"),
            Concept("outlined", "style"))


def concept_attributes(concept: Concept, count: int = 5, seed: int = 0) -> list[Attributes]:
    """What `count` training images of the concept show, as a user's photos should: the concept the same in all,
    everything else as varied as the count allows (every background, no colour or shape twice in six). A style
    keeps its texture. An object is one thing photographed several times, so its shape and its solid look stay.
    Drawn independently, a star's five images were three outlined and two striped ones, on three black
    backgrounds, and its placeholder learned the thin lines and the black more than the shape."""
    import random

    rng = random.Random(f"{concept.word}-{seed}")
    kept = {concept.attribute: concept.word, **({"texture": "solid"} if concept.kind == "object" else {})}
    varied = {}
    for name, values in ATTRIBUTES.items():
        if name not in kept:
            order = rng.sample(values, len(values))
            varied[name] = [order[i % len(order)] for i in range(count)]
    return [sample_attributes(rng, **kept, **{name: values[i] for name, values in varied.items()})
            for i in range(count)]


def write_concept_images(concept: Concept, folder: Path, count: int = 5, seed: int = 0) -> Path:
    """The concept's training images (`concept_attributes`) as PNGs in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, attrs in enumerate(concept_attributes(concept, count, seed)):
        render(attrs).save(folder / f"{concept.word}-{i}.png")
    return folder


def train_concept(world: Path, concept: Concept, data_dir: Path, out_dir: Path, *, seed: int, max_train_steps: int,
                  learning_rate: float, train_batch_size: int, save_steps: int, num_vectors: int = 1,
                  extra: Sequence[str] = ()) -> None:
    """ppti's own entry point, in this process: a placeholder for `concept` trained from the renderings in
    `data_dir` at 32 px, initialised from the neutral word, constant learning rate, no logging; `extra`: more
    trainer flags. SystemExit when training fails (the benchmarks' runs)."""
    from ..cli import main as ppti_main

    code = ppti_main([
        "--pretrained_model_name_or_path", str(world), "--train_data_dir", str(data_dir), "--output_dir", str(out_dir),
        "--placeholder_token", concept.token, "--initializer_token", concept.initializer, "--learnable_property",
        concept.kind, "--num_vectors", str(num_vectors), "--resolution", "32", "--train_batch_size",
        str(train_batch_size), "--max_train_steps", str(max_train_steps), "--learning_rate", str(learning_rate),
        "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--repeats", "20", "--seed", str(seed),
        "--report_to", "none", "--save_steps", str(save_steps), *extra])
    if code != 0:
        raise SystemExit(f"training {concept.token} (seed {seed}) failed (exit code {code})")


def concept_prompts(concept: Concept, count: int = CONCEPT_SAMPLES) -> list[tuple[str, dict]]:
    """(prompt with "{}" for the concept, what the judge must find) for concept accuracy."""
    template = "a photo of a {}" if concept.kind == "object" else "a painting in the style of {}"
    return [(template, {concept.attribute: concept.word})] * count


def edit_prompts(concept: Concept, per_edit: int = SAMPLES_PER_EDIT) -> list[tuple[str, dict]]:
    """Edits: a colour or a background asked for along with the concept, which must be kept."""
    keep = {concept.attribute: concept.word}
    if concept.kind == "object":
        edits = [(f"a photo of a {c} {{}}", {"colour": c}) for c in EDIT_COLOURS]
        edits += [(f"a photo of a {{}} on a {b} background", {"background": b}) for b in ATTRIBUTES["background"]]
    else:
        edits = [(f"a photo of a {c} {NEUTRAL_OBJECT} in the style of {{}}", {"colour": c}) for c in EDIT_COLOURS]
        edits += [(f"a photo of a {NEUTRAL_OBJECT} on a {b} background in the style of {{}}", {"background": b})
                  for b in ATTRIBUTES["background"]]
    return [(p, {**want, **keep}) for p, want in edits for _ in range(per_edit)]


def transfer_prompts(concept: Concept, per_shape: int = SAMPLES_PER_EDIT) -> list[tuple[str, dict]]:
    """A style concept applied to each shape: the shape asked for and the style must both be found."""
    return [(f"a photo of a {s} in the style of {{}}", {"shape": s, concept.attribute: concept.word})
            for s in ATTRIBUTES["shape"] for _ in range(per_shape)]


def fill(prompts: Sequence[tuple[str, dict]], words: str) -> list[str]:
    return [p.format(words) for p, _ in prompts]


def score(judge, images: np.ndarray, prompts: Sequence[tuple[str, dict]]) -> float:
    """Fraction of images in which the judge finds everything the prompt asked for."""
    from .judge import predict_names

    found = predict_names(judge, images)
    return float(np.mean([all(f[k] == v for k, v in want.items()) for f, (_, want) in zip(found, prompts)]))


def evaluate(pipe, judge, concept: Concept, words: str, edits: bool, repeats: int = 1) -> dict[str, float]:
    """Concept accuracy of the pipeline when the concept is written as `words`; with `edits`, also edit accuracy
    and, for styles, transfer accuracy (the style on each shape). `repeats` multiplies every group's samples
    (CONCEPT_SAMPLES; SAMPLES_PER_EDIT per edit or shape): one sample moves a 12-sample accuracy by 0.08."""
    from .shipped import sample

    groups = {"concept": concept_prompts(concept, CONCEPT_SAMPLES * repeats)}
    if edits:
        groups["edit"] = edit_prompts(concept, SAMPLES_PER_EDIT * repeats)
        if concept.kind == "style":
            groups["transfer"] = transfer_prompts(concept, SAMPLES_PER_EDIT * repeats)
    prompts = list(itertools.chain(*groups.values()))
    images = sample(pipe, fill(prompts, words), [SAMPLE_SEED + i for i in range(len(prompts))])
    result, start = {}, 0
    for name, group in groups.items():
        result[name] = score(judge, images[start:start + len(group)], group)
        start += len(group)
    return result
