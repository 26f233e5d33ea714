"""The training prompts: language, templates, and their token ids, chosen once at set-up.

    language  --language, else from the text encoder (CLIP -> en, BERT -> zh, XLM-R -> zh_en; CLIP models named
              *chinese-en* / *chinese* -> zh_en / zh)
    templates --templates FILE, else the built-in object/style templates of that language (both for zh_en)
    length    what the model's inference pipeline pads prompts to (Taiyi 512, AltDiffusion and CLIP 77)

Every choice is logged with its reason, and every tokenized prompt is checked to hold each placeholder once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .config import ConfigError, TrainConfig
from .data import tokenize_templates
from .models import Components, detect_language, prompt_max_length, tokenize_fn
from .templates import parse_template_file, templates_for
from .tokens import check_prompts_contain, unknown_token_templates

log = logging.getLogger("ppti")


@dataclass(frozen=True)
class Prompts:
    language: str  # en | zh | zh_en
    templates: list[str]
    ids: np.ndarray  # (num_templates, max_length) int64: each template with the placeholder filled in
    max_length: int


def choose_templates(config: TrainConfig, language: str) -> tuple[list[str], str]:
    """(templates, where they come from): the --templates file when given, else the built-in ones."""
    if not config.templates:
        return templates_for(config.learnable_property, language), f"built-in {config.learnable_property} ({language})"
    templates, problems = parse_template_file(config.templates)
    if problems:  # TrainConfig.problems() reported these before loading; the file changed since
        raise ConfigError("; ".join(problems))
    return templates, f"--templates {config.templates}"


def build_prompts(config: TrainConfig, components: Components, placeholder_ids: list[int]) -> Prompts:
    """Language, templates and tokenized prompts for this model; raises TokenError if a prompt lost the
    placeholder."""
    tokenizer = components.tokenizer
    language, why = detect_language(config.language, components, config.pretrained_model_name_or_path)
    log.info("prompt language: %s (%s)", language, why)
    templates, source = choose_templates(config, language)
    max_length, length_why = prompt_max_length(components)
    log.info("prompt templates: %d from %s, e.g. %r; %d tokens per prompt (%s)",
             len(templates), source, templates[0].format(config.placeholder_text()), max_length, length_why)
    ids = tokenize_templates(templates, config.placeholder_text(), tokenize_fn(tokenizer, max_length))
    check_prompts_contain(ids, placeholder_ids, templates, tokenizer)
    unknown = unknown_token_templates(ids, templates, tokenizer)
    if unknown:
        log.warning("%d template(s) hold characters the tokenizer does not know (they train as %s), e.g. %r",
                    len(unknown), tokenizer.unk_token, unknown[0])
    return Prompts(language=language, templates=templates, ids=ids, max_length=max_length)
