"""`--deterministic`: the Paddle flags that make GPU kernels deterministic.

What is bit-identical where (the README says the same):
- CPU: always -- a run, a resumed run and a run on 2 ranks repeat bit for bit;
- GPU: only with --deterministic. Without it three kernels of a ppti step are non-deterministic: the embedding
  gradient (atomic adds; FLAGS_embedding_deterministic), cuDNN's convolution algorithm choice and backward
  (FLAGS_cudnn_deterministic), and flash attention's backward (Paddle's flash_attn_grad kernel splits the sum
  unless FLAGS_cudnn_deterministic is set). With it, a run repeats on the same GPU model, driver and Paddle build;
  different GPU models or builds may still differ in the last bits.
The flags only exist in GPU builds of Paddle; a CPU build lacks them and needs none.
"""

from __future__ import annotations

import logging

import paddle

log = logging.getLogger("ppti")

# flag -> value; FLAGS_embedding_deterministic=1 selects the optimized deterministic embedding-gradient kernel
DETERMINISTIC_FLAGS = {"FLAGS_cudnn_deterministic": True, "FLAGS_embedding_deterministic": 1}


def make_deterministic() -> tuple[list[str], list[str]]:
    """Set every flag this Paddle build has; returns (set, absent from this build) and logs both."""
    set_flags, absent = [], []
    for name, value in DETERMINISTIC_FLAGS.items():
        try:
            paddle.set_flags({name: value})
        except ValueError:  # "Flag ... cannot set its value through this function": not compiled into the build
            absent.append(name)
        else:
            set_flags.append(f"{name}={value}")
    log.info("--deterministic: set %s%s", ", ".join(set_flags) or "no flag",
             f"; not in this Paddle build (CPU kernels are deterministic anyway): {', '.join(absent)}"
             if absent else "")
    return set_flags, absent
