"""Textual-inversion embedding files for every ecosystem: ppdiffusers, diffusers, WebUI, kohya, SDXL pairs.

Readers need only numpy (no torch, no Paddle) and never execute pickled code; writers are atomic.
See `formats.py` for the layouts and token-naming rules and `convert.py` for what tools/convert.py does.
"""

from .formats import (
    LAYOUTS,
    WRITE_FORMATS,
    Embedding,
    read_embeddings,
    sdxl_pair_paths,
    write_embeddings,
    write_sdxl_pair,
)
from .safe_pickle import UnsafePickleError
from .tensors import WRITE_DTYPES, EmbeddingFormatError, round_to

__all__ = [
    "LAYOUTS",
    "WRITE_DTYPES",
    "WRITE_FORMATS",
    "Embedding",
    "EmbeddingFormatError",
    "UnsafePickleError",
    "read_embeddings",
    "round_to",
    "sdxl_pair_paths",
    "write_embeddings",
    "write_sdxl_pair",
]
