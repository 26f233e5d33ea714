"""A procedurally drawn world of coloured shapes: deterministic images (32x32 RGB) and their captions.

Every image shows one shape (circle, square, triangle, star, cross, heart) in one of six colours, drawn in one of
three styles (solid, outlined, striped), on a white, black or gray background, near the middle of the frame with
some spread in position, size and rotation. `render(attrs)` draws an image from its attributes;
`sample_attributes(rng)` draws attributes; captions come in English and Chinese. The same seed always gives the same pixels (numpy + Pillow, no global state).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..templates import OBJECT_EN, OBJECT_ZH, STYLE_EN, STYLE_ZH

IMAGE_SIZE = 32
_SUPERSAMPLE = 4  # drawn at 128x128, box-filtered down: smooth edges without a renderer of our own

# name -> (RGB, Chinese). Chosen far apart in hue so that 32x32 pixels and a small VAE keep them apart.
COLOURS = {
    "red": ((215, 35, 35), "红色"), "green": ((40, 165, 50), "绿色"), "blue": ((35, 70, 220), "蓝色"),
    "yellow": ((240, 215, 25), "黄色"), "purple": ((145, 45, 185), "紫色"), "cyan": ((30, 200, 210), "青色"),
}
BACKGROUNDS = {"white": ((240, 240, 240), "白色"), "black": ((20, 20, 20), "黑色"), "gray": ((128, 128, 128), "灰色")}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星星", "cross": "十字", "heart": "爱心"}
TEXTURES = {"solid": "实心", "outlined": "空心", "striped": "条纹"}
ATTRIBUTES = {"shape": list(SHAPES), "colour": list(COLOURS), "texture": list(TEXTURES),
              "background": list(BACKGROUNDS)}

# Neutral words: in captions they stand for "some shape" / "some style", so they make initializers that carry no
# concept (before training, "a photo of a object" draws any shape).
NEUTRAL_OBJECT = "object"
NEUTRAL_STYLE = "pattern"
NEUTRAL_OBJECT_ZH = "物体"
NEUTRAL_STYLE_ZH = "图案"
WORDS = sorted({*SHAPES, *COLOURS, *TEXTURES, *BACKGROUNDS, NEUTRAL_OBJECT, NEUTRAL_STYLE, "thing", "style",
                "background", "on", "a", "an", "of", "in", "the", "photo", "painting"})


@dataclass(frozen=True)
class Attributes:
    shape: str
    colour: str
    texture: str
    background: str
    x: float = 0.5  # centre, as a fraction of the image
    y: float = 0.5
    radius: float = 0.34  # as a fraction of the image
    angle: float = 0.0  # degrees
    jitter: tuple = (0, 0, 0, 0, 0, 0)  # colour and background RGB offsets

    def label(self, name: str) -> int:
        """Class index of attribute `name` (shape|colour|texture|background)."""
        return ATTRIBUTES[name].index(getattr(self, name))


def sample_attributes(rng: random.Random, **fixed) -> Attributes:
    """Random attributes; keyword arguments fix some of them (e.g. shape="star").

    The shape stays within 5% of the middle (radius 0.30-0.40, +-15 degrees): shapes anywhere in the frame (the
    first world) average out where a prompt must decide the layout, and its samples drew whatever shape the starting
    noise suggested whatever the shape word said."""
    chosen = {name: fixed.get(name) or rng.choice(values) for name, values in ATTRIBUTES.items()}
    radius = rng.uniform(0.30, 0.40)
    return Attributes(
        **chosen, x=0.5 + rng.uniform(-0.05, 0.05), y=0.5 + rng.uniform(-0.05, 0.05), radius=radius,
        angle=rng.uniform(-15, 15), jitter=tuple(rng.randint(-12, 12) for _ in range(6)))


def _outline(shape: str) -> list[tuple[float, float]]:
    """The shape's polygon in unit coordinates (centred at 0, about radius 1, y down)."""
    if shape == "circle":
        return [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    if shape == "square":
        s = 0.82
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(1.1 * math.sin(a), 0.25 - 1.1 * math.cos(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if shape == "star":
        return [((1.1 if i % 2 == 0 else 0.47) * math.sin(i * math.pi / 5),
                 0.1 - (1.1 if i % 2 == 0 else 0.47) * math.cos(i * math.pi / 5)) for i in range(10)]
    if shape == "cross":
        a, w = 1.0, 0.34
        return [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w),
                (-w, -w)]
    if shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return [(16 * math.sin(t) ** 3 / 16, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                               - math.cos(4 * t)) / 16 - 0.1) for t in ts]
    raise ValueError(f"unknown shape {shape!r}")


def _mask(attrs: Attributes, size: int) -> np.ndarray:
    """Boolean [size, size] mask of the filled, rotated, placed shape."""
    cos, sin = math.cos(math.radians(attrs.angle)), math.sin(math.radians(attrs.angle))
    r, cx, cy = attrs.radius * size, attrs.x * size, attrs.y * size
    points = [(cx + r * (u * cos - v * sin), cy + r * (u * sin + v * cos)) for u, v in _outline(attrs.shape)]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas) > 127


