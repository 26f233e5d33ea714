"""Logging: console messages, the progress bar, and VisualDL / TensorBoard scalars and images (rank 0 only)."""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import atomic_write_bytes

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


FLUSH_SECONDS = 60  # how often the VisualDL log file is rewritten (and at every image and at the end)


class VisualDLRecords:
    """VisualDL's record file kept in memory and written through ppti's atomic path at each flush.

    VisualDL's own writer opens its file at once (an empty log stays behind when the run fails before step 1) and
    writes from a thread that only prints write errors (a full disk silently truncates the log). This keeps
    VisualDL's record framing, writes nothing until there is something to write, and a failed write raises the
    one-line WriteError like every other file of the run, leaving the previous version of the log intact."""

    def __init__(self, path: Path):
        from visualdl.writer.record_writer import RecordWriter

        self.path = path
        self._buffer = io.BytesIO()
        self._records = RecordWriter(self._buffer)
        self._written = 0

    def add_record(self, record) -> None:
        self._records.write(record.SerializeToString())

    def flush(self) -> None:
        if self._buffer.tell() != self._written:
            atomic_write_bytes(self.path, self._buffer.getvalue())
            self._written = self._buffer.tell()

    def close(self) -> None:
        self.flush()

    def get_filename(self) -> str:
        return str(self.path)


def visualdl_writer(logdir: Path):
    """visualdl.LogWriter writing through VisualDLRecords (its file name is VisualDL's own scheme)."""
    from visualdl import LogWriter

    class AtomicLogWriter(LogWriter):
        def _get_file_writer(self):
            if self._file_writer is None:
                self._file_writer = VisualDLRecords(Path(self._logdir) / f"vdlrecords.{int(time.time()):010d}.log")
                self._all_writers = {self._logdir: self._file_writer}
            return self._file_writer

    return AtomicLogWriter(logdir=str(logdir))


class Reporter:
    """Scalars and images to VisualDL, TensorBoard (tensorboardX) or nowhere."""

    def __init__(self, kind: str, logdir: Path):
        self.kind, self.writer = kind, None
        self._flushed = 0.0
        if kind == "visualdl":
            self.writer = visualdl_writer(logdir)
        elif kind == "tensorboard":
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise RuntimeError("--report_to tensorboard needs tensorboardX: pip install tensorboardX") from None
            self.writer = SummaryWriter(logdir=str(logdir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.kind == "visualdl":
            self.writer.add_scalar(tag=tag, value=value, step=step)
            if time.monotonic() - self._flushed > FLUSH_SECONDS:
                self.flush()
        elif self.kind == "tensorboard":
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image: (H, W, 3) uint8."""
        if self.kind == "visualdl":
            self.writer.add_image(tag=tag, img=image, step=step)
            self.flush()
        elif self.kind == "tensorboard":
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        self._flushed = time.monotonic()

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
