"""Rendering with trained embeddings (the library side of tools/generate.py).

Embeddings in any format `ppti.embeddings` reads are loaded into a ppdiffusers pipeline with its own
`load_textual_inversion`, so what renders here renders the same in any ppdiffusers script. Image i of a grid
uses seed + i, exactly as the trainer's validation does: with the run's seed, the same prompt, size, steps and
guidance, a saved step renders the images its validation grid showed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw

from .embeddings import Embedding, read_embeddings
from .embeddings.convert import read_one_or_pair, resolve_input
from .runfiles import CONFIG_FILE, EMBEDDINGS_STEM, SAVED_SUFFIXES, SDXL_ENCODERS, embeddings_name, saved_steps

log = logging.getLogger("ppti")


class GenerateError(ValueError):
    """A problem with the arguments of tools/generate.py the user must fix."""


@dataclass(frozen=True)
class RenderSettings:
    prompt: str
    negative_prompt: Optional[str]
    num_images: int
    seed: int
    num_inference_steps: int
    guidance_scale: float
    height: Optional[int]  # None: the model's default size
    width: Optional[int]


# ------------------------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------------------------
def read_embedding_args(paths: Sequence[Path]) -> list[Embedding]:
    """Every embedding of the --embeddings arguments (files, or training output_dirs for their final
    learned_embeds file); the same token twice is refused."""
    embeddings: list[Embedding] = []
    source: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.is_dir() and not list(path.glob(f"{embeddings_name()}.*")):
            raise GenerateError(f"--embeddings {path}: a folder without {EMBEDDINGS_STEM}.pdparams/.safetensors; give "
                                "an embedding file or a training output_dir (for its saved steps: --steps_sweep)")
        file = resolve_input(path)
        found = read_embeddings(file)
        if len(found) == 1 or found[0].part is not None:  # SDXL: one F5 file, or an output's two files
            found = read_one_or_pair(file)
        for embedding in found:
            if embedding.token in source and embedding.part != "clip_g":
                raise GenerateError(f"token {embedding.token!r} is in both {source[embedding.token]} and {file}; "
                                    "rename one with: python tools/convert.py FILE --to paddle --token NEW")
            source[embedding.token] = file
            embeddings.append(embedding)
    return embeddings


def load_into(pipeline, embeddings: Sequence[Embedding]) -> None:
    """Add the embeddings' tokens to the pipeline's tokenizer and text encoder (multi-vector embeddings become
    `<tok>`, `<tok>_1`, ..., which the pipeline expands in prompts)."""
    import paddle

    if not embeddings:
        return
    for encoder, tokenizer, part in encoder_parts(pipeline, embeddings):
        chosen = [e for e in embeddings if e.part == part]
        width = encoder.get_input_embeddings().weight.shape[-1]
        for e in chosen:
            if e.vectors.shape[-1] != width:
                raise GenerateError(f"embedding {e.token!r} has {e.vectors.shape[-1]} dimensions, this model's text "
                                    f"encoder {width}: it was trained for another model")
        try:
            pipeline.load_textual_inversion([{e.token: paddle.to_tensor(e.vectors)} for e in chosen],
                                            token=[e.token for e in chosen], text_encoder=encoder, tokenizer=tokenizer)
        except ValueError as exc:  # e.g. the token is already a word of the model's vocabulary
            raise GenerateError(f"cannot load the embeddings into the pipeline: {str(exc).splitlines()[0]}") from None


def encoder_parts(pipeline, embeddings: Sequence[Embedding]) -> list[tuple]:
    """(text encoder, tokenizer, Embedding.part) per text encoder: SDXL loads clip_l into the first, clip_g into
    the second (the two load_textual_inversion calls); other pipelines take single embeddings (part None)."""
    sdxl = getattr(pipeline, "text_encoder_2", None) is not None
    wrong = [e for e in embeddings if (e.part is None) == sdxl]
    if wrong:
        what = ("a single-encoder (SD-1.x/2.x) embedding; SDXL needs a clip_l + clip_g pair" if sdxl else
                f"an SDXL embedding pair ({wrong[0].part}); this Stable Diffusion 1.x/2.x model takes single "
                "embeddings")
        raise GenerateError(f"embedding {wrong[0].token!r} is {what}")
    if sdxl:
        return [(getattr(pipeline, encoder), getattr(pipeline, tokenizer), part)
                for part, encoder, tokenizer in SDXL_ENCODERS]
    return [(pipeline.text_encoder, pipeline.tokenizer, None)]


def replace_vectors(pipeline, embeddings: Sequence[Embedding]) -> None:
    """Overwrite the rows of an already loaded token (same token, same number of vectors; SDXL: both encoders)."""
    import paddle

    for (encoder, tokenizer, _), embedding in zip(encoder_parts(pipeline, embeddings), embeddings):
        tokens = [embedding.token] + [f"{embedding.token}_{i}" for i in range(1, len(embedding.vectors))]
        ids = tokenizer.convert_tokens_to_ids(tokens)
        weight = encoder.get_input_embeddings().weight
        with paddle.no_grad():
            weight[paddle.to_tensor(ids)] = paddle.to_tensor(embedding.vectors, dtype=weight.dtype)


def step_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, file) of every learned_embeds-steps-N in a training output_dir, by step (.pdparams preferred)."""
    if not run_dir.is_dir():
        raise GenerateError(f"--steps_sweep {run_dir}: no such directory (give a training --output_dir)")
    found = saved_steps(run_dir, SAVED_SUFFIXES)
    if not found:
        raise GenerateError(f"--steps_sweep {run_dir}: no learned_embeds-steps-N files (the trainer writes one "
                            "every --save_steps)")
    return found


