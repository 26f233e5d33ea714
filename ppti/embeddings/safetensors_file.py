"""safetensors files: 8-byte little-endian header length, a JSON header, then raw little-endian tensor bytes.

Reading parses the header directly (numpy has no bfloat16, and `safetensors.numpy` cannot return BF16), so
BF16 tensors arrive as bit patterns and decode losslessly. Writing goes through the `safetensors` package's
serializer (the one `safetensors.numpy.save` uses), naming bf16 data a true `BF16` tensor rather than `U16`.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
from safetensors import TensorSpec, serialize

from .tensors import STORAGE_DTYPES, EmbeddingFormatError, RawTensor

MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces
MAX_TENSORS = 256  # embedding files hold one or two tensors; a whole model holds thousands
_READ_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
_WRITE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def looks_like_safetensors(head: bytes) -> bool:
    """True if the first bytes of a file are a plausible safetensors header start."""
    return len(head) >= 9 and struct.unpack("<Q", head[:8])[0] <= MAX_HEADER_BYTES and head[8:9] == b"{"


def _tensor_entry(fh, base: int, key: str, spec: object) -> RawTensor:
    """Read one tensor described by its header entry, checking dtype, shape and byte range."""
    try:
        dtype, shape, (begin, end) = spec["dtype"], [int(n) for n in spec["shape"]], spec["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise EmbeddingFormatError(f"malformed safetensors header entry for {key!r}") from None
    if dtype not in _READ_DTYPES:
        raise EmbeddingFormatError(f"tensor {key!r} has dtype {dtype}: not a float embedding")
    np_dtype = STORAGE_DTYPES[_READ_DTYPES[dtype]]
    nbytes = math.prod(shape) * np_dtype.itemsize
    if min(shape, default=0) < 0 or end - begin != nbytes:
        raise EmbeddingFormatError(f"tensor {key!r}: shape {shape} does not match its byte range")
    fh.seek(base + begin)
    raw = fh.read(nbytes)
    if len(raw) != nbytes:
        raise EmbeddingFormatError(f"tensor {key!r} is truncated")
    return RawTensor(np.frombuffer(raw, dtype=np_dtype).reshape(shape), _READ_DTYPES[dtype])


def read_safetensors(path: str | Path) -> tuple[dict[str, RawTensor], dict[str, str]]:
    """All tensors (as stored) and the metadata of a safetensors file."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        (length,) = struct.unpack("<Q", head) if len(head) == 8 else (MAX_HEADER_BYTES + 1,)
        if length > MAX_HEADER_BYTES:
            raise EmbeddingFormatError("not a safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EmbeddingFormatError(f"safetensors header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise EmbeddingFormatError("safetensors header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if len(header) > MAX_TENSORS:
            raise EmbeddingFormatError(f"{len(header)} tensors: a model file, not an embedding")
        tensors = {key: _tensor_entry(fh, 8 + length, key, spec) for key, spec in header.items()}
    return tensors, metadata


def safetensors_bytes(tensors: dict[str, RawTensor], metadata: dict[str, str]) -> bytes:
    """Serialise fp32/fp16/bf16 tensors with string metadata."""
    arrays = {key: np.ascontiguousarray(t.data, dtype=STORAGE_DTYPES[t.dtype]) for key, t in tensors.items()}
    specs = {
        key: TensorSpec(
            dtype=_WRITE_NAMES[tensors[key].dtype],
            shape=list(array.shape),
            data_ptr=array.ctypes.data,
            data_len=array.nbytes,
        )
        for key, array in arrays.items()
    }
    return bytes(serialize(specs, metadata=metadata))  # `arrays` keeps the buffers alive until here
