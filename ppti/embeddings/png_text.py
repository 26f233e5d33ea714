"""WebUI image embeddings (F6): a PNG text chunk `sd-ti-embedding` = base64(JSON of a WebUI `.pt` dict).

Tensors inside the JSON are `{"TORCHTENSOR": nested lists}`. Only the PNG chunk structure is parsed (stdlib
`zlib` for compressed chunks); pixels are never decoded.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .tensors import EmbeddingFormatError, RawTensor

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEXT_KEY = b"sd-ti-embedding"
MAX_PNG_BYTES = 256 << 20
MAX_TEXT_BYTES = 64 << 20


def _inflate(data: bytes) -> bytes:
    """zlib-decompress with a size cap (a compressed chunk could expand enormously)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise EmbeddingFormatError(f"compressed PNG text is larger than {MAX_TEXT_BYTES} bytes")
    return out


def _text_value(kind: bytes, body: bytes) -> bytes | None:
    """The value of a tEXt/zTXt/iTXt chunk whose key is `sd-ti-embedding`, else None."""
    key, _, rest = body.partition(b"\0")
    if key != TEXT_KEY:
        return None
    if kind == b"tEXt":
        return rest
    if kind == b"zTXt":
        return _inflate(rest[1:])  # rest[0] is the compression method (0 = zlib)
    compressed = rest[:1] == b"\x01"  # iTXt: flag, method, language\0, translated key\0, text
    text = rest[2:].split(b"\0", 2)[-1]
    return _inflate(text) if compressed else text


def _find_text(data: bytes) -> bytes | None:
    pos = len(PNG_MAGIC)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            value = _text_value(kind, body)
            if value is not None:
                return value
        if kind == b"IEND":
            break
        pos += 12 + length
    return None


def _decode_tensors(obj: dict) -> Any:
    """JSON object hook: `{"TORCHTENSOR": lists}` -> float32 RawTensor (JSON floats hold float32 exactly)."""
    if set(obj) == {"TORCHTENSOR"}:
        try:
            return RawTensor(np.asarray(obj["TORCHTENSOR"], dtype=np.float32), "fp32")
        except (TypeError, ValueError):
            raise EmbeddingFormatError("a TORCHTENSOR in the image is not a numeric array") from None
    return obj


def read_png_embedding(path: str | Path) -> dict:
    """The WebUI embedding dict stored in a PNG's `sd-ti-embedding` text chunk."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_PNG_BYTES + 1)
    if len(data) > MAX_PNG_BYTES:
        raise EmbeddingFormatError(f"image is larger than {MAX_PNG_BYTES} bytes")
    text = _find_text(data)
    if text is None:
        raise EmbeddingFormatError(
            "a PNG without an `sd-ti-embedding` text chunk: a preview image or an embedding hidden in the "
            "pixels, which is not supported; use the .pt/.safetensors file"
        )
    try:
        payload = json.loads(base64.b64decode(text), object_hook=_decode_tensors)
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmbeddingFormatError(f"the `sd-ti-embedding` chunk is not base64 JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise EmbeddingFormatError("the `sd-ti-embedding` chunk does not hold a dict")
    return payload
