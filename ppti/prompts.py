"""The training prompts: language, templates, and their token ids, chosen once at set-up.

    language  --language, else from the text encoder (CLIP -> en, BERT -> zh, XLM-R -> zh_en; CLIP models named
              *chinese-en* / *chinese* -> zh_en / zh)
    templates --templates FILE, else the built-in object/style templates of that language (both for zh_en)
    length    what the model's inference pipeline pads prompts to (Taiyi 512, AltDiffusion and CLIP 77)
    captions  --caption_source files|both: each image's caption prompt (captions.py)

Every choice is logged with its reason, and every tokenized prompt is checked to hold each placeholder once;
captions longer than the length are reported by file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .captions import Caption, PromptTable, listing, prompt_table
from .config import ConfigError, TrainConfig
from .models import (Components, ModelError, TextSide, detect_language, load_text_side, prompt_max_length,
                     tokenize_fn)
from .templates import parse_template_file, templates_for
from .tokens import (TokenError, add_placeholder_tokens, check_prompts_contain, clone_tokenizer, initializer_ids,
                     placeholder_count_problems, unknown_token_templates)

log = logging.getLogger("ppti")


@dataclass(frozen=True)
class Prompts:
    language: str  # en | zh | zh_en
    templates: list[str]
    ids: np.ndarray  # (num_prompts, max_length) int64: each prompt with the placeholder filled in
    max_length: int
    image_prompts: Optional[list[np.ndarray]] = None  # per image: its rows of ids (None: every image uses all)
    texts: Sequence[str] = ()  # the prompt of each row of ids (tokenized again by SDXL's second tokenizer)


def choose_templates(config: TrainConfig, language: str) -> tuple[list[str], str]:
    """(templates, where they come from): the --templates file when given, else the built-in ones."""
    if not config.templates:
        return templates_for(config.learnable_property, language), f"built-in {config.learnable_property} ({language})"
    templates, problems = parse_template_file(config.templates)
    if problems:  # TrainConfig.problems() reported these before loading; the file changed since
        raise ConfigError("; ".join(problems))
    return templates, f"--templates {config.templates}"


def check_before_loading(config: TrainConfig) -> None:
    """Refuse a placeholder, an initializer or a --num_vectors the model cannot take, from its tokenizer alone
    (before any weight loads), by the rules build_conditioning and build_prompts apply once the models are there."""
    side = load_text_side(config.pretrained_model_name_or_path, config.tokenizer_name)
    if side is None:  # a Hub id: checked once the model is downloaded
        return
    tokenizer = clone_tokenizer(side.tokenizer)  # (the trial tokens must not stay in the tokenizer)
    add_placeholder_tokens(tokenizer, config.placeholder_tokens())
    initializer_ids(tokenizer, config.initializer_token, quiet=True)  # (logged once, when the rows are initialised)
    check_prompt_room(config, side)


def check_prompt_room(config: TrainConfig, side: Optional[TextSide] = None) -> None:
    """Refuse a --num_vectors the prompts cannot hold, from the model's tokenizer alone (before any weight loads):
    each template, with every vector one token, must fit the model's prompt length."""
    if config.caption_source != "templates":  # captions are read with the images: build_prompts checks them
        return
    side = side or load_text_side(config.pretrained_model_name_or_path, config.tokenizer_name)
    if side is None:  # a Hub id: build_prompts checks every prompt once the model is downloaded
        return
    language, _ = detect_language(config.language, side, config.pretrained_model_name_or_path)
    templates, _ = choose_templates(config, language)
    max_length, _ = prompt_max_length(side)
    used = {t: len(side.tokenizer(t.replace("{}", ""))["input_ids"]) for t in templates}  # with the special tokens
    longest = max(used, key=used.get)
    room = max_length - used[longest]
    if config.num_vectors > room:
        raise ConfigError(
            f"--num_vectors {config.num_vectors}: the placeholders cannot fit the prompt length; at most {room} with "
            f"this model ({max_length}-token prompts, of which the longest template {longest!r} takes "
            f"{used[longest]})")


