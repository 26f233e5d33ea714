"""Score every saved embedding of a training run (the library side of tools/evaluate.py).

The run is set up once exactly as training set it up (`train.setup` with the run's own train_config.yaml: same
seed, images, templates and frozen evaluation batch), and the model is loaded once. Each saved file's vectors are
then written into the trainable rows in place (`PlaceholderEmbedding.rows`), which the pipeline's text encoder
reads: no reload per file. Per file: the frozen-batch loss (the very number training logged as eval/loss at that
step), norm and drift, and the two CLIP scores of images rendered with fixed seeds (see ppti.evaluation.clip).

SDXL runs save one file per text encoder and step (learned_embeds-steps-N for text_encoder, learned_embeds_2-steps-N
for text_encoder_2, see ppti.outputs): both row sets are swapped in per step, the SDXL pipeline renders, and
norm/drift are those of the first encoder's rows (the scores.json columns) plus norm_2/drift_2 for the second's.

Extra per-file scores (e.g. a judge model that tells whether the concept is in an image) plug in as `judges`:
callables `(step, {prompt: [images]}) -> {column: value}`; their columns join scores.csv/scores.json. When --model
is a toy world (models/toy-world), its own judge is added: judge_concept, judge_edit, judge_score
(ppti.world.meaning).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .config import TrainConfig, parse_config
from .evaluation.clip import DEFAULT_CLIP, ClipScorer, EvaluationError, mean_cosine
from .evaluation.prompts import EvaluationPrompts, builtin_prompts, read_prompts_file, without_placeholder
from .evaluation.scores import Row, recommend, write_tables
from .runfiles import (BEST_FILE, CONTACT_SHEET, EMBEDDING_SUFFIXES, EVALUATION_DIR, ROW_FILE_SUFFIXES, SCORES_PLOT,
                       embeddings_file, is_sdxl_run, saved_steps, second_encoder_path)
from .runfiles import load_line as load_file_line

log = logging.getLogger("ppti")

Judge = Callable[[int, dict], dict]


@dataclass(frozen=True)
class Settings:
    run_dir: Path
    model: str
    clip_model: Optional[str] = None  # None: DEFAULT_CLIP of the run's language
    config_file: Optional[Path] = None  # None: run_dir/train_config.yaml
    train_data_dir: Optional[str] = None  # None: the run's
    prompts_file: Optional[str] = None
    num_images: int = 2
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    seed: Optional[int] = None  # None: the run's seed (as its validation grids)
    out_dir: Optional[Path] = None  # None: run_dir/evaluation
    copy_best: bool = False
    mixed_precision: Optional[str] = None  # None: the run's


@dataclass(frozen=True)
class SavedFile:
    step: Optional[int]  # None: the final learned_embeds file
    path: Path
    vectors: np.ndarray  # (num_vectors, dim)
    vectors_2: Optional[np.ndarray] = None  # SDXL: the text_encoder_2 rows (learned_embeds_2-...)


@dataclass(frozen=True)
class Result:
    rows: list[Row]
    recommended: Optional[Row]
    written: list[Path]
    seconds_per_file: float


# ------------------------------------------------------------------------------------------------------------
# the run's files and settings
# ------------------------------------------------------------------------------------------------------------
def saved_paths(run_dir: Path) -> list[tuple[Optional[int], Path]]:
    """(step, path) of every learned_embeds-steps-N file by step, then the final learned_embeds file (step None);
    one file per step, the first of EMBEDDING_SUFFIXES present."""
    if not run_dir.is_dir():
        raise EvaluationError(f"RUN_DIR {run_dir}: no such directory; give a training --output_dir")
    final = embeddings_file(run_dir, suffixes=EMBEDDING_SUFFIXES)
    found = saved_steps(run_dir, EMBEDDING_SUFFIXES) + ([(None, final)] if final else [])
    if not found:
        raise EvaluationError(f"RUN_DIR {run_dir}: no saved embeddings (learned_embeds-steps-N or learned_embeds "
                              f"with suffix {'/'.join(EMBEDDING_SUFFIXES)}); train with --save_steps N, or point at "
                              "the run's --output_dir")
    return found


def read_saved(paths: Sequence[tuple[Optional[int], Path]], num_vectors: int, sdxl: bool = False) -> list[SavedFile]:
    """Every file read (any format tools/convert.py reads) and checked to hold one embedding of the run's shape;
    with `sdxl`, its learned_embeds_2 partner too."""
    files = []
    for step, path in paths:
        vectors_2 = None
        if sdxl:
            second = second_encoder_path(path)
            if not second.is_file():
                raise EvaluationError(f"{second}: no such file, but {path.name} is from an SDXL run, which saves the "
                                      "text_encoder_2 rows of each step there; restore it, or move both files away")
            vectors_2 = read_one(second, num_vectors)
        files.append(SavedFile(step, path, read_one(path, num_vectors), vectors_2))
    return files


def read_one(path: Path, num_vectors: int) -> np.ndarray:
    from .embeddings import read_embeddings

    embeddings = read_embeddings(path)
    if len(embeddings) != 1 or embeddings[0].part is not None:
        raise EvaluationError(f"{path}: holds {len(embeddings)} embedding(s) "
                              f"({', '.join(e.token for e in embeddings)}); expected the run's one embedding")
    vectors = np.asarray(embeddings[0].vectors, dtype=np.float32).reshape(-1, embeddings[0].vectors.shape[-1])
    if len(vectors) != num_vectors:
        raise EvaluationError(f"{path}: {len(vectors)} vector(s), but the run trained --num_vectors "
                              f"{num_vectors}; is it from another run?")
    return vectors


def _resolved(text: str, key: str) -> Optional[str]:
    match = re.search(rf"^# resolved {key}: (\S+)$", text, flags=re.MULTILINE)
    return match.group(1) if match else None


def run_config(settings: Settings, out_dir: Path) -> TrainConfig:
    """The run's training config (train_config.yaml, with the seed and language it resolved), pointed at --model and
    set up to evaluate: nothing logged or written into the run, the VAE kept for rendering."""
    path = settings.config_file or settings.run_dir / "train_config.yaml"
    if not Path(path).is_file():
        raise EvaluationError(f"{path}: no such file; evaluate.py reads the run's settings from the "
                              "train_config.yaml training writes (give --config FILE with the run's flags otherwise)")
    config = parse_config(["--config", str(path)])
    text = Path(path).read_text(encoding="utf-8")
    seed = config.seed if config.seed is not None else _resolved(text, "seed")
    if seed is None:
        raise EvaluationError(f"{path}: no seed (neither 'seed:' nor a '# resolved seed:' line); add the run's "
                              "seed to the file")
    return dataclasses.replace(
        config, pretrained_model_name_or_path=settings.model, seed=int(seed),
        language=_resolved(text, "language") or config.language,
        train_data_dir=settings.train_data_dir or config.train_data_dir, output_dir=str(out_dir), report_to="none",
        validation_prompt=[config.placeholder_token],  # (setup keeps the VAE only when something renders)
        eval_steps=config.eval_steps or 1, early_stopping=False, gradient_checkpointing=False,
        enable_xformers_memory_efficient_attention=False, push_to_hub=False, resume_from_checkpoint=None,
        mixed_precision=settings.mixed_precision or config.mixed_precision,
    )


def training_images(data_dir: str) -> list:
    """The run's training images, as PIL RGB images (what the image similarity compares with)."""
    from PIL import Image

    from .data import find_image_files, to_rgb

    images = []
    for path in find_image_files(Path(data_dir))[0]:
        try:
            with Image.open(path) as image:
                images.append(to_rgb(image))
        except OSError:
            continue  # training skipped it too
    return images


