"""Training speed and peak memory: ppti against the ppdiffusers example's algorithm, on random-weight models.

    python benchmarks/bench_train.py --size small --resolution 128 --steps 3 --json bench-small.json
    python benchmarks/bench_train.py --size sd15 --resolution 256 --steps 3 --json bench-sd15.json
    python benchmarks/bench_train.py --size sdxl --resolution 256 --steps 3 --json bench-sdxl.json

Every configuration runs in its own process (same random weights, same images: examples/demo_concept unless
--data_dir), so its peak memory is its own: RSS high-water mark (VmHWM) on CPU, peak allocated memory on a GPU.
Per configuration: the setup (for ppti: latent cache included), --warmup_steps untimed optimizer steps, then
--steps timed optimizer steps of --batch_size samples. steps/s and s/sample come from the median step time, and
with --rounds N every configuration runs N times (round-robin) keeping its fastest round: other processes on a
shared machine only ever slow a step down. Every step's time is in the JSON.

Configurations:
- example: the ppdiffusers example's algorithm (benchmarks/example_algorithm.py): images decoded and prompts
  tokenized per example, the VAE encoding every step, AdamW over the whole embedding matrix + row restore;
  with --size sdxl, diffusers' textual_inversion_sdxl.py algorithm (SDXLExampleTrainer; it has no switches);
- example + <one optimisation>: the example with one of ppti's optimisations alone;
- ppti defaults and ppti with one flag: the real trainer (ppti.train.setup + ppti.train.optimizer_step).
A configuration the device cannot run (e.g. --mixed_precision on a CPU build) is listed as skipped, with why.

The cost of aspect-ratio buckets at equal area: the two "mixed-aspect images" configurations train on a copy of the
images cut to 4:1, 1:1, 1:4 and 3:1 -- square at --resolution with --center_crop, and with --buckets (at 128 px the
buckets 64x256, 128x128 and 256x64 all have exactly 128² pixels):

    python benchmarks/bench_train.py --size small --steps 10 --warmup_steps 2 --rounds 2 \
        --configs "ppti square (mixed-aspect images),ppti --buckets (mixed-aspect images)"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

DEFAULT_RESOLUTION = {"tiny": 64, "small": 128, "sd15": 256, "sdxl": 256}
EXAMPLE, PPTI_DEFAULTS = "example (ppdiffusers algorithm)", "ppti defaults"
# name -> ("example", switches) or ("ppti", extra command-line flags)
CONFIGS = {
    EXAMPLE: ("example", {}),
    "example + images and prompts prepared once": ("example", {"decode_once": True}),
    "example + latent cache": ("example", {"decode_once": True, "cache_latents": True}),
    "example + placeholder-rows AdamW": ("example", {"placeholder_rows": True}),
    PPTI_DEFAULTS: ("ppti", []),
    "ppti --no_cache_latents": ("ppti", ["--no_cache_latents"]),
    "ppti --gradient_checkpointing": ("ppti", ["--gradient_checkpointing"]),
    "ppti --mixed_precision bf16": ("ppti", ["--mixed_precision", "bf16"]),
    "ppti --mixed_precision fp16": ("ppti", ["--mixed_precision", "fp16"]),
    "ppti square (mixed-aspect images)": ("ppti", ["--center_crop"]),
    "ppti --buckets (mixed-aspect images)": ("ppti", ["--buckets"]),
}
MIXED_ASPECTS = [(4, 1), (1, 1), (1, 4), (3, 1)]  # width:height of the mixed-aspect copies, image by image
RESULT_PREFIX = "BENCH_RESULT "


# ------------------------------------------------------------------------------------------------------------
# worker: one configuration, in its own process
# ------------------------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's resident-set high-water mark."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


def peak_memory() -> tuple[float, str]:
    """(MB, kind): peak allocated device memory on a GPU, else the RSS high-water mark."""
    import paddle

    if paddle.device.get_device().startswith("gpu"):
        return paddle.device.cuda.max_memory_allocated() / 2**20, "gpu_allocated"
    return peak_rss_mb(), "rss"


def ppti_stepper(components, args, flags: list[str]):
    """The real trainer with default flags (plus `flags`): returns its optimizer-step function."""
    from ppti.config import parse_config
    from ppti.distributed import DistContext
    from ppti.train import batches, optimizer_step, setup

    config = parse_config([
        "--pretrained_model_name_or_path", str(args.model_dir), "--train_data_dir", str(args.data_dir),
        "--output_dir", str(args.out_dir), "--placeholder_token", "<bench-concept>", "--initializer_token", "toy",
        "--resolution", str(args.resolution), "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.warmup_steps + args.steps), "--report_to", "none", "--seed", "0", *flags,
    ])
    run = setup(config, DistContext(), components)
    micro_batches = iter(batches(run, 0))
    return lambda: optimizer_step(run, micro_batches)


def example_stepper(components, args, switches: dict):
    from example_algorithm import ExampleTrainer, SDXLExampleTrainer, Switches

    from ppti.config import ConfigError

    if components.is_sdxl:
        if switches:
            raise ConfigError("the SDXL example algorithm is measured as diffusers runs it, without switches")
        return SDXLExampleTrainer(components, args.data_dir, args.resolution, args.batch_size).optimizer_step

    trainer = ExampleTrainer(components, args.data_dir, args.resolution, args.batch_size, Switches(**switches))
    return trainer.optimizer_step


def run_worker(args) -> dict:
    """Build, set up, warm up, time; the measurements of configuration args.worker."""
    from bench_models import build_components

    from ppti.config import ConfigError

    kind, options = CONFIGS[args.worker]
    components = build_components(args.model_dir)
    started = time.perf_counter()
    try:
        if kind == "ppti":
            step = ppti_stepper(components, args, options)
        else:
            step = example_stepper(components, args, options)
    except ConfigError as exc:  # e.g. a precision this device cannot compute in
        return {"name": args.worker, "skipped": str(exc)}
    setup_s = time.perf_counter() - started
    for _ in range(args.warmup_steps):
        step()
    step_seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        loss = step()
        step_seconds.append(time.perf_counter() - started)
    # the median step: robust to a step slowed down by another process on a shared machine
    median = statistics.median(step_seconds)
    peak_mb, kind = peak_memory()
    return {
        "name": args.worker, "steps_per_s": 1 / median, "s_per_sample": median / args.batch_size,
        "peak_mem_mb": peak_mb, "peak_mem_kind": kind, "setup_s": setup_s, "step_seconds": step_seconds,
        "last_loss": loss,
    }


# ------------------------------------------------------------------------------------------------------------
# orchestrator
# ------------------------------------------------------------------------------------------------------------
def write_mixed_aspect_images(data_dir: Path, out: Path) -> Path:
    """A copy of the images centre-cropped to the MIXED_ASPECTS in turn (same pixels per image as far as they go)."""
    from PIL import Image

    from ppti.data import center_crop_to_aspect, find_image_files

    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(find_image_files(data_dir)[0]):
        width, height = MIXED_ASPECTS[i % len(MIXED_ASPECTS)]
        with Image.open(path) as image:
            center_crop_to_aspect(image.convert("RGB"), height, width).save(out / f"{path.stem}.png")
    return out


def run_configuration(name: str, args, model_dir: Path, log_dir: Path) -> dict:
    """One configuration in a fresh Python process; its stderr goes to log_dir/<name>.log."""
    log_path = log_dir / (name.replace(" ", "_").replace("/", "-")+ ".log")
    data_dir = args.data_dir
    if "mixed-aspect" in name:
        data_dir = write_mixed_aspect_images(args.data_dir, log_dir / "mixed-aspect-images")
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model_dir", str(model_dir),
        "--data_dir", str(data_dir), "--out_dir", str(log_dir / "out"), "--resolution", str(args.resolution),
        "--steps", str(args.steps), "--warmup_steps", str(args.warmup_steps), "--batch_size", str(args.batch_size),
    ]
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log_file:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPO)
    results = [line[len(RESULT_PREFIX):] for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not results:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        raise SystemExit(f"configuration {name!r} failed (exit {done.returncode}); log {log_path}:\n{tail}")
    print(f"  {name}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return json.loads(results[-1])


def markdown_table(rows: list[dict], example: dict | None) -> str:
    lines = ["| configuration | optimizer steps/s | s/sample | peak memory (MB) | vs example: speed | memory | "
             "setup (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        speed = f"{row['steps_per_s'] / example['steps_per_s']:.2f}x" if example else "-"
        memory = f"{row['peak_mem_mb'] / example['peak_mem_mb']:.2f}x" if example else "-"
        lines.append(f"| {row['name']} | {row['steps_per_s']:.4f} | {row['s_per_sample']:.3f} | "
                     f"{row['peak_mem_mb']:.0f} | {speed} | {memory} | {row['setup_s']:.1f} |")
    return "\n".join(lines)


def run_benchmark(args) -> dict:
    import platform

    from bench_models import write_model_folder

    names = args.configs.split(",") if args.configs else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; known: {list(CONFIGS)}")
    with tempfile.TemporaryDirectory(prefix="ppti-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        model_dir = write_model_folder(args.size, work / f"model-{args.size}")
        print(f"benchmark: size {args.size}, {args.resolution} px, batch {args.batch_size}, {args.warmup_steps} "
              f"warm-up + {args.steps} timed steps; {len(names)} configurations", file=sys.stderr, flush=True)
        rounds = [[run_configuration(name, args, model_dir, work) for name in names] for _ in range(args.rounds)]
    # per configuration, the round with the fastest median step (other processes only ever slow a round down)
    measured = [min(runs, key=lambda r: 1 / r.get("steps_per_s", 1)) for runs in zip(*rounds)]
    rows = [r for r in measured if "skipped" not in r]
    by_name = {r["name"]: r for r in rows}
    example, defaults = by_name.get(EXAMPLE), by_name.get(PPTI_DEFAULTS)
    import paddle

    return {
        "config": {
            "size": args.size, "resolution": args.resolution, "steps": args.steps,
            "warmup_steps": args.warmup_steps, "batch_size": args.batch_size, "rounds": args.rounds,
            "data_dir": str(args.data_dir),
            "device": paddle.device.get_device(), "paddle": paddle.__version__, "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
        },
        "rows": rows,
        "skipped": [{"name": r["name"], "reason": r["skipped"]} for r in measured if "skipped" in r],
        "speedup_vs_example": defaults["steps_per_s"] / example["steps_per_s"] if example and defaults else None,
        "peak_mem_vs_example": defaults["peak_mem_mb"] / example["peak_mem_mb"] if example and defaults else None,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(DEFAULT_RESOLUTION), default="small",
                        help="Model size: tiny (test model), small (SD-1.5 layout, 1/4 widths), sd15 (SD-1.5 shapes), "
                             "sdxl (SDXL's text encoders and VAE, its UNet at half width).")
    parser.add_argument("--resolution", type=int, help="Image size (default: tiny 64, small 128, sd15 256).")
    parser.add_argument("--steps", type=int, default=3, help="Timed optimizer steps per configuration.")
    parser.add_argument("--warmup_steps", type=int, default=1, help="Untimed optimizer steps before timing.")
    parser.add_argument("--batch_size", type=int, default=1, help="Samples per optimizer step.")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Run every configuration this many times (round-robin) and keep each one's fastest "
                        "round: steadier numbers on a machine other processes share.")
    parser.add_argument("--json", type=Path, help="Write the results here as JSON.")
    parser.add_argument("--configs", help=f"Comma-separated subset of: {', '.join(CONFIGS)}.")
    parser.add_argument("--data_dir", type=Path, default=REPO / "examples" / "demo_concept", help="Training images.")
    parser.add_argument("--work_dir", type=Path, help="Keep the model folder and per-configuration logs here.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one configuration
    parser.add_argument("--model_dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out_dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.resolution = args.resolution or DEFAULT_RESOLUTION[args.size]
    for name in ("resolution", "steps", "batch_size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.resolution % 8:
        parser.error("--resolution must be a multiple of 8")
    if args.warmup_steps < 0:
        parser.error("--warmup_steps must be >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(run_worker(args)), flush=True)
        return 0
    report = run_benchmark(args)
    by_name = {r["name"]: r for r in report["rows"]}
    print(markdown_table(report["rows"], by_name.get(EXAMPLE)))
    for skipped in report["skipped"]:
        print(f"\nskipped {skipped['name']}: {skipped['reason']}")
    if report["speedup_vs_example"] is not None:
        print(f"\nppti defaults vs the example: {report['speedup_vs_example']:.2f}x optimizer steps/s, "
              f"{report['peak_mem_vs_example']:.2f}x peak memory")
    if args.json:
        from ppti.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
