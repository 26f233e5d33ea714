"""A self-check a user runs on their own machine before a real training: `python tools/selfcheck.py`.

It prints one line per check -- the Paddle build (CUDA/cuDNN or CPU), the visible devices, which of fp16, bf16 and
memory-efficient attention have kernels here -- then trains a few steps of a tiny Stable Diffusion (ppti.tiny) in
fp32 and in each half precision this device computes in, and reports per precision: whether fp16 loss scaling is
active, how many steps were skipped, how far the trained rows are from the fp32 run's, the peak memory and
steps/s. Repeatability: per precision, two runs with --deterministic must give bit-identical embeddings (else the
largest difference is shown and the check fails); two fp32 runs without it are shown for comparison. With `--nproc N` it also trains through `python -m paddle.distributed.launch --nproc_per_node N` and
checks that every rank ends with bit-identical rows. Missing half-precision kernels (any CPU) are reported, not
failed; a run that fails or diverges is a failure, and any failure makes the exit code non-zero.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

STEPS = 4
RESOLUTION = 32
# How far a half-precision run's update of the rows may be from the fp32 run's, relative to the fp32 update's
# size. Half precision changes the UNet's rounding, so the updates differ; an fp16 run whose gradient underflowed
# (no loss scaling) moves the rows by Adam's epsilon-dominated noise and lands far outside this bound.
HALF_UPDATE_TOLERANCE = 0.25
RUN_TIMEOUT = 600  # seconds for the multi-rank run


@dataclass
class Line:
    ok: Optional[bool]  # None: information, not a check
    text: str

    def __str__(self) -> str:
        return f"[{'info' if self.ok is None else ' ok ' if self.ok else 'FAIL'}] {self.text}"


def build_lines() -> list[Line]:
    """The Paddle build and the visible devices."""
    import paddle

    if paddle.device.is_compiled_with_cuda():
        build = f"CUDA {paddle.version.cuda()}, cuDNN {paddle.version.cudnn()}"
        count = paddle.device.cuda.device_count()
        devices = f"{count} GPU(s) visible" + (f", this process on {paddle.device.get_device()}" if count else "")
        ok = count > 0
    else:
        build, devices, ok = "CPU build, no CUDA", "cpu (a CPU build sees no GPU)", True
    return [Line(None, f"paddle {paddle.__version__} ({build})"), Line(ok, f"devices: {devices}")]


def kernel_lines() -> tuple[list[Line], list[str]]:
    """Which half precisions and memory-efficient attention have kernels here; and the modes that can train."""
    import paddle
    from ppdiffusers.utils import is_ppxformers_available

    from .precision import DTYPES, kernel_problem

    device = paddle.device.get_device()
    lines, modes = [], ["no"]
    for mode in ("fp16", "bf16"):
        problem = kernel_problem(DTYPES[mode])
        if problem is None:
            modes.append(mode)
            lines.append(Line(None, f"{mode}: kernels on {device}"))
        else:
            reason = problem.replace("(NotFound) ", "")
            lines.append(Line(None, f"{mode}: no kernels on {device.split(':')[0]} ({reason})"))
    attention = "available" if is_ppxformers_available() else "not available (needs a CUDA build of Paddle)"
    lines.append(Line(None, f"memory-efficient attention: {attention}"))
    return lines, modes


def write_images(folder: Path, count: int = 2) -> Path:
    """A few small concept images (coloured squares on noise) to train on."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        pixels[16:48, 16:48] = [200 * (i % 2), 80, 200 * ((i + 1) % 2)]
        Image.fromarray(pixels).save(folder / f"concept-{i}.png")
    return folder


def train_flags(model: Path, data: Path, out: Path, mode: str) -> list[str]:
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--output_dir", str(out),
            "--placeholder_token", "<check>", "--initializer_token", "toy", "--resolution", str(RESOLUTION),
            "--train_batch_size", "1", "--max_train_steps", str(STEPS), "--learning_rate", "1e-2", "--repeats", "4",
            "--seed", "1", "--report_to", "none", "--lr_warmup_steps", "0", "--save_steps", "1000",
            "--checkpointing_steps", "0", "--mixed_precision", mode]


def peak_memory() -> tuple[str, Callable[[], None]]:
    """(the peak memory so far, as text; a function that restarts the count where the device allows it)."""
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count():
        peak = paddle.device.cuda.max_memory_allocated() / 2**20
        return f"peak device memory {peak:.0f} MiB", paddle.device.cuda.reset_max_memory_allocated
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    return f"peak RSS {peak:.0f} MiB (whole process)", lambda: None


def train_precisions(model: Path, data: Path, work: Path, modes: list[str]) -> list[Line]:
    """Train STEPS steps in each mode; one line per mode."""
    from .config import parse_config
    from .distributed import DistContext
    from .train import run_training

    lines, reference = [], None
    for mode in modes:
        name = "fp32" if mode == "no" else mode
        _, reset = peak_memory()
        reset()
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # the run's log and progress bar would drown the lines
                result = run_training(parse_config(train_flags(model, data, work / name, mode)), DistContext())
        except Exception as exc:  # noqa: BLE001 - a failed run is a failed check, reported in one line
            lines.append(Line(False, f"{name}: training failed: {type(exc).__name__}: {exc}"))
            continue
        memory, _ = peak_memory()
        finite = bool(np.isfinite(result.rows).all())
        parts = [f"{result.steps} steps, {result.skipped_steps} skipped"]
        ok = finite and result.skipped_steps < result.steps
        if mode == "fp16":
            active = result.loss_scale is not None
            parts.insert(0, f"loss scale {'active, now ' + format(result.loss_scale, 'g') if active else 'OFF'}")
            ok = ok and active
        if reference is None:
            reference = result
        else:
            update = np.linalg.norm(reference.rows - reference.start_rows)
            difference = float(np.linalg.norm(result.rows - reference.rows) / max(update, 1e-30))
            parts.append(f"rows differ from fp32 by {difference:.2%} of the fp32 update "
                         f"(bound {HALF_UPDATE_TOLERANCE:.0%})")
            ok = ok and difference <= HALF_UPDATE_TOLERANCE
        parts += [memory, f"{result.steps / max(result.loop_seconds, 1e-9):.1f} steps/s"]
        lines.append(Line(ok, f"{name}: " + ", ".join(parts) + ("" if finite else ", rows NOT finite")))
    return lines


