"""benchmarks/bench_train.py runs end to end and writes the documented JSON (a smoke run: no timing asserted)."""

import json
import subprocess
import sys

from conftest import REPO

CONFIGS = ["example (ppdiffusers algorithm)", "ppti defaults", "ppti --mixed_precision bf16"]


def test_bench_tiny_smoke_run_writes_the_json_schema_and_a_table(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--size", "tiny", "--resolution", "64",
         "--steps", "2", "--warmup_steps", "0", "--batch_size", "2", "--configs", ",".join(CONFIGS),
         "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"size": "tiny", "resolution": 64, "steps": 2, "batch_size": 2}.items() <= report["config"].items()
    rows = {row["name"]: row for row in report["rows"]}
    skipped = {s["name"]: s["reason"] for s in report["skipped"]}
    assert set(rows) | set(skipped) == set(CONFIGS) and not set(rows) & set(skipped)
    for row in rows.values():
        assert {"name", "steps_per_s", "s_per_sample", "peak_mem_mb"} <= row.keys()
        assert row["steps_per_s"] > 0 and row["peak_mem_mb"] > 0 and len(row["step_seconds"]) == 2
        assert abs(row["s_per_sample"] - 1 / row["steps_per_s"] / 2) < 1e-9  # batch 2
    example, defaults = rows["example (ppdiffusers algorithm)"], rows["ppti defaults"]
    assert abs(report["speedup_vs_example"] - defaults["steps_per_s"] / example["steps_per_s"]) < 1e-9
    if "ppti --mixed_precision bf16" in skipped:  # a CPU build: refused with the trainer's own message
        assert "--mixed_precision bf16" in skipped["ppti --mixed_precision bf16"]
    table = done.stdout
    assert "| configuration | optimizer steps/s |" in table
    assert all(f"| {name} |" in table for name in rows)
