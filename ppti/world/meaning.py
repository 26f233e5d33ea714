"""The judge's meaning score of a run on the toy world: is the concept in the rendered images, and is what the
prompt asked for there too? tools/evaluate.py adds these columns by itself when `--model` is a toy world.

The concept is what the run's training images share, as the world's judge reads them: the value of the run's
attribute (`--learnable_property object` -> shape, `style` -> texture) that most training images show
(`concept_of`; e.g. "star" for five renderings of stars). Then, for the images rendered from a list of prompt
templates (`{}` standing for the placeholder), with the judge reading each image's shape, colour, texture and
background:

    asked(template)  the world words the template names once `{}` is removed: colours, backgrounds, shapes and
                     textures of ppti/world/render.py, in English (whole words, any case; "grey" for gray) or in
                     Chinese (the tables' words: 红色, 灰色背景's 灰色, 星星, 条纹...). "a photo of a blue {} on a black
                     background" asks {colour: blue, background: black}; "a photo of a {}" and "a {} on the beach"
                     ask nothing. A template naming two values of one attribute, or another value of the concept's
                     own attribute, is refused (no image of this world can show both).
    concept found    the judge reads the concept's value for the attribute (the image's shape is "star").
    followed         concept found, and every attribute asked(template) names has the value it names.

    judge_concept    fraction of all rendered images (every prompt) in which the concept is found.
    judge_edit       fraction of the edit prompts' images (every prompt but the reconstruction prompt, which is
                     the first one, as evaluate renders them) that are followed.
    judge_score      fraction of all rendered images (reconstruction and edits) that are followed: the concept is
                     there and so is everything the prompt asked for -- the score a user wants of a step.

Every prompt renders the same number of images in tools/evaluate.py, so each prompt weighs the same. The world's
prompts name its own words ("a photo of a {} on a black background"); evaluate's built-in prompts ("on the beach")
name none, so with them judge_edit only asks that the concept survive the edit: pass world prompts with --prompts.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .render import BACKGROUNDS, COLOURS, SHAPES, TEXTURES

log = logging.getLogger("ppti")

JUDGE_WEIGHTS = Path("judge") / "model.safetensors"
WORLD_INFO = "world_info.json"
PROPERTY_ATTRIBUTE = {"object": "shape", "style": "texture"}  # --learnable_property -> the judge's head
COLUMNS = ("judge_concept", "judge_edit", "judge_score")

# word -> (attribute, value): English and Chinese names of every world value
_TABLES = {"colour": COLOURS, "background": BACKGROUNDS, "shape": SHAPES, "texture": TEXTURES}
_ENGLISH = {name: (attribute, name) for attribute, table in _TABLES.items() for name in table}
_ENGLISH["grey"] = ("background", "gray")
_CHINESE = {(entry[1] if isinstance(entry, tuple) else entry): (attribute, name)
            for attribute, table in _TABLES.items() for name, entry in table.items()}


def is_world(model: str) -> bool:
    """Whether `model` is a toy-world folder: it holds the judge's weights and world_info.json (the Chinese
    world links the English world's judge; the link counts)."""
    folder = Path(model)
    return (folder / JUDGE_WEIGHTS).is_file() and (folder / WORLD_INFO).is_file()


def asked(template: str) -> dict[str, str]:
    """{attribute: value} the template names besides the placeholder (see the module doc); ValueError when it
    names two values of one attribute."""
    text = template.replace("{}", " ")
    found: dict[str, set] = {}
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _ENGLISH:
            attribute, value = _ENGLISH[word]
            found.setdefault(attribute, set()).add(value)
    for word, (attribute, value) in _CHINESE.items():
        if word in text:
            found.setdefault(attribute, set()).add(value)
    clashes = {a: sorted(v) for a, v in found.items() if len(v) > 1}
    if clashes:
        named = "; ".join(f"{a}: {', '.join(v)}" for a, v in clashes.items())
        raise ValueError(f"prompt {template!r} names several values of one attribute ({named}); an image of the toy "
                         "world shows one of each, so the judge could never find them all")
    return {attribute: values.pop() for attribute, values in found.items()}


