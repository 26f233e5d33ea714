"""Loading a Stable Diffusion model folder: checked layout, every weight verified, text-encoder family detected.

The pipeline is loaded through ppdiffusers' own `DiffusionPipeline.from_pretrained`, which picks each component's
class from model_index.json exactly as inference will; the same pipeline object later runs validation, so the UNet
and VAE are in memory once.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

log = logging.getLogger("ppti")

# text-encoder architecture -> (family, default language)
FAMILIES = {
    "CLIPTextModel": ("clip", "en"),
    "CLIPTextModelWithProjection": ("clip", "en"),
    "BertModel": ("bert", "zh"),
    "RobertaSeriesModelWithTransformation": ("xlmr", "zh_en"),
}
# family -> (the tokenizer class ppdiffusers builds for it, the files such a tokenizer folder holds)
TOKENIZERS = {
    "clip": ("CLIPTokenizer", ("vocab.json", "merges.txt")),
    "bert": ("BertTokenizer", ("vocab.txt",)),
    "xlmr": ("XLMRobertaTokenizer", ("sentencepiece.bpe.model",)),
}
# Prompt length of the real models of each family (SD-1.x CLIP 77, Taiyi BERT 512, AltDiffusion XLM-R 77), used
# when a tokenizer sets no model_max_length of its own.
FAMILY_MAX_LENGTH = {"clip": 77, "bert": 512, "xlmr": 77}
UNSET_MAX_LENGTH = 10**8  # paddlenlp's "no model_max_length" is a huge integer
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = ("text_encoder_2", "tokenizer_2")  # what an SDXL folder has besides REQUIRED_COMPONENTS


class ModelError(ValueError):
    """A problem with --pretrained_model_name_or_path (or --tokenizer_name) the user must fix."""


@dataclass
class Components:
    pipeline: Any  # the ppdiffusers pipeline holding all components (used for validation and saving)
    noise_scheduler: Any  # a DDPMScheduler built from the model's scheduler config (training noise schedule)
    family: str  # clip | bert | xlmr
    architecture: str
    use_attention_mask: bool
    source: str = ""  # what --pretrained_model_name_or_path was (model_source.ModelSource.summary), for the summary

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    @property
    def text_encoder(self):
        return self.pipeline.text_encoder

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def text_config(self) -> dict:
        config = self.text_encoder.config
        return config if isinstance(config, dict) else config.to_dict()

    @property
    def is_sdxl(self) -> bool:
        """Two text encoders (StableDiffusionXLPipeline): see conditioning.SDXLConditioning."""
        return getattr(self.pipeline, "text_encoder_2", None) is not None


def read_json(path: Path, flag: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{flag}: {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{flag}: {path} is not valid JSON ({exc})") from None


def check_model_folder(model_dir: Path) -> dict:
    """model_index.json and every component folder it names; returns model_index."""
    flag = f"--pretrained_model_name_or_path {model_dir}"
    index = read_json(model_dir / "model_index.json", flag)
    missing = [name for name in REQUIRED_COMPONENTS if name not in index]
    if missing:
        raise ModelError(f"{flag}: model_index.json names no {', '.join(missing)}; is this a Stable Diffusion model?")
    absent = [
        name for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value[0] and not (model_dir / name).is_dir()
    ]
    if absent:
        present = sorted(p.name for p in model_dir.iterdir() if p.is_dir())
        raise ModelError(
            f"{flag}: missing subfolder(s) {', '.join(absent)} named in model_index.json "
            f"(present: {', '.join(present) or 'none'}); re-download or re-save the model"
        )
    return index


def _named(index: dict, name: str) -> bool:
    """model_index.json names a component (not absent, not [null, null])."""
    value = index.get(name)
    return isinstance(value, list) and bool(value[0])


def check_sdxl_folder(model_dir: Path, index: dict) -> bool:
    """Whether the folder is an SDXL pipeline; a half-SDXL folder (one of its two text encoders or tokenizers
    missing, the refiner, a UNet without SDXL's text_time conditioning) is refused naming what is missing."""
    flag = f"--pretrained_model_name_or_path {model_dir}"
    named = [name for name in SDXL_COMPONENTS if _named(index, name)]
    if not named and "XL" not in str(index.get("_class_name", "")):
        return False
    missing = [name for name in ("text_encoder", "tokenizer", *SDXL_COMPONENTS) if not _named(index, name)]
    if missing:
        refiner = " (an SDXL refiner has no first text encoder and cannot learn a CLIP-L embedding)" \
            if "text_encoder" in missing else ""
        raise ModelError(f"{flag}: an SDXL pipeline needs text_encoder, tokenizer, text_encoder_2 and tokenizer_2; "
                         f"model_index.json names no {', '.join(missing)}{refiner}. Use the SDXL base model folder")
    config = read_json(model_dir / "text_encoder_2" / "config.json", flag)
    architecture = (config.get("architectures") or [None])[0]
    if architecture != "CLIPTextModelWithProjection":
        raise ModelError(f"{model_dir / 'text_encoder_2'}: SDXL's second text encoder must be a "
                         f"CLIPTextModelWithProjection (its pooled, projected output conditions the UNet), got "
                         f"{architecture}")
    unet = read_json(model_dir / "unet" / "config.json", flag)
    if unet.get("addition_embed_type") != "text_time":
        raise ModelError(f"{model_dir / 'unet'}: the UNet of an SDXL pipeline must have addition_embed_type "
                         f"'text_time' (got {unet.get('addition_embed_type')!r}); the folder mixes SDXL and SD-1.x "
                         "components")
    missing_files = [f"tokenizer_2/{f}" for f in TOKENIZERS["clip"][1] if not (model_dir / "tokenizer_2" / f).is_file()]
    if missing_files:
        raise ModelError(f"{flag}: {', '.join(missing_files)} missing; re-download the model")
    return True


def text_encoder_architecture(model_dir: Path) -> str:
    config = read_json(model_dir / "text_encoder" / "config.json", f"--pretrained_model_name_or_path {model_dir}")
    architectures = config.get("architectures") or []
    if not architectures:
        raise ModelError(f"{model_dir / 'text_encoder' / 'config.json'}: no 'architectures' entry")
    name = architectures[0]
    if name not in FAMILIES:
        raise ModelError(
            f"{model_dir / 'text_encoder'}: text encoder {name} is not supported; supported: {', '.join(FAMILIES)}"
        )
    return name


def check_text_side(model_dir: Path, index: dict) -> str:
    """The text encoder's architecture, once it and the tokenizer model_index.json names are known to fit."""
    architecture = text_encoder_architecture(model_dir)
    check_tokenizer_folder(model_dir, index, architecture)
    return architecture


def check_tokenizer_folder(model_dir: Path, index: dict, architecture: str) -> None:
    """The tokenizer model_index.json names must be one the text encoder's family reads, with its files present."""
    family = FAMILIES[architecture][0]
    name = (index.get("tokenizer") or [None, None])[1]
    supported = {cls: fam for fam, (cls, _) in TOKENIZERS.items()}
    if name not in supported:
        raise ModelError(f"{model_dir / 'model_index.json'}: tokenizer {name} is not supported; supported: "
                         f"{', '.join(supported)}")
    expected = TOKENIZERS[family][0]
    if supported[name] != family:
        raise ModelError(f"{model_dir / 'model_index.json'}: the text encoder {architecture} reads ids of a "
                         f"{expected}, but the tokenizer is a {name}; point --pretrained_model_name_or_path at a "
                         f"complete model folder (or give --tokenizer_name with a {expected} folder)")
    folder = model_dir / "tokenizer"
    missing = [f for f in TOKENIZERS[family][1] if not (folder / f).is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise ModelError(f"{folder}: a {name} needs {', '.join(TOKENIZERS[family][1])}; missing "
                         f"{', '.join(missing)} (present: {', '.join(present) or 'nothing'}). Re-download the model")


def xlmr_mask_token(tokenizer_dir: Path):
    """A ready-made `<mask>` AddedToken when tokenizer_config.json would crash XLMRobertaTokenizer, else None.

    ppdiffusers 0.29's XLMRobertaTokenizer wraps a plain-string (or absent) mask_token in
    `AddedToken(..., special=True)`, and paddlenlp 2.8.1 rebuilds a stored AddedToken dict with all its keys; its
    AddedToken has no `special`, so both raise TypeError. Passing the mask token in avoids both paths.
    """
    from paddlenlp.transformers.tokenizer_utils import AddedToken

    path = tokenizer_dir / "tokenizer_config.json"
    mask = read_json(path, f"tokenizer folder {tokenizer_dir}").get("mask_token") if path.is_file() else None
    if isinstance(mask, dict) and mask.get("__type") == "AddedToken" and "special" not in mask:
        return None  # the layout of the published AltDiffusion files: loads as it is
    content = mask.get("content", "<mask>") if isinstance(mask, dict) else (mask or "<mask>")
    log.info("%s stores mask_token as %r: loading it as an AddedToken (paddlenlp %s's AddedToken has no 'special')",
             path, mask, _paddlenlp_version())
    return AddedToken(content, lstrip=True)


def _supported_pairs() -> str:
    return "; ".join(f"{arch} + {TOKENIZERS[family][0]}" for arch, (family, _) in FAMILIES.items())


def _paddlenlp_version() -> str:
    import paddlenlp

    return paddlenlp.__version__


def load_tokenizer(tokenizer_class, path: str):
    """`tokenizer_class.from_pretrained(path)`, with the XLM-R mask-token workaround for local folders."""
    local = Path(path).is_dir()
    mask = xlmr_mask_token(Path(path)) if tokenizer_class.__name__ == "XLMRobertaTokenizer" and local else None
    if mask is None:
        return tokenizer_class.from_pretrained(path)
    return tokenizer_class.from_pretrained(path, mask_token=mask)


@contextlib.contextmanager
def record_loading_info() -> Iterator[list[tuple[str, list[str], list[str]]]]:
    """Record (class, missing keys, unexpected keys) of every weight load inside the block.

    ppdiffusers and paddlenlp only *log* missing/unexpected keys and leave those weights randomly initialised;
    the pipeline loader does not pass the lists on, so we wrap the one method both go through.
    """
    from paddlenlp.transformers.model_utils import PretrainedModel
    from ppdiffusers.models.modeling_utils import ModelMixin

    records: list[tuple[str, list[str], list[str]]] = []
    originals = {base: base.__dict__["_load_pretrained_model"] for base in (ModelMixin, PretrainedModel)}

    def wrap(original):
        def load(cls, *args, **kwargs):
            out = original.__func__(cls, *args, **kwargs)
            records.append((cls.__name__, list(out[1]), list(out[2])))
            return out
        return classmethod(load)

    for base, original in originals.items():
        base._load_pretrained_model = wrap(original)
    try:
        yield records
    finally:
        for base, original in originals.items():
            base._load_pretrained_model = original


def check_all_weights_loaded(records: list[tuple[str, list[str], list[str]]], model_dir: Path) -> None:
    problems = []
    for cls, missing, unexpected in records:
        if missing:
            problems.append(f"{cls} has no weights in the files for {_preview(missing)}")
        if unexpected:
            problems.append(f"{cls} does not use the file's {_preview(unexpected)}")
    if problems:
        raise ModelError(
            f"--pretrained_model_name_or_path {model_dir}: the weights do not fully load, training would run on "
            f"random weights: {'; '.join(problems)}. Re-save the model with ppdiffusers save_pretrained, or pass the "
            "original diffusers (PyTorch) folder or .safetensors/.ckpt file itself: ppti converts it (docs/models.md)"
        )


def _preview(keys: list[str], limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} key(s): {', '.join(keys[:limit])}{more}"


def check_manifest(model_dir: Path) -> None:
    """A folder that ships a manifest.json (the toy world) must match it, file by file (sha256)."""
    from .manifest import MANIFEST, ManifestError, verify_manifest

    if (model_dir / MANIFEST).is_file():
        try:
            verify_manifest(model_dir)
        except ManifestError as exc:
            raise ModelError(f"--pretrained_model_name_or_path {exc}") from None


def load_components(model_path: str, tokenizer_name: Optional[str] = None) -> Components:
    """Load and verify the pipeline; every problem is raised as a ModelError naming the path."""
    from ppdiffusers import DDPMScheduler, DiffusionPipeline

    model_dir = Path(model_path)
    local = model_dir.is_dir()
    overrides = {}  # components built here instead of by DiffusionPipeline.from_pretrained
    if local:
        index = check_model_folder(model_dir)
        sdxl = check_sdxl_folder(model_dir, index)
        check_manifest(model_dir)
        architecture = check_text_side(model_dir, index)
    try:
        if local and FAMILIES[architecture][0] == "xlmr":  # built here for the mask-token workaround
            from ppdiffusers.transformers import XLMRobertaTokenizer

            overrides["tokenizer"] = load_tokenizer(XLMRobertaTokenizer, str(model_dir / "tokenizer"))
        if not (local and sdxl):  # (SDXL pipelines have no safety checker)
            overrides.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        with record_loading_info() as records:
            pipeline = DiffusionPipeline.from_pretrained(model_path, **overrides)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one actionable line
        hint = ""
        if isinstance(exc, TypeError) and "special" in str(exc):  # see xlmr_mask_token
            hint = (f". Its XLMRobertaTokenizer cannot be built with paddlenlp {_paddlenlp_version()}: download the "
                    "model folder and pass its local path, ppti then loads the tokenizer with a working mask token")
        raise ModelError(f"--pretrained_model_name_or_path {model_path}: cannot load the model ({exc}){hint}") from exc
    check_all_weights_loaded(records, model_dir)
    if not local:
        architecture = type(pipeline.text_encoder).__name__
        if architecture not in FAMILIES:
            raise ModelError(f"{model_path}: text encoder {architecture} is not supported; supported: {', '.join(FAMILIES)}")
        tokenizer_class = type(pipeline.tokenizer).__name__
        if tokenizer_class != TOKENIZERS[FAMILIES[architecture][0]][0]:
            raise ModelError(f"{model_path}: the text encoder {architecture} cannot read a {tokenizer_class}; "
                             f"supported pairs: {_supported_pairs()}")
    if tokenizer_name:
        try:
            pipeline.tokenizer = load_tokenizer(type(pipeline.tokenizer), tokenizer_name)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"--tokenizer_name {tokenizer_name}: cannot load a {type(pipeline.tokenizer).__name__} "
                             f"({exc})") from exc
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    text_config = pipeline.text_encoder.config
    text_config = text_config if isinstance(text_config, dict) else text_config.to_dict()
    family = FAMILIES[architecture][0]
    for part in (pipeline.unet, pipeline.vae, pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None)):
        if part is not None:
            part.eval()  # frozen: no dropout, deterministic forward
    return Components(
        pipeline=pipeline,
        noise_scheduler=noise_scheduler,
        family=family,
        architecture=architecture,
        use_attention_mask=bool(text_config.get("use_attention_mask", False)),
    )


