"""The training configuration: one typed, validated, frozen object built from defaults, YAML and the command line.

Flag names, defaults and meanings are those of the ppdiffusers textual-inversion example, so its README commands
run verbatim; where the example has a bug (see the notes on each field) ppti does what the help text promises.
Every value is checked here, before a single weight is loaded, and all problems are reported at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .buckets import STEP as BUCKET_STEP
from .buckets import bucket_sizes, default_sides
from .templates import caption_template_problem, parse_template_file

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
DEFAULT_MAX_TRAIN_STEPS = 5000  # the example's effective default when neither length flag is given
# Denoising steps of the validation grids (the diffusers example's validation setting), and the default
# --num_inference_steps of tools/generate.py and tools/evaluate.py: they render what the run's grids showed.
NUM_INFERENCE_STEPS = 25
# Largest --resolution/--height/--width: Stable Diffusion models train at 512-1024 pixels, and memory grows with the
# square of the side (at 2048 the UNet's self-attention alone needs tens of GB); larger values fail late, or the
# kernel kills the process.
MAX_IMAGE_SIDE = 2048
# Most vectors any supported model's prompt can hold: Taiyi (BERT) pads prompts to 512 tokens, less [CLS] and [SEP].
# The exact limit of a model (77-token CLIP prompts: about 70) is checked from its tokenizer before weights load.
MAX_NUM_VECTORS = 510


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the flag and what to do."""