# ------------------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Session:
    """Everything scoring needs, built once: the run set up as in training (one model load), its files, the
    prompts, the CLIP and the fixed comparison points."""

    settings: Settings
    run: object  # ppti.train.Run: its rows are what the pipeline's text encoder reads
    files: list[SavedFile]
    prompts: EvaluationPrompts
    clip: ClipScorer
    reference_features: np.ndarray  # (images, P): the training images
    edit_features: np.ndarray  # (edits, P): the edit prompts without the placeholder
    initial: list  # (num_vectors, D) per text encoder: the initializer's rows, for the drift
    seed: int


def open_session(settings: Settings, out_dir: Path) -> Session:
    from .distributed import DistContext
    from .model_source import resolve_for_config
    from .models import load_components
    from .train import setup

    config = run_config(settings, out_dir)
    sdxl = is_sdxl_run(settings.run_dir)
    files = read_saved(saved_paths(settings.run_dir), config.num_vectors, sdxl)  # all checked before any model loads
    check_before_loading(config)
    custom_prompts = read_prompts_file(settings.prompts_file) if settings.prompts_file else None
    clip = ClipScorer(settings.clip_model or DEFAULT_CLIP.get(config.language, DEFAULT_CLIP["en"]))

    source = resolve_for_config(config)  # a diffusers folder / single file: the trainer's cached conversion
    components = load_components(source.folder, source.tokenizer_name)  # the one load
    if components.is_sdxl != sdxl:  # an SDXL run has two row sets per step (learned_embeds[_2]), others one
        raise EvaluationError(
            f"{second_encoder_path(files[0].path)}: no such file, but --model {settings.model} is SDXL (two text "
            "encoders, one file each); pass the --model the run trained on" if components.is_sdxl else
            f"{settings.run_dir}: holds learned_embeds_2 files (an SDXL run), but --model {settings.model} is not "
            "SDXL; pass the --model the run trained on")
    quiet = log.level
    log.setLevel(logging.WARNING)  # setup describes a training run: not what happens here
    try:
        run = setup(config, DistContext(), components)
    finally:
        log.setLevel(quiet)
    layers = run.conditioning.row_layers
    for f in files:
        for path, vectors, layer in zip((f.path, second_encoder_path(f.path)), row_sets(f), layers):
            if vectors.shape[1] != layer.rows.shape[1]:
                raise EvaluationError(f"{path}: an embedding of {vectors.shape[1]} dimensions, but the text encoder "
                                      f"of --model {settings.model} is {layer.rows.shape[1]} wide: it was trained for "
                                      "another model. Pass the --model the run trained on")
    prompts = custom_prompts or builtin_prompts(config.learnable_property, run.language)
    return Session(
        settings, run, label_final(files, run.max_train_steps), prompts, clip,
        reference_features=clip.image_features(training_images(config.train_data_dir)),
        edit_features=clip.text_features([without_placeholder(p) for p in prompts.edits]),
        initial=[layer.weight.numpy()[layer.placeholder_ids].astype(np.float32) for layer in layers],
        seed=settings.seed if settings.seed is not None else run.seed,
    )


