"""tools/selfcheck.py on this CPU: one line per check, fp16/bf16 reported as missing kernels (not failures), a real
fp32 training of the tiny model, two launched ranks with bit-identical rows, and a non-zero exit on a failure."""

from __future__ import annotations

import re
import subprocess
import sys

import paddle

import ppti.selfcheck as selfcheck
from ppti.precision import kernel_problem

from conftest import REPO

LINE = re.compile(r"^\[( ok |info|FAIL)\] \S")


def test_selfcheck_on_cpu_reports_missing_half_kernels_and_passes_with_two_ranks():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "selfcheck.py"), "--nproc", "2"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert all(LINE.match(line) for line in lines[:-1]) and lines[-1] == "all checks passed", lines
    text = "\n".join(lines)
    assert re.search(rf"^\[info\] paddle {re.escape(paddle.__version__)} \(", text, re.M)
    assert re.search(r"^\[ ok \] devices: ", text, re.M)
    for mode, dtype in (("fp16", "float16"), ("bf16", "bfloat16")):
        if kernel_problem(dtype) is not None:
            assert re.search(rf"^\[info\] {mode}: no kernels on cpu", text, re.M)
    assert re.search(r"^\[info\] memory-efficient attention: ", text, re.M)
    assert re.search(r"^\[ ok \] fp32: 4 steps, 0 skipped, peak \S+ \d+ MiB.*, [\d.]+ steps/s$", text, re.M)
    assert re.search(r"^\[ ok \] 2 ranks \(fp32\): rows bit-identical on every rank", text, re.M)


def test_a_failing_precision_run_is_a_failed_check_and_a_non_zero_exit(monkeypatch):
    """Pretend the device had fp16 kernels: the fp16 run is refused by the trainer, which must fail the check."""
    if kernel_problem("float16") is None:
        import pytest

        pytest.skip("this device computes in float16")
    real = selfcheck.kernel_lines
    monkeypatch.setattr(selfcheck, "kernel_lines", lambda: (real()[0], ["no", "fp16"]))
    printed: list[str] = []
    assert selfcheck.selfcheck(print_line=printed.append) == 1
    assert any(line.startswith("[FAIL] fp16: training failed: ConfigError: --mixed_precision fp16") for line in printed)
    assert any(line.startswith("[ ok ] fp32: ") for line in printed) and printed[-1] == "1 check(s) FAILED"
