"""Raw tensors as the containers store them, and lossless/rounding dtype conversion.

Every reader turns its container into `RawTensor`s (numpy data in the stored dtype, bf16 kept as its uint16 bit
pattern because numpy has no bfloat16); the layout code then decodes them to float32, which is lossless for
fp16 and bf16. Writers round float32 down to fp16/bf16 here, with round-to-nearest-even like PyTorch and Paddle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Our dtype names -> numpy dtype of the stored data (bf16 is stored as uint16 bit patterns).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "fp32": np.dtype("<f4"),
    "fp16": np.dtype("<f2"),
    "bf16": np.dtype("<u2"),
    "fp64": np.dtype("<f8"),
}
WRITE_DTYPES = ("fp32", "fp16", "bf16")
_FLOAT_NAMES = {("f", 4): "fp32", ("f", 2): "fp16", ("f", 8): "fp64"}


class EmbeddingFormatError(ValueError):
    """A file is not a readable embedding, or an embedding cannot be written as asked."""


@dataclass(frozen=True)
class RawTensor:
    """Tensor data exactly as stored: `data` has the kind and item size of `STORAGE_DTYPES[dtype]`."""

    data: np.ndarray
    dtype: str


def raw_from_numpy(array: np.ndarray, uint16_is_bf16: bool) -> RawTensor:
    """Wrap a numpy array; `uint16_is_bf16` is Paddle's convention (it pickles bf16 tensors as uint16)."""
    if uint16_is_bf16 and array.dtype.kind == "u" and array.dtype.itemsize == 2:
        return RawTensor(array, "bf16")
    name = _FLOAT_NAMES.get((array.dtype.kind, array.dtype.itemsize))
    if name is None:
        raise EmbeddingFormatError(f"a tensor of dtype {array.dtype} is not a float embedding")
    return RawTensor(array, name)


def to_float32(raw: RawTensor) -> np.ndarray:
    """Decode to float32: exact for fp32/fp16/bf16 (fp64 is rounded to float32)."""
    if raw.dtype == "bf16":
        bits = np.ascontiguousarray(raw.data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    return np.ascontiguousarray(raw.data, dtype=np.float32)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)  # keep a quiet NaN
    return rounded


def from_float32(values: np.ndarray, dtype: str) -> RawTensor:
    """Round float32 vectors to the stored dtype for writing (fp32 is kept bit-exact)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "fp32":
        return RawTensor(values, "fp32")
    if dtype == "fp16":
        with np.errstate(over="ignore"):  # overflow is reported below, with advice
            half = values.astype("<f2")
        if np.isinf(half).any() and not np.isinf(values).any():
            raise EmbeddingFormatError("values exceed the fp16 range (|x| > 65504): write fp32 or bf16")
        return RawTensor(half, "fp16")
    if dtype == "bf16":
        return RawTensor(bf16_bits(values), "bf16")
    raise EmbeddingFormatError(f"cannot write dtype {dtype!r}: choose one of {', '.join(WRITE_DTYPES)}")


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values a file written with `dtype` reads back as."""
    return to_float32(from_float32(values, dtype))
