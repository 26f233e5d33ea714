"""Restricted unpickling: numbers, strings, plain containers and arrays only, never code.

`pickle.load`, `paddle.load` and `torch.load` without `weights_only` call whatever global a file names, so a
crafted `.pt/.bin/.pdparams` runs code on load. Here every global a pickle references is looked up in an
allow-list of harmless stand-ins (array rebuilders that validate their input, dtype markers, `OrderedDict`);
anything else stops the load before it is called, with an error naming the global it referenced.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from typing import Any, Callable, Mapping

import numpy as np

from .tensors import EmbeddingFormatError

MAX_PICKLE_BYTES = 1 << 30  # an embedding pickle is kilobytes; a gigabyte is surely not an embedding
_SAFE_DTYPE_KINDS = "fiub"  # float, signed, unsigned, bool: no objects, no structured records


class UnsafePickleError(EmbeddingFormatError):
    """A pickle referenced a global outside the allow-list; nothing it names was executed."""


class _NdarrayMarker:
    """Stands for `numpy.ndarray` so that a pickle can name the class but never call it directly."""


NDARRAY = _NdarrayMarker()


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """`numpy.dtype(...)` limited to plain numeric type codes such as 'f4' or '<u2'."""
    if not isinstance(spec, str):
        raise EmbeddingFormatError(f"refusing numpy dtype {spec!r}: only numeric type codes are allowed")
    dtype = np.dtype(spec)
    if dtype.kind not in _SAFE_DTYPE_KINDS or dtype.fields is not None:
        raise EmbeddingFormatError(f"refusing numpy dtype {spec!r}: only numeric arrays are allowed")
    return dtype


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """`numpy.core.multiarray._reconstruct` for plain ndarrays only (the data arrives in the BUILD that follows)."""
    if cls is not NDARRAY:
        raise EmbeddingFormatError("refusing to rebuild an array of a type other than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _scalar(dtype: Any, data: Any) -> Any:
    """`numpy.core.multiarray.scalar`: a numpy scalar from a numeric dtype and its raw bytes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _SAFE_DTYPE_KINDS or not isinstance(data, bytes):
        raise EmbeddingFormatError("refusing a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it to carry bytes: latin-1 text -> bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise EmbeddingFormatError("refusing _codecs.encode other than latin-1 text to bytes")
    return text.encode("latin1")


def _tuple(items: Any = ()) -> tuple:
    """`builtins.tuple`: paddle.save(tensor) pickles a bare tensor as tuple(((name, array),))."""
    if not isinstance(items, (list, tuple)):
        raise EmbeddingFormatError("refusing builtins.tuple over something other than a list or tuple")
    return tuple(items)


def _set(items: Any = ()) -> set:
    """`builtins.set`: a pickled torch Module (old WebUI ParameterDict) carries sets of names."""
    if not isinstance(items, (list, tuple)):
        raise EmbeddingFormatError("refusing builtins.set over something other than a list or tuple")
    return set(items)


BASE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): _safe_dtype,
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    **{(module, "tuple"): _tuple for module in ("builtins", "__builtin__")},  # protocol 2 says __builtin__
    **{(module, "set"): _set for module in ("builtins", "__builtin__")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose globals come only from `allowed`."""

    def __init__(
        self, data: bytes, allowed: Mapping[tuple[str, str], Any], persistent_load: Callable[[Any], Any] | None
    ):
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._allowed = allowed
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to unpickle: it references {module}.{name}, which is not an allowed tensor, array or "
                "container type (nothing in the file was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise EmbeddingFormatError("unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def restricted_loads(
    data: bytes,
    extra_globals: Mapping[tuple[str, str], Any] | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
    """Unpickle `data` allowing only `BASE_GLOBALS` plus `extra_globals`; malformed input -> EmbeddingFormatError."""
    if len(data) > MAX_PICKLE_BYTES:
        raise EmbeddingFormatError(f"pickle of {len(data)} bytes is larger than the {MAX_PICKLE_BYTES}-byte cap")
    allowed = {**BASE_GLOBALS, **(extra_globals or {})}
    try:
        return _RestrictedUnpickler(data, allowed, persistent_load).load()
    except EmbeddingFormatError:
        raise
    except Exception as exc:  # any malformed pickle: UnpicklingError, EOFError, TypeError, MemoryError, ...
        raise EmbeddingFormatError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None
