"""Embedding layouts F1-F6 (see shared/reference/FORMATS.md): read any of them, write F1-F5.

Reading sniffs the container from the first bytes (never from the suffix), unpacks it without torch or Paddle,
then recognises the layout and names the token:

| layout | recognised by | token |
|---|---|---|
| F1 diffusers / F2 pdparams | a dict of tensors (F2 when the container is a Paddle pickle) | the key |
| F3 WebUI `.pt` / F6 PNG | a dict with `string_to_param` | the `name` field, else the file stem |
| F4 emb_params | the single key `emb_params` | the file stem |
| F5 SDXL pair | keys `clip_l` and `clip_g` | the file stem |
| bare tensor | a tensor alone | the file stem |
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..atomic import atomic_write_bytes
from ..runfiles import second_encoder_path
from .png_text import PNG_MAGIC, read_png_embedding
from .safe_pickle import MAX_PICKLE_BYTES, restricted_loads
from .safetensors_file import looks_like_safetensors, read_safetensors, safetensors_bytes
from .tensors import EmbeddingFormatError, RawTensor, from_float32, raw_from_numpy, to_float32
from .torch_zip import ZIP_MAGIC, read_torch_zip, torch_zip_bytes

# source_format ids and what they are
LAYOUTS = {
    "diffusers": "F1 diffusers {token: [n, dim]}",
    "pdparams": "F2 ppdiffusers {token: [n, dim]}",
    "webui-pt": "F3 WebUI {string_to_param: {'*': [n, dim]}, name: ...}",
    "emb_params": "F4 kohya/WebUI {emb_params: [n, dim]}",
    "sdxl-pair": "F5 SDXL pair {clip_l: [n, 768], clip_g: [n, 1280]}",
    "webui-png": "F6 WebUI image (PNG text chunk sd-ti-embedding)",
    "bare-tensor": "a bare tensor (no token name inside)",
}
WRITE_FORMATS = ("pdparams", "diffusers", "webui", "pt")
SAFETENSORS_METADATA = {"format": "pt"}  # what diffusers writes; ppdiffusers accepts pt/pd/np
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_NAME_TABLE = "StructuredToParameterName@@"  # paddle.save's tensor-name table, not an embedding
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickled magic number of pre-1.6 torch.save


@dataclass(frozen=True, eq=False)  # eq would compare arrays ambiguously
class Embedding:
    """One learned embedding: `vectors` are float32 rows [n, dim] decoded losslessly from the stored dtype."""

    token: str
    vectors: np.ndarray
    source_format: str  # a LAYOUTS key
    dtype: str  # stored dtype: fp32 | fp16 | bf16 | fp64
    part: str | None = None  # "clip_l" / "clip_g" for an SDXL pair
    container: str = ""  # safetensors | torch-zip | pdparams-pickle | png
    token_source: str = ""  # key | name field | file stem | argument


# ---- reading -----------------------------------------------------------------------------------------------


def _load_container(path: Path) -> tuple[Any, str]:
    """The unpacked content of a file (tensors as RawTensor) and the container name."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(ZIP_MAGIC):
        return read_torch_zip(str(path)), "torch-zip"
    if head.startswith(PNG_MAGIC):
        return read_png_embedding(path), "png"
    if looks_like_safetensors(head):
        return read_safetensors(path)[0], "safetensors"
    if head.startswith(_LEGACY_TORCH):
        raise EmbeddingFormatError("a legacy (torch < 1.6) checkpoint: re-save it with a current torch.save")
    if head.startswith(b"\x80"):
        with open(path, "rb") as fh:
            data = fh.read(MAX_PICKLE_BYTES + 1)  # restricted_loads refuses anything over the cap
        return _arrays_to_raw(restricted_loads(data)), "pdparams-pickle"
    raise EmbeddingFormatError("unknown container: not safetensors, a torch zip, a Paddle pickle or a PNG")


def _arrays_to_raw(obj: Any) -> Any:
    """Paddle pickles hold numpy arrays (uint16 = bf16): wrap them as RawTensor, recursing into dicts/tuples."""
    if isinstance(obj, np.ndarray):
        return raw_from_numpy(obj, uint16_is_bf16=True)
    if isinstance(obj, dict):
        return {key: _arrays_to_raw(value) for key, value in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_arrays_to_raw(value) for value in obj)
    return obj


def _rows(raw: Any, where: str) -> np.ndarray:
    """float32 [n, dim] rows of a stored tensor (1-D becomes one row)."""
    if not isinstance(raw, RawTensor):
        raise EmbeddingFormatError(f"{where} is a {type(raw).__name__}, not a tensor")
    if raw.dtype not in ("fp32", "fp16", "bf16", "fp64"):
        raise EmbeddingFormatError(f"{where} has dtype {raw.dtype}: not a float embedding")
    vectors = np.array(to_float32(raw), dtype=np.float32)  # a writable copy, not a view of file bytes
    if vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    if vectors.ndim != 2 or 0 in vectors.shape:
        raise EmbeddingFormatError(f"{where} has shape {tuple(raw.data.shape)}; an embedding is [n, dim] or [dim]")
    return vectors