def _f(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field carrying its command-line help text. secret=True marks a credential: left out of repr,
    to_dict() and so of train_config.yaml, checkpoints and logs (see SECRET_FIELDS)."""
    shown = not extra.get("secret", False)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), repr=shown, metadata={"help": help, **extra})
    return field(default=default, repr=shown, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    # --- model -----------------------------------------------------------------------------------------
    pretrained_model_name_or_path: Optional[str] = _f(
        None, "Path to pretrained model or model identifier from local models.", required=True
    )
    tokenizer_name: Optional[str] = _f(None, "Pretrained tokenizer name or path if not the same as model_name.")
    model_cache_dir: Optional[str] = _f(
        None, "Where a diffusers folder or single .safetensors/.ckpt model is converted once and reused (default: "
        "~/.cache/ppti/models).",
    )
    use_ema: bool = _f(False, "Train on the EMA copy of the UNet a single-file checkpoint holds (default: non-EMA).")
    prediction_type: Optional[Literal["epsilon", "v_prediction"]] = _f(
        None, "Prediction type of a single-file model (default: from its architecture; SD-2.x files v_prediction).",
    )
    language: Literal["auto", "en", "zh", "zh_en"] = _f(
        "auto",
        "Prompt-template language. auto: from the model's tokenizer/text encoder (CLIP -> en, BERT -> zh, "
        "XLM-R -> zh_en), falling back to the model name ('chinese-en' -> zh_en, 'chinese' -> zh).",
    )
    # --- concept ---------------------------------------------------------------------------------------
    train_data_dir: Optional[str] = _f(None, "A folder containing the training data.", required=True)
    placeholder_token: Optional[str] = _f(None, "A token to use as a placeholder for the concept.", required=True)
    initializer_token: Optional[str] = _f(
        None, "A token (or word) to use as initializer; several sub-tokens are averaged.", required=True
    )
    learnable_property: Literal["object", "style"] = _f("object", "Choose between 'object' and 'style'.")
    templates: Optional[str] = _f(
        None, "A UTF-8 text file with one prompt template per line, {} marking the placeholder (e.g. "
        "'一幅{}风格的画'); replaces the built-in templates of --learnable_property and --language.",
    )
    caption_source: Literal["templates", "files", "both"] = _f(
        "templates", "Training prompts: the templates; each image's caption (IMAGE.txt beside it or metadata.jsonl "
        "file_name/text); or both, drawn uniformly per image (templates may use {caption}).",
    )
    caption_extension: str = _f(".txt", "Extension of the caption file beside each image (IMAGE.png -> IMAGE.txt).")
    caption_template: Optional[str] = _f(
        None, "How a caption becomes a prompt, e.g. 'a photo of {}, {caption}' ({} is the placeholder). Without it "
        "the caption is the prompt: the placeholder goes where it writes {} or the placeholder token, else in front "
        "('<tok>, caption').",
    )
    num_vectors: int = _f(1, "How many textual inversion vectors shall be used to learn the concept.")
    repeats: int = _f(100, "How many times to repeat the training data.")
    # --- images ----------------------------------------------------------------------------------------
    resolution: int = _f(512, "Image size used for --height/--width when they are not given.")
    height: Optional[int] = _f(None, "Height of the training images (multiple of 8); defaults to --resolution.")
    width: Optional[int] = _f(None, "Width of the training images (multiple of 8); defaults to --resolution.")
    center_crop: bool = _f(False, "Center-crop images to the target aspect ratio before resizing.")
    buckets: bool = _f(
        False, "Aspect-ratio buckets: every image keeps its aspect ratio at about --resolution² pixels (sides multiples "
        "of 64, the closest bucket, the small excess centre-cropped); each micro-batch is one bucket.",
    )
    bucket_min_side: Optional[int] = _f(None, "Smallest bucket side with --buckets (default: --resolution / 2).")
    bucket_max_side: Optional[int] = _f(None, "Largest bucket side with --buckets (default: --resolution x 2).")
    # --- optimisation ----------------------------------------------------------------------------------
    train_batch_size: int = _f(16, "Batch size (per device) for the training dataloader.")
    num_train_epochs: Optional[int] = _f(
        None, "Number of epochs; decides the run length when --max_train_steps is not given."
    )
    max_train_steps: Optional[int] = _f(
        None,
        f"Total number of optimizer steps. Wins over --num_train_epochs when both are given; "
        f"{DEFAULT_MAX_TRAIN_STEPS} when neither is.",
    )
    gradient_accumulation_steps: int = _f(1, "Number of micro-batches to accumulate before an optimizer step.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    learning_rate: float = _f(1e-4, "Initial learning rate (after the potential warmup period) to use.")
    scale_lr: bool = _f(
        False, "Multiply the learning rate by gradient_accumulation_steps * train_batch_size * number of cards."
    )
    lr_scheduler: Literal[LR_SCHEDULERS] = _f("constant", "The learning-rate schedule.")  # type: ignore[valid-type]
    lr_warmup_steps: int = _f(500, "Number of optimizer steps for the warmup in the lr scheduler.")
    lr_num_cycles: int = _f(1, "Number of hard resets of the lr in cosine_with_restarts scheduler.")
    lr_power: float = _f(1.0, "Power factor of the polynomial scheduler.")
    adam_beta1: float = _f(0.9, "The beta1 parameter for the Adam optimizer.")
    adam_beta2: float = _f(0.999, "The beta2 parameter for the Adam optimizer.")
    adam_weight_decay: float = _f(1e-2, "Weight decay to use.")
    adam_epsilon: float = _f(1e-08, "Epsilon value for the Adam optimizer.")
    max_grad_norm: float = _f(-1.0, "Max gradient norm of the trained rows (clipping); <= 0 disables it.")
    noise_offset: float = _f(0.0, "The scale of noise offset.")
    seed: Optional[int] = _f(None, "A seed for reproducible training (0 is a seed like any other).")
    dataloader_num_workers: int = _f(0, "Number of subprocesses to use for data loading (0: main process).")
    enable_xformers_memory_efficient_attention: bool = _f(
        False, "Use memory-efficient attention (needs a GPU build of Paddle that supports it)."
    )
    cache_latents: bool = _f(
        True, "Encode every image variant (as is, flipped) with the VAE once and sample its cached posterior each "
        "step (same distribution as encoding every step). --no_cache_latents encodes every step, like the "
        "ppdiffusers example.",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = _f(
        "no", "Run the frozen UNet and VAE in fp16 (with loss scaling) or bf16; the trained rows and optimizer "
        "state stay float32. Needs a device whose Paddle build has half-precision kernels (a GPU; bf16: Ampere+).",
    )
    deterministic: bool = _f(
        False, "GPU: a run and its resumed continuation repeat bit for bit (same GPU model, driver and Paddle "
        "build). Sets FLAGS_cudnn_deterministic and FLAGS_embedding_deterministic, sets the FLAGS_cudnn_deterministic "
        "environment variable so ppdiffusers uses plain math attention instead of memory-efficient attention (fp32, "
        "and half precision where flash attention does not run), and gives the UNet a nearest upsampling without "
        "atomic adds. Costs time and memory: math attention keeps batch x heads x tokens^2 fp32 values per "
        "attention layer, for SD-1.5 about 2.7 GiB more per image at 512 px, 13.5 GiB at 768 px, 43 GiB at 1024 px "
        "(SDXL at 1024 px: 11 GiB; --gradient_checkpointing keeps a few layers' worth). CPU runs repeat without it. "
        "Check it on your GPU: python tools/selfcheck.py.",
    )
    # --- outputs ---------------------------------------------------------------------------------------
    output_dir: str = _f("text-inversion-model", "Where embeddings, logs and the pipeline are written.")
    overwrite_output_dir: bool = _f(
        False, "Train into an --output_dir that holds an earlier run: that run's files (learned_embeds*, "
        "checkpoints/, validation/, logs, train_config.yaml, a saved pipeline) are removed first, so the two runs "
        "never mix. Without it such a folder is refused (unless --resume_from_checkpoint continues the run).",
    )
    save_steps: int = _f(500, "Save learned_embeds-steps-N.pdparams every X optimizer steps.")
    save_format: Literal["pdparams", "safetensors", "both"] = _f(
        "pdparams",
        "Embedding file format: pdparams (ppdiffusers), safetensors (diffusers learned_embeds.safetensors, "
        "loads in PyTorch tools), or both.",
    )
    only_save_embeds: bool = _f(
        True, "Save only the embeddings (default). --no-only_save_embeds also saves the full pipeline."
    )
    save_full_pipeline: bool = _f(
        False, "Also save the whole pipeline (new tokenizer + text encoder) to output_dir; same as "
        "--no-only_save_embeds.",
    )
    logging_dir: str = _f("logs", "VisualDL/TensorBoard log directory, relative to output_dir.")
    report_to: Literal["visualdl", "tensorboard", "none"] = _f("visualdl", "Where to log scalars and images.")
    # --- validation ------------------------------------------------------------------------------------
    validation_prompt: Optional[list[str]] = _f(
        None, "A prompt used during validation to check the concept is learned. Repeat the flag (or give a YAML "
        "list) for several prompts; each gets one row of the grid output_dir/validation/step-N.png.",
    )
    num_validation_images: int = _f(4, "Number of images generated for each validation prompt.")
    validation_epochs: int = _f(50, "Run validation every X epochs.")
    validation_steps: Optional[int] = _f(None, "Run validation every X steps (in addition to --validation_epochs).")
    # --- evaluation (see ppti/evaluation/) -------------------------------------------------------------
    eval_steps: int = _f(
        100, "Every X steps, log eval/loss: the denoising loss on a frozen evaluation batch (latents, noise, "
        "timesteps and prompts drawn once from the seed), plus embedding/norm and embedding/drift. 0 disables it. "
        "The default costs 2-4% of training time (benchmarks/bench_eval.py).",
    )
    eval_batch_size: int = _f(8, "Examples in the frozen evaluation batch.")
    early_stopping: bool = _f(
        False, "Stop when eval/loss has converged: the standard deviation of the last --early_stopping_window "
        "values is below --early_stopping_threshold times their mean. Needs --eval_steps.",
    )
    early_stopping_window: int = _f(10, "How many recent eval/loss values --early_stopping looks at.")
    early_stopping_threshold: float = _f(
        0.005, "--early_stopping stops when std/mean of the window's eval/loss values is below this."
    )
    # --- checkpoints -----------------------------------------------------------------------------------
    checkpointing_steps: int = _f(
        500,
        "Save a checkpoint of the training state every X updates. These checkpoints are only suitable for resuming "
        "training using `--resume_from_checkpoint`. 0 disables them.",
    )
    checkpoints_total_limit: Optional[int] = _f(None, "Max number of checkpoints to store.")
    resume_from_checkpoint: Optional[str] = _f(
        None,
        "Whether training should be resumed from a previous checkpoint. Use a path saved by "
        "`--checkpointing_steps`, or `\"latest\"` to automatically select the last available checkpoint.",
    )
    # --- hub -------------------------------------------------------------------------------------------
    push_to_hub: bool = _f(False, "Upload output_dir to the Hugging Face Hub at the end of training.")
    hub_token: Optional[str] = _f(
        None, "The token to use to push to the Model Hub. Prefer `huggingface-cli login` or the HF_TOKEN environment "
        "variable: a token typed here shows in the process list and the shell history. Never written to any file, "
        "log or upload.", secret=True,
    )
    hub_model_id: Optional[str] = _f(None, "The Hub repository name (default: the name of output_dir).")

    # ---------------------------------------------------------------------------------------------------
    @property
    def resolved_height(self) -> int:
        """--height, or --resolution when --height is not given (independently of --width)."""
        return self.height if self.height is not None else self.resolution

    @property
    def resolved_width(self) -> int:
        return self.width if self.width is not None else self.resolution

    def bucket_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every aspect-ratio bucket; empty without --buckets."""
        if not self.buckets:
            return []
        low, high = default_sides(self.resolution)
        return bucket_sizes(self.resolution, self.bucket_min_side or low, self.bucket_max_side or high)

    @property
    def saves_full_pipeline(self) -> bool:
        return self.save_full_pipeline or not self.only_save_embeds

    @property
    def logging_path(self) -> Path:
        return Path(self.output_dir) / self.logging_dir

    def placeholder_tokens(self) -> list[str]:
        """`<tok>`, `<tok>_1`, ... `<tok>_{n-1}`: the naming ppdiffusers/diffusers loaders expand to."""
        return [self.placeholder_token] + [f"{self.placeholder_token}_{i}" for i in range(1, self.num_vectors)]

    def placeholder_text(self) -> str:
        """What stands for the concept inside a prompt: every vector's token, so every row trains."""
        return " ".join(self.placeholder_tokens())

    @property
    def validation_prompts(self) -> list[str]:
        """--validation_prompt as a list (a plain string given in code counts as one prompt)."""
        prompts = self.validation_prompt or []
        return [prompts] if isinstance(prompts, str) else list(prompts)

    def to_dict(self) -> dict[str, Any]:
        """Every value but the credentials (SECRET_FIELDS): what train_config.yaml and checkpoints hold."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in SECRET_FIELDS}

    def problems(self) -> list[str]:
        """Every problem with the values, each naming its flag; empty when the config is valid."""
        out: list[str] = []
        out += self._encoding_problems()
        out += control_character_problems(self)
        for name in ("pretrained_model_name_or_path", "train_data_dir", "placeholder_token", "initializer_token"):
            if not getattr(self, name):
                out.append(f"--{name} is required")
        if not self.output_dir:
            out.append("--output_dir is empty; give a folder such as outputs/my-concept")
        if not self.logging_dir:
            out.append("--logging_dir is empty; give a folder name such as logs")
        if self.placeholder_token and any(c.isspace() for c in self.placeholder_token):
            out.append(
                f"--placeholder_token {self.placeholder_token!r} contains white space; use one word such as "
                "'<cat-toy>'"
            )
        if self.initializer_token is not None and not self.initializer_token.strip():
            out.append("--initializer_token is empty; give a word close to the concept, e.g. 'toy' or 'style'")
        elif self.initializer_token and self.placeholder_token and any(
                word in self.placeholder_tokens()[:MAX_NUM_VECTORS] for word in self.initializer_token.split()):
            out.append(f"--initializer_token {self.initializer_token!r} is the placeholder itself, a new word "
                       "without an embedding yet; give an existing word close to the concept (one the tokenizer already knows)")
        if self.templates is not None and not _has_control_characters(self.templates):
            out += parse_template_file(self.templates)[1]
        out += caption_problems(self)
        out += bucket_problems(self)
        if any(not prompt.strip() for prompt in self.validation_prompts):
            out.append("--validation_prompt is empty; give a prompt such as 'a photo of a <cat-toy>'")
        for name in ("num_vectors", "repeats", "resolution", "train_batch_size", "gradient_accumulation_steps",
                     "save_steps", "num_validation_images", "validation_epochs", "lr_num_cycles"):
            if getattr(self, name) < 1:
                out.append(f"--{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("num_train_epochs", "max_train_steps", "height", "width", "validation_steps",
                     "checkpoints_total_limit", "bucket_min_side", "bucket_max_side"):
            value = getattr(self, name)
            if value is not None and value < 1:
                out.append(f"--{name} must be >= 1 (got {value})")
        for name in ("lr_warmup_steps", "dataloader_num_workers", "checkpointing_steps", "eval_steps"):
            if getattr(self, name) < 0:
                out.append(f"--{name} must be >= 0 (got {getattr(self, name)})")
        if self.num_vectors > MAX_NUM_VECTORS:
            out.append(f"--num_vectors {self.num_vectors}: the placeholders cannot fit the prompt length; at most "
                       f"{MAX_NUM_VECTORS} with any supported model (77-token CLIP prompts: about 70)")
        # (each side once: --resolution only when it stands in for --height or --width)
        sides = [("resolution", self.resolution)] if self.height is None or self.width is None else []
        sides += [(name, getattr(self, name)) for name in ("height", "width") if getattr(self, name) is not None]
        for name, value in sides:
            if value >= 1 and value % 8:
                used = [side for side in ("height", "width") if getattr(self, side) is None]
                source = f"--{name}" + (f" (used for {' and '.join(used)})" if name == "resolution" else "")
                options = " or ".join(str(v) for v in sorted({max(8, value // 8 * 8), value // 8 * 8 + 8}))
                out.append(f"{source} = {value} is not a multiple of 8 (the VAE downsamples by 8); use {options}")
            if value > MAX_IMAGE_SIDE:
                out.append(f"--{name} {value} is above the maximum {MAX_IMAGE_SIDE} (Stable Diffusion models train "
                           "at 512-1024; memory grows with the square of the side)")
        if self.learning_rate <= 0 or not math.isfinite(self.learning_rate):
            out.append(f"--learning_rate must be a positive number (got {self.learning_rate})")
        if not 0 <= self.adam_beta1 < 1 or not 0 <= self.adam_beta2 < 1:
            out.append("--adam_beta1 and --adam_beta2 must be in [0, 1)")
        if self.adam_epsilon <= 0:
            out.append(f"--adam_epsilon must be > 0 (got {self.adam_epsilon})")
        if self.adam_weight_decay < 0:
            out.append(f"--adam_weight_decay must be >= 0 (got {self.adam_weight_decay})")
        if self.noise_offset < 0:
            out.append(f"--noise_offset must be >= 0 (got {self.noise_offset})")
        out += self.evaluation_problems()
        if self.seed is not None and not 0 <= self.seed < 2**32:
            out.append(f"--seed must be in [0, 2**32) (got {self.seed})")
        return out

    def evaluation_problems(self) -> list[str]:
        """Problems with the --eval_* / --early_stopping* values."""
        out = []
        if self.eval_batch_size < 1:
            out.append(f"--eval_batch_size must be >= 1 (got {self.eval_batch_size})")
        if self.early_stopping and self.eval_steps == 0:
            out.append("--early_stopping watches eval/loss: give --eval_steps > 0")
        if self.early_stopping_window < 2:
            out.append(f"--early_stopping_window must be >= 2 (got {self.early_stopping_window})")
        if not self.early_stopping_threshold > 0:
            out.append(f"--early_stopping_threshold must be > 0 (got {self.early_stopping_threshold})")
        return out

    def _encoding_problems(self) -> list[str]:
        """Text the shell passed in another encoding than UTF-8 (Python keeps such bytes as lone surrogates): it
        can be neither tokenized nor written to train_config.yaml."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            for text in value if isinstance(value, list) else [value]:
                try:
                    text.encode("utf-8") if isinstance(text, str) else None
                except UnicodeEncodeError:
                    shown = "..." if f.name in SECRET_FIELDS else text.encode("utf-8", "backslashreplace").decode()
                    out.append(f"--{f.name} '{shown}' is not valid UTF-8 "
                               "(the terminal passed bytes in another encoding); set a UTF-8 locale, e.g. "
                               "LANG=C.UTF-8, and type it again")
                    break
        return out


# Credentials (fields marked secret=True): never written to train_config.yaml, checkpoints, logs or uploads.
SECRET_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata.get("secret"))


