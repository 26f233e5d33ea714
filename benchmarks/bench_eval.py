"""Cost of the evaluation during training: one --eval_steps evaluation against the optimizer steps between two.

    python benchmarks/bench_eval.py --size tiny --batch_size 2 --json bench-eval-tiny.json     # the demo's settings
    python benchmarks/bench_eval.py --size small --resolution 128 --json bench-eval-small.json

The real trainer (ppti.train.setup, optimizer_step and evaluate) on random-weight models (bench_models.py): after
--warmup_steps untimed steps, --steps timed optimizer steps and --evals timed evaluations (frozen-batch loss of
--eval_batch_size examples, embedding norm/drift). Medians, so another process slowing one call down does not
count. overhead = evaluation seconds / (eval_steps x optimizer-step seconds), for the default --eval_steps and any
others asked for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

DEFAULT_RESOLUTION = {"tiny": 64, "small": 128, "sd15": 256}


def median_seconds(call, times: int) -> tuple[float, list[float]]:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), seconds


def measure(args) -> dict:
    from bench_models import build_components, write_model_folder

    from ppti.config import TrainConfig, parse_config
    from ppti.distributed import DistContext
    from ppti.train import batches, evaluate, optimizer_step, setup

    with tempfile.TemporaryDirectory(prefix="ppti-bench-eval-") as tmp:
        model_dir = write_model_folder(args.size, Path(tmp) / f"model-{args.size}")
        config = parse_config([
            "--pretrained_model_name_or_path", str(model_dir), "--train_data_dir", str(args.data_dir),
            "--output_dir", str(Path(tmp) / "out"), "--placeholder_token", "<bench-concept>",
            "--initializer_token", "toy", "--resolution", str(args.resolution),
            "--train_batch_size", str(args.batch_size), "--max_train_steps", "1000000", "--report_to", "none",
            "--seed", "0", "--eval_batch_size", str(args.eval_batch_size), "--eval_steps", "1",
        ])
        run = setup(config, DistContext(), build_components(model_dir))
        micro_batches = iter(batches(run, 0))
        for _ in range(args.warmup_steps):
            optimizer_step(run, micro_batches)
        evaluate(run, 0)  # warm-up of the no-grad path
        step_s, step_seconds = median_seconds(lambda: optimizer_step(run, micro_batches), args.steps)
        eval_s, eval_seconds = median_seconds(lambda: evaluate(run, 0), args.evals)
    default_eval_steps = TrainConfig.__dataclass_fields__["eval_steps"].default
    every = sorted({default_eval_steps, *args.eval_steps})
    return {
        "config": {"size": args.size, "resolution": args.resolution, "batch_size": args.batch_size,
                   "eval_batch_size": args.eval_batch_size, "steps": args.steps, "evals": args.evals},
        "optimizer_step_s": step_s, "evaluation_s": eval_s,
        "evaluation_in_optimizer_steps": eval_s / step_s,
        "overhead_percent": {str(n): 100 * eval_s / (n * step_s) for n in every},
        "default_eval_steps": default_eval_steps,
        "step_seconds": step_seconds, "eval_seconds": eval_seconds,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(DEFAULT_RESOLUTION), default="small")
    parser.add_argument("--resolution", type=int, help="Image size (default: tiny 64, small 128, sd15 256).")
    parser.add_argument("--batch_size", type=int, default=1, help="--train_batch_size.")
    parser.add_argument("--eval_batch_size", type=int, default=8, help="--eval_batch_size.")
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps.")
    parser.add_argument("--evals", type=int, default=5, help="Timed evaluations.")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--eval_steps", type=int, nargs="*", default=[10, 50],
                        help="Also report the overhead of these --eval_steps values.")
    parser.add_argument("--data_dir", type=Path, default=REPO / "examples" / "demo_concept")
    parser.add_argument("--json", type=Path, help="Write the results here as JSON.")
    args = parser.parse_args(argv)
    args.resolution = args.resolution or DEFAULT_RESOLUTION[args.size]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = measure(args)
    print(f"{args.size} @ {args.resolution}px, batch {args.batch_size}: optimizer step {report['optimizer_step_s']:.3f} s, "
          f"evaluation ({args.eval_batch_size} examples) {report['evaluation_s']:.3f} s "
          f"= {report['evaluation_in_optimizer_steps']:.2f} optimizer steps")
    for every, percent in report["overhead_percent"].items():
        print(f"  --eval_steps {every}: {percent:.2f}% of training time")
    if args.json:
        from ppti.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
