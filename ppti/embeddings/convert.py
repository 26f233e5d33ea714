"""The conversion tools/convert.py performs: resolve the input, pick its embedding, name and write the output,
and say how to load the result.

Default output names (next to the input unless -o is given):
- `--to paddle`: `learned_embeds.pdparams` (an input named `learned_embeds*` keeps its stem, so
  `learned_embeds-steps-500.safetensors` becomes `learned_embeds-steps-500.pdparams`);
- `--to torch --format diffusers`: `learned_embeds.safetensors` (same stem rule);
- `--format webui` / `--format pt`: `NAME.safetensors` / `NAME.pt`, NAME being the token without the characters
  file systems refuse, because WebUI's prompt word is the file stem.
An SDXL pair becomes two files (`X` for clip_l, `X_2` for clip_g; `learned_embeds_2[-steps-N]` next to
`learned_embeds[-steps-N]`) in diffusers/pdparams form, or one F5 file with `--format webui`. An SDXL training
output (`learned_embeds.pdparams` + `learned_embeds_2.pdparams`) is read as one pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..runfiles import (
    EMBEDDINGS_STEM, SAVED_SUFFIXES, SDXL_ENCODERS, embeddings_name, is_first_encoder_file, second_encoder_path,
)
from .formats import (
    LAYOUTS, TORCH_SUFFIXES, Embedding, read_embeddings, sdxl_pair_paths, write_embeddings, write_sdxl_pair,
)
from .tensors import EmbeddingFormatError

TARGETS = ("torch", "paddle")
TORCH_FORMATS = ("diffusers", "webui", "pt")
_UNSAFE_FILE_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


@dataclass(frozen=True)
class Conversion:
    """What was written, and the lines telling the user what it is and how to load it."""

    paths: list[Path]
    embeddings: list[Embedding]
    dtype: str
    load_calls: list[str]


def resolve_input(path: Path, step: int | None = None) -> Path:
    """A file as is; a training output_dir -> its final (or `--step N`) learned_embeds file."""
    if not path.is_dir():
        if step is not None:
            raise EmbeddingFormatError(f"--step applies to a training output_dir, but {path} is not a folder")
        if not path.is_file():
            raise EmbeddingFormatError(f"{path}: no such file or folder")
        return path
    stem = embeddings_name(step)
    for suffix in SAVED_SUFFIXES:
        if (path / f"{stem}{suffix}").is_file():
            return path / f"{stem}{suffix}"
    found = ", ".join(sorted(p.name for p in path.glob(f"{EMBEDDINGS_STEM}*"))) or f"no {EMBEDDINGS_STEM}* files"
    raise EmbeddingFormatError(f"{path}: has no {stem}.pdparams (found: {found}); pass a file, or --step N")


def second_encoder_file(source: Path) -> Path | None:
    """For an SDXL training output's `learned_embeds[-steps-N].X` (text_encoder, clip_l): its
    `learned_embeds_2[-steps-N].X` (text_encoder_2, clip_g) when it exists."""
    if not is_first_encoder_file(source):
        return None
    second = second_encoder_path(source)
    return second if second.is_file() else None


def read_two_files(first: Path, second: Path, token: str | None) -> list[Embedding]:
    """The SDXL pair [clip_l, clip_g] of a two-file output (one embedding each, same token and vector count)."""
    (clip_l,) = select_one(read_embeddings(first, token), first)
    (clip_g,) = select_one(read_embeddings(second, token), second)
    if clip_l.token != clip_g.token or clip_l.vectors.shape[0] != clip_g.vectors.shape[0]:
        raise EmbeddingFormatError(
            f"{first} and {second} do not form an SDXL pair: tokens {clip_l.token!r}/{clip_g.token!r}, "
            f"{clip_l.vectors.shape[0]}/{clip_g.vectors.shape[0]} vectors")
    return [replace(clip_l, part="clip_l"), replace(clip_g, part="clip_g")]


def read_one_or_pair(source: Path, token: str | None = None) -> list[Embedding]:
    """The file's single embedding, or an SDXL pair [clip_l, clip_g]: from one F5 file, or from an SDXL training
    output's learned_embeds + learned_embeds_2 files."""
    second = second_encoder_file(source)
    return read_two_files(source, second, token) if second else select_one(read_embeddings(source, token), source)


def select_one(embeddings: list[Embedding], path: Path) -> list[Embedding]:
    """The file's single embedding, or its SDXL pair [clip_l, clip_g]; several embeddings are refused."""
    if len(embeddings) == 1 or [e.part for e in embeddings] == ["clip_l", "clip_g"]:
        return embeddings
    tokens = ", ".join(repr(e.token) for e in embeddings)
    raise EmbeddingFormatError(
        f"{path}: holds {len(embeddings)} embeddings ({tokens}) where one is expected; "
        "convert files holding one embedding (or one SDXL pair)"
    )


def width_of(embeddings: list[Embedding]) -> int:
    """Embedding width; an SDXL pair counts 768 + 1280 = 2048, the width WebUI checks it against."""
    return sum(e.vectors.shape[1] for e in embeddings)


def check_width(embeddings: list[Embedding], expect_dim: int | None, path: Path) -> None:
    width = width_of(embeddings)
    if expect_dim is not None and width != expect_dim:
        parts = "+".join(str(e.vectors.shape[1]) for e in embeddings)
        raise EmbeddingFormatError(
            f"{path}: embedding width is {parts}, but --expect_dim is {expect_dim}: it was trained for another "
            "text encoder (SD1.x 768, SD2.x 1024, SDXL 768+1280=2048)"
        )


