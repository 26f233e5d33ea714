"""ppti: a PaddlePaddle textual-inversion trainer for Stable Diffusion models."""

__version__ = "0.1.0"