def check_before_loading(config: TrainConfig) -> None:
    """What train.setup would refuse once the model is loaded (the paths, a --mixed_precision this device cannot
    run), refused before the CLIP and the model load."""
    from .config import ConfigError, check_paths
    from .precision import resolve_precision

    problems = check_paths(config)
    if problems:
        raise ConfigError("; ".join(problems))
    resolve_precision(config.mixed_precision)


def row_sets(f: SavedFile) -> list[np.ndarray]:
    """The file's rows per text encoder (one, or SDXL's two)."""
    return [f.vectors] if f.vectors_2 is None else [f.vectors, f.vectors_2]


def embedding_scores(f: SavedFile, initial: list) -> dict:
    """norm/drift (means over the vectors) of each row set; the second encoder's as norm_2/drift_2."""
    from .evaluation.embedding import drift, norms

    scores = {}
    for suffix, vectors, start in zip(ROW_FILE_SUFFIXES, row_sets(f), initial):
        scores[f"norm{suffix}"] = float(norms(vectors).mean())
        scores[f"drift{suffix}"] = float(drift(vectors, start).mean())
    return scores


def score_file(session: Session, f: SavedFile, judges: Sequence[Judge]) -> tuple[Row, list]:
    """Swap the file's vectors in, then its row of scores and its pictures (reconstruction images, then the first
    image of each edit prompt)."""
    import paddle

    from .train import micro_step_loss
    from .validation import render

    run, prompts, settings, config = session.run, session.prompts, session.settings, session.run.config
    for layer, vectors in zip(run.conditioning.row_layers, row_sets(f)):  # the swap: the pipeline's text
        layer.rows.set_value(paddle.to_tensor(vectors))  # encoder(s) read these rows
    loss = run.evaluation.frozen.loss(lambda batch: micro_step_loss(run, batch))
    rendered = {
        template: render(run.components.pipeline, template.format(config.placeholder_token), settings.num_images,
                         session.seed, config.resolved_height, config.resolved_width,
                         num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale)
        for template in [prompts.reconstruction, *prompts.edits]
    }
    recon = rendered[prompts.reconstruction]
    image_similarity = mean_cosine(session.clip.image_features(recon), session.reference_features)
    text_similarity = float(np.mean([mean_cosine(session.clip.image_features(rendered[p]),
                                                 session.edit_features[i:i + 1]) for i, p in enumerate(prompts.edits)]))
    embedding = embedding_scores(f, session.initial)
    norm, drift = embedding.pop("norm"), embedding.pop("drift")
    extra = {**embedding, **{k: v for judge in judges for k, v in judge(f.step, rendered).items()}}
    row = Row(f.step, image_similarity, text_similarity, float(np.float32(loss)), norm, drift, f.path.name, extra)
    return row, recon + [rendered[p][0] for p in prompts.edits]


