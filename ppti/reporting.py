"""Logging: console messages, the progress bar, and VisualDL / TensorBoard scalars and images (rank 0 only)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger("ppti")


def setup_console(is_main: bool) -> None:
    """Rank 0 logs INFO; other ranks only warnings and errors (prefixed with their rank by the launcher)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    quiet_libraries()
    if not is_main:  # other ranks stay quiet: no model-loading progress bars either
        from ppdiffusers.utils import logging as ppdiffusers_logging

        ppdiffusers_logging.disable_progress_bar()


def quiet_libraries() -> None:
    """ppdiffusers/paddlenlp log every file they load at INFO; keep their warnings and errors only."""
    from paddlenlp.utils.log import logger as paddlenlp_logger
    from ppdiffusers.utils import logging as ppdiffusers_logging

    ppdiffusers_logging.set_verbosity_warning()
    paddlenlp_logger.set_level("WARNING")


class Reporter:
    """Scalars and images to VisualDL, TensorBoard (tensorboardX) or nowhere."""

    def __init__(self, kind: str, logdir: Path):
        self.kind, self.writer = kind, None
        if kind == "visualdl":
            from visualdl import LogWriter

            self.writer = LogWriter(logdir=str(logdir))
        elif kind == "tensorboard":
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise RuntimeError("--report_to tensorboard needs tensorboardX: pip install tensorboardX") from None
            self.writer = SummaryWriter(logdir=str(logdir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.kind == "visualdl":
            self.writer.add_scalar(tag=tag, value=value, step=step)
        elif self.kind == "tensorboard":
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image: (H, W, 3) uint8."""
        if self.kind == "visualdl":
            self.writer.add_image(tag=tag, img=image, step=step)
        elif self.kind == "tensorboard":
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class NullReporter(Reporter):
    def __init__(self) -> None:
        super().__init__("none", Path("."))


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="Train steps", disable=not enabled, dynamic_ncols=True)


def format_summary(rows: list[tuple[str, object]], title: Optional[str] = None) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [f"***** {title} *****"] if title else []
    lines += [f"  {k.ljust(width)} = {v}" for k, v in rows]
    return "\n".join(lines)