def webui_name(token: str) -> str:
    """A file stem for WebUI (its prompt word): the token without characters file systems refuse."""
    name = "-".join(_UNSAFE_FILE_CHARS.sub("", token).split())
    return name.strip(".") or "embedding"


def _learned_embeds_stem(source: Path) -> str:
    return source.stem if source.stem.startswith(EMBEDDINGS_STEM) else EMBEDDINGS_STEM


def default_output(source: Path, token: str, to: str, fmt: str) -> Path:
    """Where the conversion writes when -o is not given (see the module docstring)."""
    if to == "paddle":
        return source.parent / f"{_learned_embeds_stem(source)}.pdparams"
    if fmt == "diffusers":
        return source.parent / f"{_learned_embeds_stem(source)}.safetensors"
    return source.parent / f"{webui_name(token)}{'.pt' if fmt == 'pt' else '.safetensors'}"


def _load_calls(paths: list[Path], token: str, to: str, fmt: str, dtype: str, pair: bool) -> list[str]:
    """The exact Python lines that load the written file(s), and where WebUI wants them."""
    library = "ppdiffusers" if to == "paddle" else "diffusers"
    first = paths[0]
    webui = f"WebUI: copy {first.name} into stable-diffusion-webui/embeddings/ and write {first.stem} in the prompt"
    encoders = SDXL_ENCODERS
    if pair and len(paths) == 2:  # one file per text encoder
        return [
            f"{library}: pipe.load_textual_inversion({str(path)!r}, token={token!r}, "
            f"text_encoder=pipe.{encoder}, tokenizer=pipe.{tokenizer})"
            for path, (_, encoder, tokenizer) in zip(paths, encoders)
        ]
    if pair:  # one F5 file {clip_l, clip_g}
        state = (f"torch.load({str(first)!r}, weights_only=True)" if first.suffix in TORCH_SUFFIXES
                 else f"safetensors.torch.load_file({str(first)!r})")
        return [
            f"diffusers: pipe.load_textual_inversion({state}[{part!r}], token={token!r}, "
            f"text_encoder=pipe.{encoder}, tokenizer=pipe.{tokenizer})"
            for part, encoder, tokenizer in encoders
        ] + [webui]
    lines = [f"{library}: pipe.load_textual_inversion({str(first)!r}, token={token!r})"]
    if to == "torch" and fmt == "diffusers" and first.suffix == ".safetensors" and dtype != "bf16":
        # ppdiffusers reads safetensors through numpy, which has no bfloat16
        lines.append(f"ppdiffusers: pipe.load_textual_inversion({str(first)!r}, token={token!r})")
    if to == "torch" and fmt != "diffusers":
        lines.append(webui)
    return lines


def convert(
    source: Path,
    to: str,
    fmt: str | None = None,
    token: str | None = None,
    dtype: str = "fp32",
    output: Path | None = None,
    step: int | None = None,
    expect_dim: int | None = None,
    force: bool = False,
) -> Conversion:
    """Convert one embedding (or SDXL pair) file for torch (diffusers/WebUI) or Paddle (ppdiffusers)."""
    if to not in TARGETS or fmt not in (None, *TORCH_FORMATS):
        raise EmbeddingFormatError(f"--to must be one of {TARGETS} and --format one of {TORCH_FORMATS}")
    if to == "paddle" and fmt is not None:
        raise EmbeddingFormatError("--format chooses among torch layouts; --to paddle always writes .pdparams")
    fmt = fmt or "diffusers"
    source = resolve_input(source, step)
    embeddings = read_one_or_pair(source, token)
    check_width(embeddings, expect_dim, source)
    pair = len(embeddings) == 2
    if pair and to == "torch" and fmt == "pt":
        raise EmbeddingFormatError(f"{source}: an SDXL pair does not fit a WebUI .pt; use --format webui")
    write_fmt = "pdparams" if to == "paddle" else fmt
    target = default_output(source, embeddings[0].token, to, fmt)
    if output is not None:
        target = output / target.name if output.is_dir() else output
    paths = sdxl_pair_paths(target, write_fmt) if pair else [target]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise EmbeddingFormatError(f"{', '.join(existing)} exists; pass --force to overwrite it or -o for another name")
    name = embeddings[0].token
    if pair:
        write_sdxl_pair(target, name, embeddings[0].vectors, embeddings[1].vectors, write_fmt, dtype)
    else:
        write_embeddings(target, {name: embeddings[0].vectors}, write_fmt, dtype)
    return Conversion(paths, embeddings, dtype, _load_calls(paths, name, to, fmt, dtype, pair))


def describe(path: Path, embeddings: list[Embedding]) -> list[str]:
    """Human-readable lines for --info: layout, container, and per embedding token, vectors, width, dtype."""
    first = embeddings[0]
    lines = [f"{path}: {LAYOUTS[first.source_format]}, in a {first.container} container"]
    for e in embeddings:
        part = f"[{e.part}] " if e.part else ""
        n, width = e.vectors.shape
        lines.append(f"  {part}token {e.token!r} (from the {e.token_source}), vectors {n}, width {width}, "
                     f"dtype {e.dtype}")
    if first.source_format == "webui-pt" and first.token != path.stem:
        lines.append(f"  note: WebUI names this embedding by its file stem, {path.stem!r}, not the name field")
    return lines