def detect_language(requested: str, components: Components | TextSide, model_path: str) -> tuple[str, str]:
    """(language, why) for the prompt templates: an explicit flag wins, else the text-encoder family,
    else the example's name heuristics."""
    if requested != "auto":
        return requested, "--language"
    name = model_name(model_path).lower()
    if components.family == "clip":
        if "chinese-en" in name or "chinese_en" in name:
            return "zh_en", "CLIP text encoder, model name contains 'chinese-en'"
        if "chinese" in name:
            return "zh", "CLIP text encoder, model name contains 'chinese'"
    language = FAMILIES[components.architecture][1]
    return language, f"text encoder {components.architecture}"


def model_name(model_path: str) -> str:
    """The model's own name for the language heuristics: a local folder's name (also for '.'), else the Hub id.
    Parent folders are not part of it: '/data/chinese/sd15' is an English model."""
    path = Path(model_path)
    return path.resolve().name if path.is_dir() else model_path


@dataclass(frozen=True)
class TextSide:
    """The tokenizer and the text-encoder facts of a local model folder, read without loading any weight: the
    part of `Components` that detect_language and prompt_max_length read (same attribute names)."""

    tokenizer: Any
    family: str  # clip | bert | xlmr
    architecture: str
    text_config: dict


def load_text_side(model_path: str, tokenizer_name: Optional[str] = None) -> Optional[TextSide]:
    """The model folder's tokenizer (cheap: vocabulary files only) and text-encoder config; None for a Hub id (it
    is checked once downloaded). Raises ModelError like load_components."""
    model_dir = Path(model_path)
    if not model_dir.is_dir():
        return None
    architecture = check_text_side(model_dir, check_model_folder(model_dir))
    family = FAMILIES[architecture][0]
    from ppdiffusers import transformers

    tokenizer_class = getattr(transformers, TOKENIZERS[family][0])
    source = tokenizer_name or str(model_dir / "tokenizer")
    try:
        tokenizer = load_tokenizer(tokenizer_class, source)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one actionable line
        flag = "--tokenizer_name" if tokenizer_name else "--pretrained_model_name_or_path"
        raise ModelError(f"{flag} {source}: cannot load a {tokenizer_class.__name__} ({exc})") from None
    text_config = read_json(model_dir / "text_encoder" / "config.json", f"--pretrained_model_name_or_path {model_dir}")
    return TextSide(tokenizer=tokenizer, family=family, architecture=architecture, text_config=text_config)