def evaluate_run(settings: Settings, judges: Sequence[Judge] = ()) -> Result:
    """Score every saved file of the run; write the tables, plot and contact sheet (and --copy_best)."""
    from tqdm.auto import tqdm

    out_dir = settings.out_dir or settings.run_dir / EVALUATION_DIR
    session = open_session(settings, out_dir)
    judges = [*judges, *world_judges(session)]
    rows, pictures = [], []
    started = time.perf_counter()
    for f in tqdm(session.files, desc="Saved steps", dynamic_ncols=True):
        row, images = score_file(session, f, judges)
        rows.append(row)
        pictures.append(images)
    seconds_per_file = (time.perf_counter() - started) / len(rows)
    recommended = recommend(rows)
    written = write_outputs(out_dir, rows, pictures, settings.num_images, recommended)
    if settings.copy_best and recommended is not None:
        best = session.files[rows.index(recommended)]
        written.extend(copy_best(settings.run_dir, session.run.config.placeholder_token, row_sets(best)))
    return Result(rows, recommended, written, seconds_per_file)


def world_judges(session: Session) -> list[Judge]:
    """The toy world's judge (ppti.world.meaning) when --model is a toy world, else none."""
    from .world.meaning import is_world, world_judge

    settings, config, prompts = session.settings, session.run.config, session.prompts
    if not is_world(settings.model):
        return []
    try:
        return [world_judge(settings.model, config.learnable_property, training_images(config.train_data_dir),
                            [prompts.reconstruction, *prompts.edits])]
    except ValueError as exc:
        raise EvaluationError(f"--model {settings.model} is a toy world, scored by its judge too: {exc}") from None


def write_outputs(out_dir: Path, rows: list[Row], pictures: list, num_reconstruction: int,
                  recommended: Optional[Row]) -> list[Path]:
    from .atomic import atomic_path
    from .evaluation.drawing import PANELS, contact_sheet, plot

    written = write_tables(out_dir, rows, recommended)
    panels = PANELS + ((("judge_score", "judge score (toy world: concept present and prompt followed)"),)
                       if rows and "judge_score" in rows[0].extra else ())
    for name, image in ((SCORES_PLOT, plot(rows, recommended, panels)),
                        (CONTACT_SHEET, contact_sheet(rows, pictures, num_reconstruction, recommended))):
        with atomic_path(out_dir / name) as tmp:
            image.save(tmp, format="PNG")
        written.append(out_dir / name)
    return written


def label_final(files: list[SavedFile], last_step: int) -> list[SavedFile]:
    """The final learned_embeds file is dropped when it equals a saved step (scored once, as that step), else it
    is labelled with the run's last step."""
    if not files or files[-1].step is not None:
        return files
    *steps, final = files
    if any(np.array_equal(f.vectors, final.vectors) for f in steps):
        return steps
    return steps + [dataclasses.replace(final, step=last_step)]


def copy_best(run_dir: Path, token: str, rows: Sequence[np.ndarray]) -> list[Path]:
    """BEST_FILE (and SDXL's learned_embeds_2-best.pdparams for text_encoder_2)."""
    from .embeddings import write_embeddings

    return [write_embeddings(second_encoder_path(run_dir / BEST_FILE) if i else run_dir / BEST_FILE,
                             {token: vectors}, fmt="pdparams") for i, vectors in enumerate(rows)]


def load_line(run_dir: Path, row: Row) -> str:
    """The line that loads the recommended embedding into a ppdiffusers pipeline (SDXL: one per text encoder)."""
    return load_file_line(run_dir / row.file)
