"""Helpers several test files share (fixtures live in conftest.py): launching two CPU ranks, reading a run's
rows and VisualDL scalars, and pickles that would run code."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

LAUNCH_TIMEOUT = 240  # seconds: a rank hanging in a collective fails the test instead of hanging the suite
FAILURE_BOUND = 120  # seconds in which a run with a failing rank must have ended
RELATIVE_TOLERANCE = 1e-5
# Adam divides the gradient by its own magnitude (m / sqrt(v) is scale-free), so an update computed from a
# gradient twice too large -- summed over ranks instead of averaged -- would look right. An epsilon far above the
# gradients (~1e-2 on the tiny model) makes the update proportional to the gradient, so such a bug shows.
SCALE_SENSITIVE_ADAM = {"learning_rate": 1.0, "adam_epsilon": 1.0}


def launch(script: Path, args: list, log_dir: Path, env: dict | None = None) -> tuple[int, str, float]:
    """`python -m paddle.distributed.launch --nproc_per_node 2 script args` on CPU: (exit code, console, seconds)."""
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
               str(script), *map(str, args)]
    # On a CPU build the launcher starts gloo ranks by itself. (Paddle 3.3.1's launcher fails with an IndexError
    # when CUDA_VISIBLE_DEVICES is set to the empty string, so it is not used to force the CPU.)
    env = {**os.environ, **(env or {})}
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env,
                            start_new_session=True)  # its own process group: the workers can be killed with it
    try:
        console, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        console, _ = proc.communicate()
        pytest.fail(f"the launcher did not end within {LAUNCH_TIMEOUT} s:\n{console[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a worker the launcher left behind
        except ProcessLookupError:
            pass
    return proc.returncode, console, time.monotonic() - started


def saved_rows(out_dir: Path) -> np.ndarray:
    import paddle

    (rows,) = paddle.load(str(out_dir / "learned_embeds.pdparams")).values()
    return np.asarray(rows)


def initial_rows(model: Path, config) -> np.ndarray:
    """The rows before any step, built the way setup builds them."""
    from ppti.models import load_components
    from ppti.tokens import add_placeholder_tokens, initializer_ids, install_trainable_rows

    components = load_components(str(model))
    ids = add_placeholder_tokens(components.tokenizer, config.placeholder_tokens())
    init_ids, _ = initializer_ids(components.tokenizer, config.initializer_token)
    return install_trainable_rows(components.text_encoder, len(components.tokenizer), ids, init_ids).rows.numpy()


def assert_same_update(rows: np.ndarray, expected: np.ndarray, initial: np.ndarray) -> None:
    update, expected_update = rows - initial, expected - initial
    assert np.abs(expected_update).max() > 1e-3, "the test needs an update well above float32 rounding"
    error = np.abs(update - expected_update).max() / np.abs(expected_update).max()
    assert error <= RELATIVE_TOLERANCE, f"updates differ by {error:.2e} (relative)"


def logged(out_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of a scalar in a run's VisualDL log."""
    from visualdl import LogReader

    (log_file,) = (out_dir / "logs").glob("vdlrecords.*.log")
    return {int(r.id): float(r.value) for r in LogReader(file_path=str(log_file)).get_data("scalar", tag)}


class RunsCode:
    """Pickles as os.system(command): what a malicious checkpoint does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def malicious_files(tmp_path, marker):
    """A .pdparams, a .pt and a .bin whose pickles would run `touch marker`."""
    payload = pickle.dumps({"<tok>": RunsCode(f"touch {marker}")}, protocol=2)
    pdparams = tmp_path / "evil.pdparams"
    pdparams.write_bytes(payload)
    zips = []
    for name in ("evil.pt", "evil.bin"):
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
            archive.writestr("archive/version", "3\n")
        zips.append(tmp_path / name)
    return [pdparams, *zips]