def wanted(templates: Sequence[str], attribute: str, value: str) -> dict[str, dict[str, str]]:
    """{template: what its images must show} -- the concept plus asked(template); ValueError for a template that
    asks for another value of the concept's own attribute (or names two values of one attribute)."""
    out = {}
    for template in templates:
        want = asked(template)
        if want.get(attribute, value) != value:
            raise ValueError(f"prompt {template!r} asks for {attribute} {want[attribute]!r}, but the concept is "
                             f"{attribute} {value!r}: no image can show both; leave it out of the prompts")
        out[template] = {**want, attribute: value}
    return out


def as_array(images: Sequence) -> np.ndarray:
    """uint8 [N, H, W, 3] from PIL images or arrays (the judge resizes other sizes to 32x32)."""
    return np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im, dtype=np.uint8)
                     for im in images])


def concept_of(judge, images: Sequence, attribute: str) -> tuple[str, float]:
    """(the value of `attribute` most of the images show, as the judge reads them; the fraction showing it).
    Ties go to the value first in render.py's table."""
    from .judge import predict_names
    from .render import ATTRIBUTES

    if not len(images):
        raise ValueError("no training images to read the concept from")
    counts = Counter(found[attribute] for found in predict_names(judge, as_array(images)))
    value = max(ATTRIBUTES[attribute], key=lambda v: counts[v])  # (max keeps the first of equal counts)
    return value, counts[value] / len(images)


def meaning_scores(judge, concept_value: str, attribute: str, rendered: dict,
                   reconstruction: Optional[str] = None) -> dict[str, float]:
    """{judge_concept, judge_edit, judge_score} (module doc) of `rendered`: {prompt template: [images]}, the
    images PIL or uint8 arrays. The edit prompts are every template but `reconstruction` (default: the first key
    of `rendered`); judge_edit is left out when there is none. ValueError for a template that can never be
    followed (see `wanted`)."""
    from .judge import predict_names

    templates = list(rendered)
    reconstruction = templates[0] if reconstruction is None else reconstruction
    want = wanted(templates, attribute, concept_value)
    concept, followed, edit = [], [], []
    for template in templates:
        images = rendered[template]
        if not len(images):
            continue
        for found in predict_names(judge, as_array(images)):
            ok = all(found[k] == v for k, v in want[template].items())
            concept.append(found[attribute] == concept_value)
            followed.append(ok)
            if template != reconstruction:
                edit.append(ok)
    if not concept:
        raise ValueError("no rendered images to score")
    scores = {"judge_concept": float(np.mean(concept))}
    if edit:
        scores["judge_edit"] = float(np.mean(edit))
    scores["judge_score"] = float(np.mean(followed))
    return scores


class WorldJudge:
    """A judge for ppti.evaluate.evaluate_run: `(step, {prompt template: [images]}) -> meaning_scores(...)`."""

    def __init__(self, judge, attribute: str, concept_value: str, reconstruction: Optional[str] = None):
        self.judge, self.attribute, self.concept_value = judge, attribute, concept_value
        self.reconstruction = reconstruction

    def __call__(self, step, rendered: dict) -> dict[str, float]:
        return meaning_scores(self.judge, self.concept_value, self.attribute, rendered, self.reconstruction)


def world_judge(model: str, learnable_property: str, training_images: Sequence, prompts: Sequence[str]) -> WorldJudge:
    """The WorldJudge of a run on the toy world in `model`: its judge, the concept read from the run's training
    images, `prompts` (reconstruction first) checked to be answerable (ValueError otherwise) before anything
    renders."""
    from .judge import load_judge

    attribute = PROPERTY_ATTRIBUTE[learnable_property]
    judge = load_judge(Path(model) / JUDGE_WEIGHTS.parent)
    value, share = concept_of(judge, training_images, attribute)
    wanted(prompts, attribute, value)
    shown = round(share * len(training_images))
    log.info("toy world: the judge reads %s %r in %d of the %d training images; scoring judge_concept, judge_edit "
             "and judge_score against it", attribute, value, shown, len(training_images))
    if share <= 0.5:
        log.warning("toy world: only %d of the %d training images show %s %r (the most common); the judge columns "
                    "measure that value", shown, len(training_images), attribute, value)
    return WorldJudge(judge, attribute, value, prompts[0] if prompts else None)