# ------------------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------------------
def warn_unused_tokens(prompt: str, tokens: Sequence[str]) -> None:
    for token in tokens:
        if token not in prompt:
            log.warning("the prompt does not contain %r: its embedding has no effect", token)


def render_row(pipeline, settings: RenderSettings) -> list[Image.Image]:
    from .validation import render  # (imports Paddle: only once the arguments are known to be good)

    return render(pipeline, settings.prompt, settings.num_images, settings.seed, settings.height, settings.width,
                  num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
                  negative_prompt=settings.negative_prompt)


def labelled(image: Image.Image, text: str) -> Image.Image:
    """The image with `text` in its top-left corner (white on black, the PIL default font)."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((2, 2), text)
    draw.rectangle((0, 0, right + 2, bottom + 2), fill="black")
    draw.text((2, 2), text, fill="white")
    return image


def render_sweep(pipeline, settings: RenderSettings, steps: Sequence[tuple[int, Path]]) -> Image.Image:
    """One row per saved step (labelled "step N"), one column per seed."""
    from .validation import image_grid

    rows = []
    swept: Optional[str] = None
    for step, path in steps:
        embeddings = read_one_or_pair(path)  # SDXL: with its learned_embeds_2-steps-N
        token = embeddings[0].token
        if swept is None:
            load_into(pipeline, embeddings)
            swept = token
            warn_unused_tokens(settings.prompt, [swept])
        elif token != swept:
            raise GenerateError(f"{path}: holds {token!r}, the other steps {swept!r}")
        else:
            replace_vectors(pipeline, embeddings)
        log.info("step %d: %s", step, path.name)
        images = render_row(pipeline, settings)
        rows.append([labelled(images[0], f"step {step}")] + images[1:])
    return image_grid(rows)


MODEL_OPTIONS = ("tokenizer_name", "model_cache_dir", "use_ema", "prediction_type")


def run_model_options(paths: Sequence[Path], model: str) -> dict:
    """The model-source flags (--tokenizer_name, --model_cache_dir, --use_ema, --prediction_type) of the training
    run the first of `paths` belongs to, when that run trained on `model`; else {} (model_source's defaults)."""
    import yaml

    for path in map(Path, paths):
        for folder in (path, path.parent):
            config = folder / CONFIG_FILE
            if folder.is_dir() and config.is_file():
                try:
                    saved = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
                except (yaml.YAMLError, ValueError):
                    return {}  # (run_dtype reports an unreadable file)
                trained_on = saved.get("pretrained_model_name_or_path") if isinstance(saved, dict) else None
                if not trained_on or Path(str(trained_on)).expanduser().resolve() != Path(model).expanduser().resolve():
                    return {}
                return {k: saved[k] for k in MODEL_OPTIONS if saved.get(k) is not None}
    return {}


def load_pipeline(model: str, dtype: str = "float32", options: Optional[dict] = None):
    """The model's pipeline, every weight verified (ModelError names the problem), with the UNet and VAE in
    `dtype` and the text encoder in float32 -- the precisions the trainer's validation renders with. `options`:
    run_model_options, so a diffusers folder or single file resolves to the conversion the run trained on."""
    from .model_source import resolve_model
    from .models import load_components
    from .precision import cast_for_rendering

    options = options or {}
    source = resolve_model(model, options.get("tokenizer_name"), options.get("model_cache_dir"),
                           bool(options.get("use_ema")), options.get("prediction_type"))  # (converted once)
    pipeline = load_components(source.folder, source.tokenizer_name).pipeline
    cast_for_rendering(pipeline, dtype)
    return pipeline


def run_dtype(paths: Sequence[Path]) -> Optional[str]:
    """The --mixed_precision of the training run the first of `paths` belongs to, as a precision name (fp32, fp16,
    bf16); None when no path is in (or is) a training output_dir with a train_config.yaml."""
    import yaml

    for path in map(Path, paths):
        for folder in (path, path.parent):
            config = folder / CONFIG_FILE
            if folder.is_dir() and config.is_file():
                fix = "the default --mixed_precision is read from it: give --mixed_precision no|fp16|bf16, or repair it"
                try:
                    saved = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
                except (yaml.YAMLError, ValueError) as exc:  # (UnicodeDecodeError is a ValueError)
                    raise GenerateError(f"{config}: not readable YAML ({' '.join(str(exc).split())[:120]}); {fix}")
                mode = saved.get("mixed_precision", "no") if isinstance(saved, dict) else None
                if mode not in ("no", "fp16", "bf16"):
                    raise GenerateError(f"{config}: no mixed_precision of no, fp16 or bf16 (got {mode!r}); {fix}")
                return {"no": "fp32"}.get(mode, mode)
    return None
