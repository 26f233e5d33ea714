"""Prompt templates for object and style concepts; `{}` is where the placeholder goes.

English templates are those of the textual-inversion paper (and the diffusers/ppdiffusers examples). The Chinese
ones are written as a Chinese speaker would caption such images, not translated word for word: the object sits in
the noun slot after its modifiers ("照片里是一个很酷的{}"), the style before 风格/画风 ("一幅{}风格的画"), and
measure words match the thing counted (一张照片, 一幅画). `--templates FILE` replaces the built-in lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

OBJECT_EN = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
]

STYLE_EN = [
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}", "a large painting in the style of {}",
]

# Objects: 张 counts photos, 个 the (unknown) object; adjectives describe the object inside the photo.
OBJECT_ZH = [
    "一张{}的照片", "{}的照片", "这是{}的照片", "一张{}的渲染图", "{}的效果图", "一张裁剪过的{}照片",
    "一张{}的特写照片", "{}的特写", "我的{}的照片", "一张拍得很好的{}照片", "一张光线昏暗的{}照片",
    "一张明亮的{}照片", "一张只有一个{}的照片", "照片里的{}很干净", "照片里的{}有点脏",
    "照片里是一个很酷的{}", "照片里是一个漂亮的{}", "照片里是一个可爱的{}", "照片里是一个小小的{}",
    "照片里是一个很大的{}", "照片里是一个奇怪的{}",
]

# Styles: the style name qualifies 风格/画风, which qualifies the work (一幅画, 一张图片).
STYLE_ZH = [
    "一幅{}风格的画", "{}风格的画作", "一幅{}风格的绘画作品", "{}风格的渲染图", "一张{}风格的图片",
    "一幅裁剪过的{}风格画作", "一幅{}风格的特写画", "一幅画面干净的{}风格画作", "一幅画面斑驳的{}风格画作",
    "一幅色调昏暗的{}风格画作", "一幅色彩明亮的{}风格画作", "一幅很酷的{}风格画作", "一幅精美的{}风格画作",
    "一幅漂亮的{}风格画作", "一幅奇特的{}风格画作", "一幅{}风格的小画", "一幅大尺寸的{}风格画作",
    "用{}的画风画成的作品",
]

_BUILTIN = {
    ("object", "en"): OBJECT_EN,
    ("style", "en"): STYLE_EN,
    ("object", "zh"): OBJECT_ZH,
    ("style", "zh"): STYLE_ZH,
}
CAPTION = "{caption}"  # where a template or --caption_template takes the image's caption
LANGUAGE_PARTS = {"en": ["en"], "zh": ["zh"], "zh_en": ["en", "zh"]}  # zh_en models read both languages


def templates_for(learnable_property: str, language: str) -> list[str]:
    """Built-in templates: English for en, Chinese for zh, both for zh_en."""
    return [t for part in LANGUAGE_PARTS[language] for t in _BUILTIN[(learnable_property, part)]]


def parse_template_file(path: str | Path) -> tuple[list[str], list[str]]:
    """(templates, problems) of a --templates file: one template per line, each with exactly one `{}`.

    Blank lines and lines starting with `#` are skipped; a UTF-8 byte-order mark (Windows Notepad) is accepted.
    Every problem names the flag, the file and the line, so all of them can be reported at once.
    """
    where = f"--templates {path}"
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return [], [f"{where}: no such file"]
    except IsADirectoryError:
        return [], [f"{where}: is a directory; give a text file with one template per line"]
    except UnicodeDecodeError as exc:
        return [], [f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"]
    except OSError as exc:
        return [], [f"{where}: cannot read ({exc.strerror})"]
    templates, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        template = line.strip()
        if not template or template.startswith("#"):
            continue
        problem = template_problem(template)
        if problem:
            problems.append(f"{where} line {number}: {template!r} {problem}")
        else:
            templates.append(template)
    if not templates and not problems:
        problems.append(f"{where}: no templates (one per line, e.g. 'a photo of a {{}}' or '一幅{{}}风格的画')")
    return templates, problems


def template_problem(template: str) -> Optional[str]:
    """Why `template` cannot take the placeholder, or None: it needs exactly one `{}` and no other braces
    (str.format would otherwise fail or drop text) than `{caption}` (the image's caption, --caption_source both)."""
    count = template.count("{}")
    if count != 1:
        return ("has no {} where the placeholder goes" if count == 0
                else f"has {count} {{}}; use exactly one (the placeholder appears once per prompt)")
    return _brace_problem(template)


def caption_template_problem(template: str) -> Optional[str]:
    """Why a --caption_template cannot be used, or None: it needs one `{caption}`, at most one `{}` (without one,
    the caption places the placeholder) and no other braces."""
    if template.count(CAPTION) != 1:
        return "needs {caption} exactly once (where the image's caption goes), e.g. 'a photo of {}, {caption}'"
    if template.count("{}") > 1:
        return "has more than one {}; the placeholder appears once per prompt"
    return _brace_problem(template)


def _brace_problem(template: str) -> Optional[str]:
    rest = template.replace("{}", "").replace(CAPTION, "")
    if "{" in rest or "}" in rest:
        return "has a brace other than {} and {caption}; remove it"
    return None

