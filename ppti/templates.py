"""Prompt templates for object and style concepts; `{}` is where the placeholder goes."""

from __future__ import annotations

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

OBJECT_ZH = [
    "一张{}的照片", "{}的渲染图", "一张{}的裁剪照片", "一张干净的{}的照片", "一张{}的暗调照片", "我的{}的照片",
    "一张很酷的{}的照片", "一张{}的特写照片", "一张{}的明亮照片", "{}的照片", "一张{}的好照片", "一张小{}的照片",
    "一张漂亮的{}的照片", "一张奇怪的{}的照片", "一张大{}的照片", "一个{}的照片",
]

STYLE_ZH = [
    "一幅{}风格的画", "{}风格的渲染图", "一幅{}风格的裁剪画", "{}风格的绘画", "一幅{}风格的干净的画",
    "一幅{}风格的暗调画作", "一张{}风格的图片", "一幅{}风格的很酷的画", "一幅{}风格的特写画", "一幅{}风格的明亮画作",
    "一幅{}风格的好画", "一幅{}风格的漂亮的画", "一幅{}风格的奇怪的画", "一幅{}风格的小画", "一幅{}风格的大画",
]

_BUILTIN = {
    ("object", "en"): OBJECT_EN,
    ("style", "en"): STYLE_EN,
    ("object", "zh"): OBJECT_ZH,
    ("style", "zh"): STYLE_ZH,
}


def templates_for(learnable_property: str, language: str) -> list[str]:
    """Built-in templates: English for en, Chinese for zh, both for zh_en."""
    parts = ["en", "zh"] if language == "zh_en" else [language]
    return [t for part in parts for t in _BUILTIN[(learnable_property, part)]]
