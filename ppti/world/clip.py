"""The toy world's CLIP: a text tower over the world's tokenizer and a small ViT on 32x32 images, trained
contrastively on the world's renderings and their true captions, saved in the layout `tools/evaluate.py
--clip_model` loads: ppdiffusers.transformers `CLIPModel` + `CLIPProcessor` (English), or for the Chinese world
paddlenlp's `ChineseCLIPModel` + `ChineseCLIPProcessor` (a BERT text tower over the Chinese world's vocabulary).

Phases of `make_world_clip` (each returns ready objects to the next):
  1. render the training images (`render.render_batch`, its own seed) and round-trip a share of them through the
     shipped world's VAE (what the world model's decoded samples look like, as the judge is trained);
  2. train: every step draws a batch of images, one random true caption each (`render.caption` forms, full captions,
     one-attribute captions), and minimises a symmetric InfoNCE whose targets are *every* caption true of an image
     (a batch often holds "a photo of a red object" for several red images: they are not negatives of each other);
  3. save (ppti/tiny.py `save_clip`, the tiny scoring CLIP's writer) next to the world's tokenizer files;
  4. zero-shot accuracy per attribute on held-out renderings (a disjoint seed) and their VAE round trips, read
     through `ClipScorer`, the class `tools/evaluate.py` scores with: the attribute is the value whose prompt
     (`PROMPTS`) is most similar; and on the world model's samples (against the prompt and against the judge).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..templates import OBJECT_EN, OBJECT_ZH, STYLE_EN, STYLE_ZH
from ..tiny import _clip_model, _reproducible, as_chinese_clip_tokenizer, save_clip
from .meaning import asked
from .render import ATTRIBUTES, BACKGROUNDS, COLOURS, NEUTRAL_OBJECT, NEUTRAL_OBJECT_ZH, SHAPES, TEXTURES, \
    Attributes, caption, caption_pair, caption_zh, full_caption, render_batch

LANGUAGES = ("en", "zh")
# The zero-shot prompts: an attribute is read as the value whose prompt is most similar to the image.
PROMPTS = {"shape": "a photo of a {}", "colour": "a photo of a {} object", "texture": "a painting in the style of {}",
           "background": "a photo of a object on a {} background"}
PROMPTS_ZH = {"shape": "一张{}的照片", "colour": "一张{}物体的照片", "texture": "一幅{}风格的画",
              "background": "一张{}背景上的物体的照片"}
# Chinese word of each attribute value, in ATTRIBUTES' order: WORDS_ZH["colour"]["red"] == "红色"
WORDS_ZH = {"shape": SHAPES, "colour": {k: v[1] for k, v in COLOURS.items()}, "texture": TEXTURES,
            "background": {k: v[1] for k, v in BACKGROUNDS.items()}}
CHANCE = {name: 1 / len(values) for name, values in ATTRIBUTES.items()}
HELD_OUT_OFFSET = 30_000  # held-out renderings: render_batch(seed + HELD_OUT_OFFSET); training uses `seed`
INFO_FILE = "clip_info.json"
_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # CLIPImageProcessor's (OpenAI CLIP's) defaults
_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


@dataclass(frozen=True)
class ClipRecipe:
    """Everything that decides the CLIP's weights (written to clip_info.json; the command goes to the manifest).

    The defaults are the shipped CLIP's (about 8 minutes on 2 CPU cores). Measured on the way, zero-shot shape on 600
    held-out renderings (colour, style and background were 0.97-1.0 in every run): 800 steps on 2000 images + 1000
    round trips 0.79; 1500 steps on these 3000 + 1500: 0.94; these 1800 steps 0.94, and 0.78 on 96 world samples;
    the same plus random shifts of up to 2 pixels and a 3x3 blur on 30% of the images 0.84, world samples 0.57 (the
    world's shapes are centred: shifting them only blurred what a shape looks like). 4-pixel patches cost 4x the
    time per step of these 8-pixel ones; 3 layers 1.5x."""
    seed: int = 0
    language: str = "en"  # "en": CLIPModel over the English world's tokenizer; "zh": ChineseCLIPModel (BERT)
    num_images: int = 3000  # clean renderings
    reconstructions: int = 1500  # VAE round trips of the first N of them (the world's VAE), trained on as well
    steps: int = 1800
    batch_size: int = 128
    learning_rate: float = 2e-3
    width: int = 64  # both towers' hidden size (and the projection)
    layers: int = 2  # transformer layers per tower
    patch_size: int = 8  # 32x32 images -> 4x4 patches
    pixel_noise: float = 0.02  # std of gaussian noise added to training pixels (0-1 scale)
    full_caption_fraction: float = 0.2
    single_attribute_fraction: float = 0.3  # "a photo of a star", "a painting in the style of striped", ...
    held_out_images: int = 600  # zero-shot accuracy is measured on this many held-out renderings
    world_samples: int = 96  # ... and on this many of the world model's samples (full true captions); 0: skip


def pixel_values(images: np.ndarray) -> np.ndarray:
    """uint8 [B, 32, 32, 3] -> float32 [B, 3, 32, 32], CLIPImageProcessor's normalisation (it neither resizes nor
    crops a 32x32 image)."""
    return ((images.astype(np.float32) / 255.0 - _MEAN) / _STD).transpose(0, 3, 1, 2)


def zero_shot_prompts(language: str) -> dict[str, list[str]]:
    """Per attribute, one prompt per value (in ATTRIBUTES' order) in `language`."""
    if language == "zh":
        return {name: [PROMPTS_ZH[name].format(WORDS_ZH[name][v]) for v in values]
                for name, values in ATTRIBUTES.items()}
    return {name: [PROMPTS[name].format(v) for v in values] for name, values in ATTRIBUTES.items()}


def single_attribute_caption(attrs: Attributes, rng: random.Random) -> str:
    """One attribute named in one of the world's templates: "a rendering of a star", "a photo of a clean red object",
    "the painting in the style of outlined", "a photo of a object on a gray background"."""
    name = rng.choice(tuple(ATTRIBUTES))
    value = getattr(attrs, name)
    if name == "texture":
        return rng.choice(STYLE_EN).format(value)
    phrase = {"shape": value, "colour": f"{value} {NEUTRAL_OBJECT}",
              "background": f"{NEUTRAL_OBJECT} on a {value} background"}[name]
    return rng.choice(OBJECT_EN).format(phrase)


def single_attribute_caption_zh(attrs: Attributes, rng: random.Random) -> str:
    """The Chinese twin of `single_attribute_caption`: "一张星星的渲染图", "一张红色物体的照片", "一幅空心风格的画"."""
    name = rng.choice(tuple(ATTRIBUTES))
    word = WORDS_ZH[name][getattr(attrs, name)]
    if name == "texture":
        return rng.choice(STYLE_ZH).format(word)
    phrase = {"shape": word, "colour": word + NEUTRAL_OBJECT_ZH, "background": f"{word}背景上的{NEUTRAL_OBJECT_ZH}"}
    return rng.choice(OBJECT_ZH).format(phrase[name])


def training_caption(attrs: Attributes, rng: random.Random, recipe: ClipRecipe) -> str:
    """A random true caption: full, one attribute, or the world's caption forms (`caption`; Chinese: the Chinese
    half of `caption_pair`)."""
    draw = rng.random()
    zh = recipe.language == "zh"
    if draw < recipe.full_caption_fraction:
        return caption_zh(attrs) if zh else full_caption(attrs)
    if draw < recipe.full_caption_fraction + recipe.single_attribute_fraction:
        return single_attribute_caption_zh(attrs, rng) if zh else single_attribute_caption(attrs, rng)
    return caption_pair(attrs, rng)[1] if zh else caption(attrs, rng)


def truth_matrix(attrs: Sequence[Attributes], texts: Sequence[str]) -> np.ndarray:
    """float32 [images, texts]: 1 where the text is true of the image (every attribute it names matches, as
    meaning.asked reads a caption's world words in English or Chinese)."""
    named = [asked(t) for t in texts]
    return np.array([[all(getattr(a, k) == v for k, v in c.items()) for c in named] for a in attrs], np.float32)


def build_clip(vocab_size: int, recipe: ClipRecipe):
    """The untrained CLIPModel (ChineseCLIPModel for "zh") of `recipe`'s sizes (English text positions: the world
    tokenizer's 32)."""
    from .pretrain import MAX_LENGTH

    with _reproducible(recipe.seed):
        return _clip_model(recipe.language, vocab_size, width=recipe.width, layers=recipe.layers, intermediate=4 * recipe.width,
                           patch_size=recipe.patch_size, max_positions=MAX_LENGTH, projection=recipe.width)


def train_clip(model, tokenizer, images: np.ndarray, attrs: Sequence[Attributes], recipe: ClipRecipe,
               progress: Callable[[float], None] | None = None) -> None:
    """Contrastive training of both towers: symmetric cross-entropy of the scaled cosine similarities against the
    normalised truth matrix (each image's true captions share its target, and each caption's true images)."""
    import paddle
    import paddle.nn.functional as F

    rng = random.Random(recipe.seed + 1)
    gauss = np.random.default_rng(recipe.seed + 1)
    paddle.seed(recipe.seed + 1)
    warmup = max(1, min(100, recipe.steps // 10))
    schedule = paddle.optimizer.lr.LinearWarmup(paddle.optimizer.lr.CosineAnnealingDecay(recipe.learning_rate,
                                                                                          recipe.steps),
                                                warmup_steps=warmup, start_lr=0.0, end_lr=recipe.learning_rate)
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, parameters=model.parameters(), weight_decay=0.01)
    model.train()
    for _ in range(recipe.steps):
        idx = rng.sample(range(len(images)), recipe.batch_size)
        batch_attrs = [attrs[i] for i in idx]
        texts = [training_caption(a, rng, recipe) for a in batch_attrs]
        pixels = images[idx].astype(np.float32) + gauss.normal(0, 255 * recipe.pixel_noise, images[idx].shape)
        pixels = pixel_values(np.clip(pixels, 0, 255))
        image_features = F.normalize(model.get_image_features(pixel_values=paddle.to_tensor(pixels)), axis=-1)
        text_features = F.normalize(model.get_text_features(**_text_inputs(tokenizer, texts, recipe.language)), axis=-1)
        logits = model.logit_scale.exp().clip(max=100.0) * image_features @ text_features.T  # [images, texts]
        truth = paddle.to_tensor(truth_matrix(batch_attrs, texts))
        loss = (F.cross_entropy(logits, truth / truth.sum(1, keepdim=True), soft_label=True)
                + F.cross_entropy(logits.T, (truth / truth.sum(0, keepdim=True)).T, soft_label=True)) / 2
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        if progress is not None:
            progress(float(loss))
    model.eval()


def _text_inputs(tokenizer, texts: list[str], language: str) -> dict:
    """Token ids padded to the batch's longest text, as ClipScorer pads and with the inputs it passes: CLIP's
    causal mask and end-of-text pooling make the padding irrelevant (ids only); BERT needs the attention mask."""
    inputs = tokenizer(texts, padding="longest", truncation=True, return_tensors="pd")
    keys = ("input_ids",) if language == "en" else ("input_ids", "attention_mask", "token_type_ids")
    return {k: inputs[k] for k in keys if k in inputs}


def zero_shot_accuracy(scorer, images: np.ndarray, attrs: Sequence[Attributes], language: str = "en"
                       ) -> dict[str, float]:
    """Per attribute, how often the most similar of its prompts (`PROMPTS`, `PROMPTS_ZH`) names the true value
    (`scorer`: a ppti.evaluation.clip.ClipScorer)."""
    from PIL import Image

    image_features = scorer.image_features([Image.fromarray(im) for im in images])
    result = {}
    for (name, values), prompts in zip(ATTRIBUTES.items(), zero_shot_prompts(language).values()):
        text_features = scorer.text_features(prompts)
        guess = (image_features @ text_features.T).argmax(-1)
        result[name] = float(np.mean([values[g] == getattr(a, name) for g, a in zip(guess, attrs)]))
    return result


def zero_shot_on_world_samples(scorer, world: Path, seed: int, count: int, language: str = "en"
                               ) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy on the world model's own samples for `count` full true captions, against what the
    prompt asked for ("vs_prompt") and against what the world's judge reads in each sample ("vs_judge": the world
    does not always draw what it is asked, the judge tells what it drew)."""
    from .judge import predict_names
    from .render import sample_attributes
    from .shipped import load_pipeline, load_world_judge, sample

    rng = random.Random(seed)
    asked = [sample_attributes(rng) for _ in range(count)]
    describe = caption_zh if language == "zh" else full_caption
    images = sample(load_pipeline(world), [describe(a) for a in asked], range(seed, seed + count))
    drawn = [Attributes(**names) for names in predict_names(load_world_judge(world), images)]
    return {"vs_prompt": zero_shot_accuracy(scorer, images, asked, language),
            "vs_judge": zero_shot_accuracy(scorer, images, drawn, language)}


WORLD_SAMPLES_OFFSET = 40_000  # world samples: prompts and starting noise from seed + WORLD_SAMPLES_OFFSET


def held_out(recipe: ClipRecipe) -> tuple[np.ndarray, list[Attributes]]:
    """The held-out renderings zero-shot accuracy is measured on (a seed the training images never use)."""
    return render_batch(recipe.seed + HELD_OUT_OFFSET, recipe.held_out_images)


def check_recipe(recipe: ClipRecipe) -> None:
    """RecipeError naming every --clip_* value the build cannot carry out."""
    from .pretrain import RecipeError

    problems = [f"--clip_{name} {getattr(recipe, name)} must be at least {least}" for name, least in
                (("steps", 1), ("num_images", 2), ("reconstructions", 0), ("held_out_images", 1), ("width", 4),
                 ("layers", 1), ("batch_size", 2), ("world_samples", 0)) if getattr(recipe, name) < least]
    if recipe.batch_size > recipe.num_images:
        problems.append(f"--clip_batch_size {recipe.batch_size} exceeds --clip_num_images {recipe.num_images}")
    if recipe.width % 4:
        problems.append(f"--clip_width {recipe.width} must be a multiple of 4 (4 attention heads)")
    if recipe.patch_size < 1 or 32 % recipe.patch_size:
        problems.append(f"--clip_patch_size {recipe.patch_size} must divide the 32-pixel image side")
    fractions = (recipe.full_caption_fraction, recipe.single_attribute_fraction)
    if min(fractions) < 0 or sum(fractions) > 1:
        problems.append("--clip_full_caption_fraction and --clip_single_attribute_fraction must be >= 0 and sum to "
                        "at most 1")
    if recipe.pixel_noise < 0 or recipe.learning_rate <= 0:
        problems.append("--clip_pixel_noise must be >= 0 and --clip_learning_rate > 0")
    if recipe.language not in LANGUAGES:
        problems.append(f"--language {recipe.language}: the world's CLIP is built for {' or '.join(LANGUAGES)}")
    if problems:
        raise RecipeError("; ".join(problems))


def make_world_clip(out: Path, recipe: ClipRecipe, world: Path, log: Callable[[str], None] = print) -> dict:
    """Train the CLIP of `recipe` (reconstructions through `world`'s VAE) and write it into `out`: weights,
    config, image processor, the world's tokenizer files and clip_info.json (recipe + measured accuracies)."""
    from ppdiffusers import AutoencoderKL
    from tqdm import tqdm

    from ..atomic import atomic_dir, set_normal_permissions
    from ..evaluation.clip import ClipScorer
    from .pretrain import reconstruct, write_tokenizer
    from .shipped import checked

    check_recipe(recipe)
    count = min(recipe.reconstructions, recipe.num_images)
    if count or recipe.world_samples:
        checked(world)
    vae = AutoencoderKL.from_pretrained(str(Path(world) / "vae")) if count else None
    start = time.time()
    images, attrs = render_batch(recipe.seed, recipe.num_images)
    if count:
        images = np.concatenate([images, reconstruct(vae, images[:count])])
        attrs = list(attrs) + list(attrs[:count])
    log(f"{len(images)} training images ({count} VAE reconstructions) in {time.time() - start:.0f}s")
    info: dict = {"recipe": asdict(recipe), "prompts": PROMPTS_ZH if recipe.language == "zh" else PROMPTS,
                  "chance": CHANCE}
    with atomic_dir(Path(out)) as tmp:
        tokenizer = write_tokenizer(tmp, recipe.language)
        if recipe.language == "zh":  # ChineseCLIPProcessor reads a ChineseCLIPTokenizer: the same BERT vocab.txt
            as_chinese_clip_tokenizer(tmp)
        model = build_clip(len(tokenizer), recipe)
        info["parameters"] = int(sum(p.size for p in model.parameters()))
        pb = tqdm(total=recipe.steps, desc="clip", mininterval=10)
        train_clip(model, tokenizer, images, attrs, recipe,
                   lambda loss: (pb.update(1), pb.set_postfix(loss=f"{loss:.4f}", refresh=False)))
        pb.close()
        info["train_seconds"] = round(time.time() - start)
        save_clip(model, tmp, recipe.language)
        scorer = ClipScorer(str(tmp))
        held_images, held_attrs = held_out(recipe)
        info["zero_shot_held_out"] = zero_shot_accuracy(scorer, held_images, held_attrs, recipe.language)
        if count:
            info["zero_shot_held_out_reconstructed"] = zero_shot_accuracy(scorer, reconstruct(vae, held_images),
                                                                          held_attrs, recipe.language)
        if recipe.world_samples:
            info["zero_shot_world_samples"] = zero_shot_on_world_samples(
                scorer, world, recipe.seed + WORLD_SAMPLES_OFFSET, recipe.world_samples, recipe.language)
        info["seconds"] = round(time.time() - start)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for path in tmp.rglob("*"):
            set_normal_permissions(path)  # (Paddle's save writes weights 0600)
    log(f"zero-shot on {recipe.held_out_images} held-out renderings: {info['zero_shot_held_out']}")
    return info