def build_prompts(config: TrainConfig, components: Components, placeholder_ids: list[int],
                  images: Sequence[Path] = (), captions: Optional[Sequence[Caption]] = None) -> Prompts:
    """Language, templates and tokenized prompts for this model (with captions: per image); raises TokenError if a
    prompt lost the placeholder."""
    tokenizer = components.tokenizer
    language, why = detect_language(config.language, components, config.pretrained_model_name_or_path)
    log.info("prompt language: %s (%s)", language, why)
    templates, source = choose_templates(config, language)
    max_length, length_why = prompt_max_length(components)
    if config.caption_source == "files":
        log.info("prompts: the captions (the templates are not used); %d tokens per prompt (%s)", max_length,
                 length_why)
    else:
        log.info("prompt templates: %d from %s, e.g. %r; %d tokens per prompt (%s)", len(templates), source,
                 templates[0].replace("{}", config.placeholder_text()), max_length, length_why)
    table = prompt_table(config, templates, images, captions)
    ids = np.asarray([tokenize_fn(tokenizer, max_length)(text) for text in table.texts], dtype=np.int64)
    if captions is None:
        check_prompts_contain(ids, placeholder_ids, templates, tokenizer)
    else:
        log.info("prompts: %d distinct (--caption_source %s), e.g. %r", len(table.texts), config.caption_source,
                 table.texts[-1][:200])
        check_caption_prompts(table, ids, placeholder_ids, tokenizer, max_length)
    unknown = unknown_token_templates(ids, table.sources, tokenizer)
    if unknown:
        log.warning("%d prompt(s) hold characters the tokenizer does not know (they train as %s), e.g. %s",
                    len(unknown), tokenizer.unk_token, unknown[0])
    return Prompts(language=language, templates=templates, ids=ids, max_length=max_length,
                   image_prompts=table.image_prompts, texts=list(table.texts))


def check_caption_prompts(table: PromptTable, ids: np.ndarray, placeholder_ids: list[int], tokenizer,
                          max_length: int) -> None:
    """Warn about prompts longer than the text encoder reads (they are truncated), naming their files; refuse
    prompts that do not hold every placeholder vector once as a single token -- naming every such file."""
    # with special tokens, not truncated (verbose=False: no tokenizer warning of its own per long prompt)
    lengths = [len(tokenizer(text, verbose=False)["input_ids"]) for text in table.texts]
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        log.warning("%d caption prompt(s) are longer than the text encoder's %d tokens and are truncated: %s",
                    len(too_long), max_length, listing([f"{table.sources[i]}: {lengths[i]} tokens" for i in too_long]))
    bad = placeholder_count_problems(ids, placeholder_ids)
    if bad:
        cut = [table.sources[i] for i, counts in bad if i in too_long and 0 in counts]
        other = [f"{table.sources[i]} (counts {counts}: {table.texts[i]!r})" for i, counts in bad
                 if not (i in too_long and 0 in counts)]
        reasons = []
        if cut:
            reasons.append(f"the placeholder comes after token {max_length} and would be cut off in {listing(cut)}; "
                           "shorten the caption or write {} earlier")
        if other:
            reasons.append(f"these prompts do not hold each placeholder vector exactly once as a single token: "
                           f"{listing(other)}")
        raise TokenError("--caption_source: " + "; ".join(reasons))


def ids_per_encoder(config: TrainConfig, prompts: Prompts, slots: list[tuple[Any, list[int]]]) -> np.ndarray:
    """The prompt ids the conditioning reads: (num_prompts, T) for one text encoder, (num_prompts, E, T) for E
    encoders, each row tokenized by that encoder's own tokenizer (`slots`: (tokenizer, placeholder ids) per
    encoder; the first is `prompts.ids`). SDXL concatenates the encoders' states per token, so both tokenizers must
    pad to the same length, as they do in SDXL (77)."""
    if len(slots) == 1:
        return prompts.ids
    rows = [prompts.ids]
    for tokenizer, placeholder_ids in slots[1:]:
        if tokenizer.model_max_length != prompts.max_length:
            raise ModelError(f"--pretrained_model_name_or_path {config.pretrained_model_name_or_path}: the second "
                             f"tokenizer pads prompts to {tokenizer.model_max_length} tokens, the first to "
                             f"{prompts.max_length}; SDXL needs both the same (77)")
        tokenize = tokenize_fn(tokenizer, prompts.max_length)
        ids = np.asarray([tokenize(text) for text in prompts.texts], dtype=np.int64)
        check_prompts_contain(ids, placeholder_ids, prompts.texts, tokenizer)
        rows.append(ids)
    return np.stack(rows, axis=1)
