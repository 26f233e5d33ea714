"""Per-image captions (`--caption_source files|both`): where they are read from and how they become prompts.

Reading  IMAGE.txt beside each image (`--caption_extension`), else the `text` of the metadata.jsonl line whose
         `file_name` is the image (the Hugging Face imagefolder convention); a caption file wins over a
         metadata.jsonl line. UTF-8 (a byte-order mark is accepted); line breaks and runs of spaces become one space.
Prompt   `--caption_template` (default `{caption}`: the caption alone) with the caption in place of `{caption}`;
         then the placeholder goes where the text writes `{}`, else where it already writes the placeholder
         token, else in front: "<tok>, caption" ("<tok>，caption" before Chinese text). So write `{}` in the template or in the captions, not in both.
         With --num_vectors n, "the placeholder" is all n vectors ("<tok> <tok>_1 ...").
Mixing   `files`: each image trains on its caption prompt. `both`: on the templates and its caption prompt, drawn
         uniformly; a template may write `{caption}` (WebUI's [filewords]) and then gets the image's caption.
Checks   before any model loads: every image has a caption (all missing ones listed), every caption file is UTF-8,
         no caption prompt holds the placeholder twice. With the tokenizer (prompts.py): the placeholder must
         survive truncation to the text encoder's length, and longer captions are reported by file.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .data import DataError
from .templates import CAPTION

log = logging.getLogger("ppti")

METADATA_FILE = "metadata.jsonl"
LISTED = 10  # problems named one by one in a message; the rest are counted
CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class Caption:
    text: str
    source: str  # where it was read: "toy-1.txt" or "metadata.jsonl line 3"


@dataclass(frozen=True)
class PromptTable:
    """Every distinct training prompt once, and which of them each image draws from."""

    texts: list[str]  # placeholder filled in
    sources: list[str]  # per text: where it comes from (template / image and caption file), for messages
    image_prompts: Optional[list[np.ndarray]]  # per image: indices into texts; None: every image uses all


def listing(items: Sequence[str]) -> str:
    """'a, b, c' or 'a, b, ... and 7 more'."""
    shown = ", ".join(items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------
def clean(text: str) -> str:
    return " ".join(text.split())


def read_caption_file(path: Path) -> tuple[Optional[Caption], Optional[str]]:
    """(caption, problem): the caption of one IMAGE.txt file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
    except OSError as exc:
        return None, f"{path}: cannot read ({exc.strerror})"
    return (Caption(clean(text), path.name), None) if clean(text) else (None, None)


def read_metadata(data_dir: Path) -> tuple[dict[str, Caption], list[str]]:
    """(file_name -> caption, problems) of data_dir/metadata.jsonl ({} when there is none)."""
    path = data_dir / METADATA_FILE
    if not path.is_file():
        return {}, []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        return {}, [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"]
    captions, problems = {}, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path} line {number}: not JSON ({exc.msg})")
            continue
        if not (isinstance(entry, dict) and isinstance(entry.get("file_name"), str)
                and isinstance(entry.get("text"), str)):
            problems.append(f'{path} line {number}: needs "file_name" and "text" strings, e.g. '
                            '{"file_name": "0001.png", "text": "a {} on a red chair"}')
            continue
        if clean(entry["text"]):
            captions[Path(entry["file_name"]).as_posix()] = Caption(clean(entry["text"]),
                                                                    f"{METADATA_FILE} line {number}")
    return captions, problems


def read_captions(images: Sequence[Path], data_dir: Path, extension: str) -> tuple[list[Optional[Caption]],
                                                                                      list[str]]:
    """(caption or None per image, problems): caption files first, then metadata.jsonl."""
    metadata, problems = read_metadata(data_dir)
    captions = []
    for image in images:
        caption, problem = None, None
        if image.with_suffix(extension).is_file():
            caption, problem = read_caption_file(image.with_suffix(extension))
        if problem:
            problems.append(problem)
        captions.append(caption or metadata.get(image.relative_to(data_dir).as_posix()))
    return captions, problems