def prompt_max_length(components: Components | TextSide) -> tuple[int, str]:
    """(length prompts are padded/truncated to, why). Training must see what inference sees: ppdiffusers'
    pipelines pad to tokenizer.model_max_length, so that is the length, within the text encoder's positions."""
    tokenizer_max = components.tokenizer.model_max_length
    positions = components.text_config.get("max_position_embeddings") or UNSET_MAX_LENGTH
    if components.family == "xlmr":
        positions -= 2  # RoBERTa position ids start after the padding index (1)
    if tokenizer_max >= UNSET_MAX_LENGTH:
        length = min(FAMILY_MAX_LENGTH[components.family], positions)
        return length, f"the tokenizer sets no model_max_length; {length} as in the real {components.family} models"
    if tokenizer_max > positions:
        return positions, (f"the tokenizer's model_max_length {tokenizer_max} is more than the text encoder's "
                           f"{positions} positions")
    return tokenizer_max, "the tokenizer's model_max_length, which the inference pipeline pads prompts to"


def tokenize_fn(tokenizer, max_length: int):
    """A function text -> fixed-length list of ids, padded/truncated like the inference pipeline does."""

    def tokenize(text: str) -> list[int]:
        return tokenizer(text, padding="max_length", truncation=True, max_length=max_length)["input_ids"]

    return tokenize
