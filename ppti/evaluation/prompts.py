"""The prompts tools/evaluate.py renders: one reconstruction prompt and several edit prompts, `{}` standing for
the placeholder. Built in per language and object/style (written as a speaker of the language would, like
ppti.templates), or read from --prompts FILE (one per line, the first is the reconstruction prompt)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..templates import LANGUAGE_PARTS, parse_template_file
from .clip import EvaluationError

_BUILTIN = {
    ("object", "en"): ["a photo of a {}", "a photo of a {} on the beach", "a {} in the snow",
                       "an oil painting of a {}", "a {} on a wooden table next to a cup"],
    ("style", "en"): ["a painting in the style of {}", "a cat in the style of {}",
                      "a city street at night in the style of {}", "a portrait of a woman in the style of {}",
                      "a mountain landscape in the style of {}"],
    ("object", "zh"): ["一张{}的照片", "海边沙滩上的{}", "雪地里的{}", "一幅{}的油画", "木桌上的{}，旁边有一个杯子"],
    ("style", "zh"): ["一幅{}风格的画", "一只{}风格的猫", "{}风格的城市夜景", "{}风格的女孩肖像", "{}风格的山水画"],
}


@dataclass(frozen=True)
class EvaluationPrompts:
    reconstruction: str
    edits: list[str]


def builtin_prompts(learnable_property: str, language: str) -> EvaluationPrompts:
    """zh_en models read both languages: the English reconstruction prompt, English and Chinese edits."""
    parts = [_BUILTIN[(learnable_property, part)] for part in LANGUAGE_PARTS[language]]
    return EvaluationPrompts(parts[0][0], [p for part in parts for p in part[1:]])


def read_prompts_file(path: str) -> EvaluationPrompts:
    prompts, problems = parse_template_file(path)
    if problems:
        raise EvaluationError("; ".join(p.replace("--templates", "--prompts", 1) for p in problems))
    if len(prompts) < 2:
        raise EvaluationError(f"--prompts {path}: give a reconstruction prompt on the first line and at least one "
                              "edit prompt after it, each with {} for the placeholder")
    return EvaluationPrompts(prompts[0], prompts[1:])


def without_placeholder(template: str) -> str:
    """The prompt the text similarity compares with: the placeholder removed, spaces tidied."""
    return re.sub(r"\s+", " ", template.replace("{}", " ")).strip().replace(" ,", ",")