def caption_problems(config: TrainConfig) -> list[str]:
    out = []
    uses_captions = config.caption_source != "templates"
    extension = config.caption_extension
    if not extension.startswith(".") or len(extension) < 2 or any(c in extension for c in "/\\") \
            or _has_control_characters(extension):
        out.append(f"--caption_extension {extension!r} must be a file extension: a dot, then letters, e.g. '.txt' "
                   "(no '/')")
    if config.caption_template is not None:
        if not uses_captions:
            out.append("--caption_template needs --caption_source files or both (templates mode reads no captions)")
        problem = caption_template_problem(config.caption_template)
        if problem:
            out.append(f"--caption_template {config.caption_template!r} {problem}")
    if config.templates is not None and config.caption_source != "both" \
            and not _has_control_characters(config.templates):
        with_caption = [t for t in parse_template_file(config.templates)[0] if "{caption}" in t]
        if with_caption:
            out.append(f"--templates {config.templates}: {with_caption[0]!r} uses {{caption}}; that needs "
                       "--caption_source both")
    return out


# Options naming files or folders: a control character there is a typo (or a forged request), and Python refuses
# paths with NUL deep inside (ValueError: embedded null byte); refused here, before any model loads.
PATH_OPTIONS = ("pretrained_model_name_or_path", "train_data_dir", "output_dir", "logging_dir", "tokenizer_name",
                "templates", "resume_from_checkpoint")