def _embedding(raw: Any, where: str, **fields: Any) -> Embedding:
    return Embedding(vectors=_rows(raw, where), dtype=raw.dtype, **fields)  # _rows checks raw first


def _webui(obj: dict, stem: str, layout: str) -> list[Embedding]:
    params = obj["string_to_param"]
    if not isinstance(params, dict) or len(params) != 1:
        count = len(params) if isinstance(params, dict) else "no"
        raise EmbeddingFormatError(f"string_to_param holds {count} terms; a WebUI embedding holds exactly one")
    name = obj.get("name")
    token, source = (name, "name field") if isinstance(name, str) and name else (stem, "file stem")
    raw = next(iter(params.values()))
    return [_embedding(raw, "string_to_param['*']", token=token, source_format=layout, token_source=source)]


def _sdxl_pair(obj: dict, stem: str) -> list[Embedding]:
    pair = [
        _embedding(obj[part], part, token=stem, source_format="sdxl-pair", part=part, token_source="file stem")
        for part in ("clip_l", "clip_g")
    ]
    if pair[0].vectors.shape[0] != pair[1].vectors.shape[0]:
        counts = f"clip_l has {pair[0].vectors.shape[0]} vectors, clip_g {pair[1].vectors.shape[0]}"
        raise EmbeddingFormatError(f"inconsistent SDXL pair: {counts}")
    return pair


def _dict_of_tensors(obj: dict, stem: str, container: str) -> list[Embedding]:
    if not obj or not all(isinstance(value, RawTensor) for value in obj.values()):
        found = ", ".join(f"{key!s}: {type(value).__name__}" for key, value in list(obj.items())[:8]) or "nothing"
        raise EmbeddingFormatError(
            f"unknown layout ({found}); expected {{token: tensor}}, string_to_param, emb_params or clip_l/clip_g"
        )
    if set(obj) == {"emb_params"}:
        return [_embedding(obj["emb_params"], "emb_params", token=stem, source_format="emb_params",
                           token_source="file stem")]
    layout = "pdparams" if container == "pdparams-pickle" else "diffusers"
    return [_embedding(raw, repr(key), token=str(key), source_format=layout, token_source="key")
            for key, raw in obj.items()]


def _parse_layout(obj: Any, stem: str, container: str) -> list[Embedding]:
    """Recognise the layout of unpacked content and name its token(s)."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
        obj = obj[1]  # paddle.save(tensor) stores (tensor name, array)
    if isinstance(obj, RawTensor):
        return [_embedding(obj, "the tensor", token=stem, source_format="bare-tensor", token_source="file stem")]
    if not isinstance(obj, dict):
        raise EmbeddingFormatError(f"unknown layout: the file holds a {type(obj).__name__}, not a dict or tensor")
    if "string_to_param" in obj:
        return _webui(obj, stem, "webui-png" if container == "png" else "webui-pt")
    if "clip_l" in obj and "clip_g" in obj:
        return _sdxl_pair(obj, stem)
    obj = {key: value for key, value in obj.items() if key != _NAME_TABLE}
    return _dict_of_tensors(obj, stem, container)


def read_embeddings(path: str | Path, token: str | None = None) -> list[Embedding]:
    """Every embedding in a file, in file order; `token` renames a file's single embedding (or SDXL pair).

    Works without torch or Paddle; pickles go through the restricted unpickler (`UnsafePickleError` names any
    global outside the allow-list, which is never called). Raises `EmbeddingFormatError` prefixed with the path.
    """
    path = Path(path)
    try:
        obj, container = _load_container(path)
        embeddings = _parse_layout(obj, path.stem, container)
        if token is not None:
            embeddings = _rename(embeddings, token)
    except EmbeddingFormatError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except OSError as exc:
        raise EmbeddingFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return [replace(e, container=container) for e in embeddings]


def _rename(embeddings: list[Embedding], token: str) -> list[Embedding]:
    tokens = sorted({e.token for e in embeddings})
    if len(tokens) > 1:
        raise EmbeddingFormatError(f"holds {len(tokens)} embeddings ({', '.join(tokens)}); cannot name all {token!r}")
    return [replace(e, token=token, token_source="argument") for e in embeddings]


# ---- writing -----------------------------------------------------------------------------------------------


def as_rows(token: str, vectors: np.ndarray) -> np.ndarray:
    """Validate one embedding for writing: float32 [n, dim] (1-D becomes one row)."""
    if not isinstance(token, str) or not token or token == _NAME_TABLE:
        raise EmbeddingFormatError(f"invalid token name {token!r}")
    array = np.asarray(vectors)
    if array.dtype.kind != "f":
        raise EmbeddingFormatError(f"embedding {token!r} has dtype {array.dtype}; expected float vectors")
    array = array.reshape(1, -1) if array.ndim == 1 else array
    if array.ndim != 2 or 0 in array.shape:
        raise EmbeddingFormatError(f"embedding {token!r} has shape {np.shape(vectors)}; expected [n, dim] or [dim]")
    return np.ascontiguousarray(array, dtype=np.float32)


def _pdparams_bytes(tensors: dict[str, RawTensor]) -> bytes:
    """What paddle.save writes for {token: Tensor}: numpy arrays (bf16 as uint16) plus the name table."""
    state: dict[str, Any] = {token: raw.data for token, raw in tensors.items()}
    state[_NAME_TABLE] = {token: token for token in tensors}
    return pickle.dumps(state, protocol=4)


def _webui_dict(token: str, raw: RawTensor, step: int | None) -> dict:
    """The dict AUTOMATIC1111 WebUI's Embedding.save writes (F3)."""
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": raw},
        "name": token,
        "step": step,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }


def _tensor_file_bytes(path: Path, tensors: dict[str, RawTensor]) -> bytes:
    """A flat {key: tensor} file: a torch zip for .bin/.pt/.pth/.ckpt names, safetensors otherwise."""
    if path.suffix.lower() in TORCH_SUFFIXES:
        return torch_zip_bytes(tensors)
    return safetensors_bytes(tensors, SAFETENSORS_METADATA)


def _only(embeddings: Mapping[str, np.ndarray], fmt: str) -> tuple[str, np.ndarray]:
    if len(embeddings) != 1:
        raise EmbeddingFormatError(f"format {fmt!r} holds exactly one embedding, got {len(embeddings)}")
    return next(iter(embeddings.items()))


def encode_file(
    path: Path, embeddings: Mapping[str, np.ndarray], fmt: str, dtype: str, step: int | None = None
) -> bytes:
    """The bytes of an embedding file in `fmt` (see `write_embeddings`)."""
    if fmt not in WRITE_FORMATS:
        raise EmbeddingFormatError(f"unknown format {fmt!r}: choose one of {', '.join(WRITE_FORMATS)}")
    if not embeddings:
        raise EmbeddingFormatError("nothing to write: no embeddings given")
    tensors = {token: from_float32(as_rows(token, vectors), dtype) for token, vectors in embeddings.items()}
    if fmt == "pdparams":
        return _pdparams_bytes(tensors)
    if fmt == "diffusers":
        return _tensor_file_bytes(path, tensors)
    token, _ = _only(embeddings, fmt)
    if fmt == "webui":
        return _tensor_file_bytes(path, {"emb_params": tensors[token]})
    return torch_zip_bytes(_webui_dict(token, tensors[token], step))


def write_embeddings(
    path: str | Path,
    embeddings: Mapping[str, np.ndarray],
    fmt: str = "pdparams",
    dtype: str = "fp32",
    *,
    step: int | None = None,
) -> Path:
    """Write {token: float32 [n, dim] (or [dim])} atomically; returns the path.

    fmt: "pdparams" (F2: paddle.load / ppdiffusers `load_textual_inversion`), "diffusers" (F1 safetensors with
    metadata {"format": "pt"}, or a torch zip if the name ends in .bin/.pt), "webui" (F4 {"emb_params": ...},
    safetensors or a kohya-style .pt) and "pt" (F3 WebUI .pt; `step` fills its step field). webui and pt hold
    one embedding; the diffusers and ppdiffusers loaders also expect one key per file.
    dtype: fp32 (bit-exact), fp16 or bf16 (rounded to nearest even).
    """
    path = Path(path)
    atomic_write_bytes(path, encode_file(path, embeddings, fmt, dtype, step))
    return path


def sdxl_pair_paths(path: Path, fmt: str) -> list[Path]:
    """Where `write_sdxl_pair` writes: one F5 file for webui, else `path` (clip_l) and `<stem>_2` (clip_g)."""
    if fmt == "webui":
        return [path]
    return [path, second_encoder_path(path)]




def write_sdxl_pair(
    path: str | Path, token: str, clip_l: np.ndarray, clip_g: np.ndarray, fmt: str, dtype: str = "fp32"
) -> list[Path]:
    """Write an SDXL embedding pair: F5 {clip_l, clip_g} for "webui"; two F1/F2 files for diffusers/pdparams.

    The two-file form is what diffusers' SDXL trainer writes (`learned_embeds.safetensors` for the first text
    encoder, `learned_embeds_2.safetensors` for the second), each loaded with its own text encoder/tokenizer.
    """
    path = Path(path)
    rows = {"clip_l": as_rows(token, clip_l), "clip_g": as_rows(token, clip_g)}
    if rows["clip_l"].shape[0] != rows["clip_g"].shape[0]:
        raise EmbeddingFormatError(f"SDXL pair for {token!r} has different vector counts for clip_l and clip_g")
    if fmt == "pt":
        raise EmbeddingFormatError("a WebUI .pt holds one text encoder's rows; write an SDXL pair with fmt='webui'")
    if fmt == "webui":
        tensors = {part: from_float32(vectors, dtype) for part, vectors in rows.items()}
        atomic_write_bytes(path, _tensor_file_bytes(path, tensors))
        return [path]
    targets = sdxl_pair_paths(path, fmt)
    for target, vectors in zip(targets, rows.values()):
        write_embeddings(target, {token: vectors}, fmt, dtype)
    return targets