def render(attrs: Attributes) -> Image.Image:
    """The 32x32 RGB image of `attrs`."""
    size = IMAGE_SIZE * _SUPERSAMPLE
    filled = _mask(attrs, size)
    # Borders (an outline, the edge of a striped shape) are 2 px wide at 32 px. With 1 px borders the world lost thin
    # shapes such as the star: the judge read 0.82 of full-caption shapes, 0.97 with 2 px. Giving stripes back a 1
    # px border (so that they look less like an outline with bars) cost shapes again: 0.86.
    eroded = Image.fromarray(filled.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(4 * _SUPERSAMPLE + 1))
    border = filled & ~(np.asarray(eroded) > 127)
    if attrs.texture == "solid":
        paint = filled
    elif attrs.texture == "outlined":
        paint = border
    else:  # striped: horizontal bands 4 px on / 4 px off (two latent rows per period), plus the border
        rows = (np.arange(size) // (4 * _SUPERSAMPLE)) % 2 == 0
        paint = (filled & rows[:, None]) | border
    colour = np.clip(np.add(COLOURS[attrs.colour][0], attrs.jitter[:3]), 0, 255)
    background = np.clip(np.add(BACKGROUNDS[attrs.background][0], attrs.jitter[3:]), 0, 255)
    pixels = np.where(paint[..., None], colour, background).astype(np.float32)
    small = pixels.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return Image.fromarray(np.round(small).astype(np.uint8), "RGB")


def render_batch(seed: int, count: int, **fixed) -> tuple[np.ndarray, list[Attributes]]:
    """`count` images (uint8 [count, 32, 32, 3]) and their attributes, determined by `seed` alone."""
    rng = random.Random(seed)
    attrs = [sample_attributes(rng, **fixed) for _ in range(count)]
    return np.stack([np.asarray(render(a)) for a in attrs]), attrs


CAPTION_KEEP = 0.5  # how often caption() names each of colour, texture and background (Recipe.caption_keep)


def phrase(attrs: Attributes, rng: random.Random, keep: float = CAPTION_KEEP, texture: bool = True,
           shape_word: Optional[str] = None) -> str:
    """'red striped star on a gray background', each of colour/texture/background kept with probability `keep`."""
    words = [attrs.colour] if rng.random() < keep else []
    words += [attrs.texture] if texture and rng.random() < keep else []
    words.append(shape_word or attrs.shape)
    text = " ".join(words)
    return text + (f" on a {attrs.background} background" if rng.random() < keep else "")


def spanned(word: str, rng: random.Random, repeat: float) -> str:
    """`word`, or with probability `repeat` the same word 2 or 3 times: the span a multi-vector placeholder fills."""
    if not repeat or rng.random() >= repeat:  # no draw at all when 0: caption()'s stream stays the earlier worlds'
        return word
    return " ".join([word] * rng.choice((2, 3)))


def caption(attrs: Attributes, rng: random.Random, keep: float = CAPTION_KEEP, repeat: float = 0.0) -> str:
    """A random English caption that is true of `attrs`, in the forms textual inversion will prompt with.

    Object templates ("a photo of a {}") around a phrase; style templates ("a painting in the style of {}") around
    the texture word; and "... in the style of <texture>" after an object phrase. The shape is replaced by the
    neutral "object" (and the texture by "pattern") now and then, so those words mean "any shape/style". Each of
    colour, texture and background is named with probability `keep`. With probability `repeat` the shape word and
    the style word each fill a span of 2-3 tokens ("a photo of a star star"), as a placeholder of `--num_vectors`
    2 or 3 does (tried at 0.1 and 0.2, not shipped: the shipped world took "object object object" for a star in 0.79
    of the samples, these worlds in 0.50 and 0.58; docs/toy-world.md, "Known limits").
    """
    form = rng.random()
    if form < 0.2:
        word = NEUTRAL_STYLE if rng.random() < 0.15 else attrs.texture
        return rng.choice(STYLE_EN).format(spanned(word, rng, repeat))
    shape_word = spanned(NEUTRAL_OBJECT if rng.random() < 0.15 else attrs.shape, rng, repeat)
    if form < 0.35:
        word = NEUTRAL_STYLE if rng.random() < 0.15 else attrs.texture
        text = phrase(attrs, rng, keep, texture=False, shape_word=shape_word)
        return rng.choice(OBJECT_EN).format(text) + f" in the style of {spanned(word, rng, repeat)}"
    return rng.choice(OBJECT_EN).format(phrase(attrs, rng, keep, shape_word=shape_word))


def caption_zh(attrs: Attributes) -> str:
    """The full Chinese caption: 一张灰色背景上的红色条纹星星的照片."""
    return (f"一张{BACKGROUNDS[attrs.background][1]}背景上的{COLOURS[attrs.colour][1]}"
            f"{TEXTURES[attrs.texture]}{SHAPES[attrs.shape]}的照片")


def caption_pair(attrs: Attributes, rng: random.Random) -> tuple[str, str]:
    """A random true caption in English and the same one in Chinese, in the forms of `caption` and ppti's templates:
    ("a painting in the style of striped", "一幅条纹风格的画"), ("a photo of a red object in the style of pattern",
    "一张红色物体的照片，图案风格")... The Chinese world learns to mean by a Chinese caption what the English world
    draws for its English twin. (Not built on `caption`: its random draws decide the English world's training
    captions, which the shipped world's recipe fixes.)"""
    words = {"colour": (attrs.colour, COLOURS[attrs.colour][1]), "texture": (attrs.texture, TEXTURES[attrs.texture]),
             "background": (attrs.background, BACKGROUNDS[attrs.background][1])}
    form = rng.random()
    style_en, style_zh = (NEUTRAL_STYLE, NEUTRAL_STYLE_ZH) if rng.random() < 0.15 else words["texture"]
    if form < 0.2:
        return rng.choice(STYLE_EN).format(style_en), rng.choice(STYLE_ZH).format(style_zh)
    kept = {name: rng.random() < 0.7 and (name != "texture" or form >= 0.35) for name in words}
    shape_en, shape_zh = (NEUTRAL_OBJECT, NEUTRAL_OBJECT_ZH) if rng.random() < 0.15 else (attrs.shape,
                                                                                         SHAPES[attrs.shape])
    en = " ".join([words[n][0] for n in ("colour", "texture") if kept[n]] + [shape_en])
    en += f" on a {attrs.background} background" if kept["background"] else ""
    zh = (f"{words['background'][1]}背景上的" if kept["background"] else "")
    zh += "".join(words[n][1] for n in ("colour", "texture") if kept[n]) + shape_zh
    en, zh = rng.choice(OBJECT_EN).format(en), rng.choice(OBJECT_ZH).format(zh)
    return (en + f" in the style of {style_en}", zh + f"，{style_zh}风格") if form < 0.35 else (en, zh)


WORLD_CHARS_ZH = "".join(sorted({*"".join(v[1] for v in (*COLOURS.values(), *BACKGROUNDS.values())),
                                 *"".join((*SHAPES.values(), *TEXTURES.values())), *NEUTRAL_OBJECT_ZH,
                                 *NEUTRAL_STYLE_ZH, *"背景上的照片风格"}))


def full_caption(attrs: Attributes) -> str:
    """The complete English caption: 'a photo of a red striped star on a gray background'."""
    return f"a photo of a {attrs.colour} {attrs.texture} {attrs.shape} on a {attrs.background} background"