def _has_control_characters(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def control_character_problems(config: TrainConfig) -> list[str]:
    """A NUL in any text option, any control character in a path option."""
    out = []
    for f in fields(config):
        value = getattr(config, f.name)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and ("\0" in text or f.name in PATH_OPTIONS and _has_control_characters(text)):
                shown = text.encode("unicode_escape").decode("ascii")
                out.append(f"--{f.name} '{shown}' contains a control character (such as NUL); type it again")
                break
    return out


def bucket_problems(config: TrainConfig) -> list[str]:
    out = []
    for name in ("bucket_min_side", "bucket_max_side"):
        value = getattr(config, name)
        if value is not None and value >= 1 and value % BUCKET_STEP:
            out.append(f"--{name} {value} is not a multiple of {BUCKET_STEP}; use {max(64, value // 64 * 64)}")
    if not config.buckets:
        return out
    if config.height is not None or config.width is not None:
        out.append("--buckets sizes every image from --resolution; --height/--width do not apply (drop them)")
    if not out and config.resolution >= 1 and not config.bucket_sizes():
        out.append(f"--buckets: no bucket (sides multiples of 64 between --bucket_min_side and --bucket_max_side) "
                   f"has an area within 10% of --resolution {config.resolution}²; widen the sides or use a "
                   "resolution that is a multiple of 64")
    return out


# ------------------------------------------------------------------------------------------------------------
# Building a config: defaults <- YAML file <- command line
# ------------------------------------------------------------------------------------------------------------
def _field_kind(f: dataclasses.Field) -> tuple[type, tuple | None]:
    """(python type, choices) of a field, unwrapping Optional and Literal; list[str] fields are `list`."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return list, None
    if typing.get_origin(hint) is Literal:
        choices = tuple(a for arg in args for a in (arg if isinstance(arg, tuple) else (arg,)))
        return str, choices
    return hint, None


class _Parser(argparse.ArgumentParser):
    """argparse that answers a wrong flag with one line (and a suggestion) instead of the whole usage."""

    def error(self, message: str) -> "typing.NoReturn":
        import difflib
        import re

        hint = ""
        unknown = re.findall(r"(--[\w-]+)", message) if "unrecognized" in message else []
        if unknown:
            flags = [a for action in self._actions for a in action.option_strings]
            close = difflib.get_close_matches(unknown[0].split("=")[0], flags, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{message}{hint} (see --help)")


class _BooleanFlag(argparse.BooleanOptionalAction):
    """--x / --no-x, plus --no_x: the underscore spelling users copy from READMEs (e.g. --no_cache_latents)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.option_strings += [f"--no_{s[2:]}" for s in option_strings if s.startswith("--")]

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith(("--no-", "--no_")))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="train_textual_inversion.py",
        allow_abbrev=False,  # --max_train would silently mean --max_train_steps
        description="Textual inversion for Stable Diffusion with PaddlePaddle (ppti). Every flag can also be a key "
        "of the --config YAML file; flags given on the command line override the file.",
        argument_default=argparse.SUPPRESS,  # so that we know which flags the user actually gave
    )
    parser.add_argument("--config", type=str, help="YAML file with any of the flags below as keys.")
    for f in fields(TrainConfig):
        kind, choices = _field_kind(f)
        help_text = f.metadata["help"] + ("" if f.default is None else f" (default: {f.default})")
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings: "2-4% of ..." must stay literal
        if kind is bool:
            parser.add_argument(f"--{f.name}", action=_BooleanFlag, help=help_text)
        elif kind is list:  # repeatable: --validation_prompt "a" --validation_prompt "b"
            parser.add_argument(f"--{f.name}", action="append", type=str, help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=kind, choices=choices, help=help_text, metavar=None)
    return parser


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a YAML value's type against the field; ints are accepted for floats."""
    f = {f.name: f for f in fields(TrainConfig)}[name]
    kind, choices = _field_kind(f)
    if value is None and f.default is None and f.default_factory is dataclasses.MISSING:  # an Optional field
        return None
    if value is None:
        raise ConfigError(f"{source}: '{name}' must be {_KIND_NAMES.get(kind, kind.__name__)}, got null (leave the "
                          f"key out for the default {f.default!r})")
    if kind is list:  # a single string stays valid: it is a list of one
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{source}: '{name}' must be a string or a list of strings, got {value!r}")
        return items
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: '{name}' must be {_KIND_NAMES.get(kind, kind.__name__)}, got "
                          f"{type(value).__name__} {value!r}")
    if choices and value not in choices:
        raise ConfigError(f"{source}: '{name}' must be one of {', '.join(choices)} (got {value!r})")
    return value