# ------------------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------------------
def place_placeholder(text: str, token: str, placeholder_text: str) -> str:
    """The placeholder where `text` writes {}, else where it writes the token, else in front ("<tok>, text"; a
    full-width comma before Chinese text: "<tok>，text")."""
    if "{}" in text:
        return text.replace("{}", placeholder_text)
    if placeholder_text in text:
        return text
    if token in text:
        return text.replace(token, placeholder_text)
    return placeholder_text + ("，" if CJK.search(text) else ", ") + text


def caption_prompt(caption: str, caption_template: Optional[str], token: str, placeholder_text: str) -> str:
    return place_placeholder((caption_template or CAPTION).replace(CAPTION, caption), token, placeholder_text)


def placeholder_count(prompt: str, token: str) -> int:
    """How often the placeholder (its first vector `token`, not `token_1` ...) occurs in a prompt."""
    return len(re.findall(re.escape(token) + r"(?!_\d)", prompt))


def load_captions(config, images: Sequence[Path]) -> Optional[list[Caption]]:
    """The caption of every image (None with --caption_source templates); raises DataError naming every image
    without one, every unreadable file and every caption prompt holding the placeholder twice."""
    if config.caption_source == "templates":
        return None
    data_dir = Path(config.train_data_dir)
    captions, problems = read_captions(images, data_dir, config.caption_extension)
    missing = [image.name for image, caption in zip(images, captions) if caption is None]
    if missing:
        problems.append(
            f"--caption_source {config.caption_source}: {len(missing)} of {len(images)} image(s) have no caption "
            f"(no non-empty {config.caption_extension} file of the same name beside it, no {METADATA_FILE} line): "
            f"{listing(missing)}. "
            "Write them, or use --caption_source templates")
    twice = [f"{image.name} ({caption.source})" for image, caption in zip(images, captions) if caption
             and placeholder_count(caption_prompt(caption.text, config.caption_template, config.placeholder_token,
                                                  config.placeholder_text()), config.placeholder_token) > 1]
    if twice:
        problems.append(f"caption prompts holding the placeholder more than once: {listing(twice)}; write {{}} "
                        "(or the placeholder) in the caption or in --caption_template, not in both")
    if problems:
        raise DataError("captions of --train_data_dir " + str(data_dir) + ":\n  - " + "\n  - ".join(problems))
    from_files = sum(c.source.endswith(config.caption_extension) for c in captions)
    log.info("captions: %d from %s files, %d from %s", from_files, config.caption_extension,
             len(captions) - from_files, METADATA_FILE)
    return captions


def prompt_table(config, templates: Sequence[str], images: Sequence[Path],
                 captions: Optional[Sequence[Caption]]) -> PromptTable:
    """The prompts of --caption_source: the templates (every image draws from all), each image's caption prompt
    (files), or per image the templates -- `{caption}` filled with its caption -- and its caption prompt (both)."""
    token, placeholder = config.placeholder_token, config.placeholder_text()
    if captions is None:
        return PromptTable([t.replace("{}", placeholder) for t in templates],
                           [f"template {t!r}" for t in templates], None)
    index: dict[str, int] = {}
    texts, sources, image_prompts = [], [], []
    for image, caption in zip(images, captions):
        where = f"{image.name} (caption from {caption.source})"
        own = [(caption_prompt(caption.text, config.caption_template, token, placeholder), where)]
        if config.caption_source == "both":
            own = [(t.replace(CAPTION, caption.text).replace("{}", placeholder),
                    f"template {t!r} with the caption of {where}" if CAPTION in t else f"template {t!r}")
                   for t in templates] + own
        for text, source in own:
            if text not in index:
                index[text] = len(texts)
                texts.append(text)
                sources.append(source)
        image_prompts.append(np.asarray([index[text] for text, _ in own], dtype=np.int64))
    return PromptTable(texts, sources, image_prompts)