def repeatability(model: Path, data: Path, work: Path, mode: str, deterministic: bool = True) -> Line:
    """Train the same short run twice in this process and compare the two embeddings byte for byte. With
    --deterministic they must be bit-identical (a failed check otherwise); without it the line is information
    (GPU kernels with atomic adds may differ run to run; a CPU repeats anyway)."""
    from .config import parse_config
    from .distributed import DistContext
    from .train import run_training

    name = "fp32" if mode == "no" else mode
    label = f"repeatability ({name}, {'--deterministic' if deterministic else 'without --deterministic'})"
    flags = ["--deterministic"] if deterministic else []
    rows = []
    for attempt in (1, 2):
        out = work / f"repeat-{name}-{'deterministic' if deterministic else 'plain'}-{attempt}"
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                rows.append(run_training(parse_config(train_flags(model, data, out, mode) + flags), DistContext()).rows)
        except Exception as exc:  # noqa: BLE001 - a failed run is a failed check, reported in one line
            return Line(False, f"{label}: training failed: {type(exc).__name__}: {exc}")
    if rows[0].tobytes() == rows[1].tobytes():
        return Line(True if deterministic else None, f"{label}: two {STEPS}-step runs, embeddings bit-identical")
    largest = float(np.abs(rows[0].astype(np.float64) - rows[1].astype(np.float64)).max())
    return Line(False if deterministic else None,
                f"{label}: two {STEPS}-step runs, embeddings DIFFER, largest difference {largest:.3g}")


WORKER = """import sys
from ppti.selfcheck import worker
worker(sys.argv[1], sys.argv[2:])
"""


def worker(out_dir: str, argv: list[str]) -> None:
    """One rank of the multi-rank check: train, then save the rows this rank holds."""
    import paddle.distributed as dist

    from .config import parse_config
    from .distributed import init_distributed
    from .reporting import setup_console
    from .train import run_training

    config = parse_config(argv)
    ctx = init_distributed()
    setup_console(ctx.is_main)  # (this process's entry point)
    result = run_training(config, ctx)
    np.save(Path(out_dir) / f"rank-{dist.get_rank()}.npy", result.rows)


def train_ranks(model: Path, data: Path, work: Path, nproc: int, mode: str) -> Line:
    """Train through paddle.distributed.launch with `nproc` ranks; every rank must hold the same rows."""
    name = "fp32" if mode == "no" else mode
    script, rows_dir = work / "selfcheck_worker.py", work / f"ranks-{name}"
    script.write_text(WORKER, encoding="utf-8")
    rows_dir.mkdir()
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
               "--log_dir", str(work / f"launch-log-{name}"), str(script), str(rows_dir),
               *train_flags(model, data, work / f"out-{nproc}-ranks", mode)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        return Line(False, f"{nproc} ranks ({name}): the launch failed (exit {done.returncode}): {tail}")
    rows = [np.load(rows_dir / f"rank-{r}.npy") for r in range(nproc)]
    same = all(np.array_equal(rows[0], other) for other in rows[1:])
    return Line(same, f"{nproc} ranks ({name}): rows {'bit-identical' if same else 'DIFFER'} on every rank "
                      f"({seconds:.0f} s including start-up)")


def selfcheck(nproc: Optional[int] = None, print_line: Callable[[str], None] = print) -> int:
    """Run every check, printing one line each; returns the exit code (0: all passed)."""
    from .reporting import quiet_libraries
    from .tiny import make_tiny_model

    quiet_libraries()
    lines: list[Line] = []

    def emit(new: list[Line]) -> None:
        for line in new:
            lines.append(line)
            print_line(str(line))

    emit(build_lines())
    kernel_info, modes = kernel_lines()
    emit(kernel_info)
    with tempfile.TemporaryDirectory(prefix="ppti-selfcheck-") as tmp:
        work = Path(tmp)
        model = make_tiny_model(work / "tiny-sd", language="en")
        data = write_images(work / "images")
        precision_lines = train_precisions(model, data, work, modes)  # (one line per mode)
        emit(precision_lines)
        trained = [mode for mode, line in zip(modes, precision_lines) if line.ok]  # (a failed one is reported)
        # without --deterministic first: its flags and environment variable stay set in this process once set
        emit([repeatability(model, data, work, "no", deterministic=False)])
        emit([repeatability(model, data, work, mode) for mode in trained])
        if nproc:
            emit([train_ranks(model, data, work, nproc, mode) for mode in modes])
    failed = sum(line.ok is False for line in lines)
    print_line("all checks passed" if not failed else f"{failed} check(s) FAILED")
    return 1 if failed else 0