def load_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--config {path}: is a directory; give the YAML file, e.g. configs/demo.yaml")
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path}: not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {path}: unknown key(s) {', '.join(unknown)}; see --help for the flags")
    return {k: _coerce(k, v, f"--config {path}") for k, v in data.items()}


def parse_config(argv: Optional[list[str]] = None) -> TrainConfig:
    """defaults <- YAML (--config) <- command line; raises ConfigError listing every problem."""
    parser = build_parser()
    cli = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = cli.pop("config", None)
    if config_file:
        values.update(load_yaml(config_file))
    values.update(cli)
    config = TrainConfig(**values)
    problems = config.problems()
    if problems:
        if len(problems) == 1:
            raise ConfigError(f"invalid configuration: {problems[0]}")
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return config


def to_yaml(config: TrainConfig, extra: Optional[dict[str, Any]] = None) -> str:
    """The resolved configuration as YAML that `--config` reads back (plus commented extras)."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
    if extra:
        text += "".join(f"# {k}: {v}\n" for k, v in extra.items())
    return text


def _looks_like_hub_id(name: str) -> bool:
    """'CompVis/stable-diffusion-v1-4' (downloadable by ppdiffusers) as opposed to a local path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def check_paths(config: TrainConfig) -> list[str]:
    """Problems with the paths the run reads and writes (existence, permissions), each naming its flag."""
    out: list[str] = []
    data = Path(config.train_data_dir)
    if not data.exists():
        out.append(f"--train_data_dir {data}: no such directory")
    elif not data.is_dir():
        out.append(f"--train_data_dir {data}: not a directory")
    from .model_source import path_problem  # (a folder, a single .safetensors/.ckpt file or a hub id)

    model_problem = path_problem(config.pretrained_model_name_or_path)
    if model_problem:
        out.append(model_problem)
    out_dir = Path(config.output_dir)
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
        out.append(f"--output_dir {out_dir}: cannot write there ({probe} is not a writable directory)")
    return out
