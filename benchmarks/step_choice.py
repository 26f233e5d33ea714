"""Which saved step is best? The toy world's judge tells the truth per step; rules that pick a step are scored on it.

    python benchmarks/step_choice.py --concepts star heart striped outlined --seeds 0 1 \\
        --json benchmarks/results/step-choice.json --plot_dir benchmarks/results/step-choice

Per held-out concept (objects: star, heart; styles: striped, outlined) and seed:
1. ppti trains a placeholder from 5 renderings (as benchmarks/concept_recovery.py does) in a regime that
   over-trains: --learning_rate 5e-3 constant for --max_train_steps 480, saving (and logging eval/loss) every
   --save_steps 40. By the end the placeholder's norm has grown and the edits degrade.
2. Ground truth: every saved step is scored by the world's judge on fixed-seed samples (ppti/world/recovery.py:
   12 x --sample_repeats concept prompts, 2 x --sample_repeats per edit, and for styles per shape). The combined
   score is the fraction of all those samples in which the judge finds the concept *and* everything else the prompt
   asked for (a colour, a background, a shape): what a user wants from the word.
3. tools/evaluate.py runs on the same run with the toy-world CLIP (models/toy-world-clip) and world prompts (the
   reconstruction prompt and the recovery edits), its own seeds: CLIP image/text similarity, eval loss, norm.
4. Rules pick a step from what tools/evaluate.py measured (never from the judge): ppti's recommendation and the
   alternatives in RULES. A rule's ratio on a run is the combined score of its step over the best step's.
5. Early stopping: --early_stopping replayed on the eval/loss of the saved steps (the trainer's own EarlyStopping
   class on the same numbers training logs), with the trainer's defaults and a grid of windows and thresholds.

Writes --json ({"config", "concepts", "rules", "noise_ceiling", "pareto_front", "early_stopping"}; each concept
entry also holds its per-step table) and, with --plot_dir, one plot per concept and seed. Deterministic for fixed
seeds. 284-814 s per concept and seed here (2 CPU cores shared by up to three runs).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent

from ppti.config import TrainConfig
from ppti.tool_cli import tool_parser
from ppti.world.recovery import CONCEPTS, SAMPLES_PER_EDIT, CONCEPT_SAMPLES
from ppti.world.shipped import CLIP_DIR, WORLD_DIR

ANY_STEP_RATIO = 0.95  # the bar: a chosen step scores at least this fraction of the best step
EARLY_STOPPING_DEFAULTS = (TrainConfig.early_stopping_window, TrainConfig.early_stopping_threshold)
WINDOWS = (2, 3, 4, 5, 6, 8, 10)  # the early-stopping grid (evaluations)
THRESHOLDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


# ------------------------------------------------------------------------------------------------------------
# the rules: each picks a step from tools/evaluate.py's rows (dicts of scores.json), never from the judge
# ------------------------------------------------------------------------------------------------------------
def _first_best(rows: Sequence[dict], key: Callable[[dict], float]) -> int:
    """The step of the highest key (ties: the earliest step)."""
    return max(rows, key=lambda r: (key(r), -r["step"]))["step"]


def norm_cap(factor: float) -> Callable[[Sequence[dict]], int]:
    """The last step whose norm is at most `factor` x the vocabulary's median norm (the earliest when none is);
    the trainer warns above NORM_FACTOR = 3 (ppti/evaluation/embedding.py)."""
    def rule(rows: Sequence[dict]) -> int:
        within = [r["step"] for r in rows if r["norm_ratio"] <= factor]
        return within[-1] if within else rows[0]["step"]
    return rule


def score_rows(rows: Sequence[dict], extra=lambda r: {}) -> list:
    """The per-step dicts as ppti/evaluation/scores.py Rows (no drift or file: no rule reads them)."""
    from ppti.evaluation.scores import Row

    return [Row(r["step"], r["image_similarity"], r["text_similarity"], r["eval_loss"], r["norm"], 0.0, "", extra(r))
            for r in rows]


def ppti_rule(rows: Sequence[dict]) -> int:
    """tools/evaluate.py's recommendation (ppti/evaluation/scores.py recommend) on the same rows."""
    from ppti.evaluation.scores import recommend

    return recommend(score_rows(rows)).step


def pareto_steps(rows: Sequence[dict]) -> list[int]:
    """The steps no other step beats on both CLIP similarities (ppti/evaluation/scores.py pareto_front)."""
    from ppti.evaluation.scores import pareto_front

    return [r.step for r in pareto_front(score_rows(rows))]


PPTI_RULE = "ppti (tools/evaluate.py)"


def front_summary(runs: Sequence[dict]) -> dict:
    """A user who compares the Pareto-front steps by eye and picks the best of them: its mean ratio, the runs where
    it reaches ANY_STEP_RATIO, and how many steps the front holds."""
    ratios = [run["pareto_front_best_ratio"] for run in runs]
    sizes = [len(run["pareto_front"]) for run in runs]
    return {"mean_ratio": round(sum(ratios) / len(ratios), 4), "runs_at_bar": sum(r >= ANY_STEP_RATIO for r in ratios),
            "runs": len(ratios), "min_steps": min(sizes), "max_steps": max(sizes)}


def text_first(rows: Sequence[dict]) -> int:
    """The highest text similarity among the steps whose image similarity is in the upper half of the run's
    (at least the median): follow the prompt best among the steps that show the concept."""
    images = sorted(r["image_similarity"] for r in rows)
    median = images[(len(images) - 1) // 2]
    return _first_best([r for r in rows if r["image_similarity"] >= median], lambda r: r["text_similarity"])


RULES: dict[str, Callable[[Sequence[dict]], int]] = {
    PPTI_RULE: ppti_rule,
    "last step": lambda rows: rows[-1]["step"],
    "max image similarity": lambda rows: _first_best(rows, lambda r: r["image_similarity"]),
    "max text similarity": lambda rows: _first_best(rows, lambda r: r["text_similarity"]),
    "min eval loss": lambda rows: _first_best(rows, lambda r: -r["eval_loss"]),
    "max text similarity, image similarity at least the median": text_first,
    "norm cap 1.5x vocabulary median": norm_cap(1.5),
    "norm cap 2x vocabulary median": norm_cap(2.0),
    "norm cap 3x vocabulary median": norm_cap(3.0),
}


def early_stop_step(rows: Sequence[dict], window: int, threshold: float) -> int:
    """Where --early_stopping (window, threshold) ends a run that logs eval/loss at the saved steps (the last step
    when it never fires): the trainer's own rule, replayed."""
    from ppti.evaluation.stopping import EarlyStopping

    stopping = EarlyStopping(window, threshold)
    for r in rows:
        if stopping.update(r["step"], r["eval_loss"]):
            return r["step"]
    return rows[-1]["step"]


def rule_table(runs: Sequence[dict]) -> list[dict]:
    """Per rule: its mean and worst ratio (its step's combined score over the best's), the standard error of the
    mean over the runs, and how many runs reach ANY_STEP_RATIO, over `runs` (concept entries with "per_step")."""
    def error(values: np.ndarray) -> float:
        return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0

    ratios = {name: np.array([ratio(run, rule(run["per_step"])) for run in runs]) for name, rule in RULES.items()}
    table = []
    for name, values in ratios.items():
        difference = values - ratios[PPTI_RULE]  # paired: the same runs
        table.append({"name": name, "mean_ratio": round(float(values.mean()), 4), "std_error": round(error(values), 4),
                      "min_ratio": round(float(values.min()), 4), "runs_at_bar": int((values >= ANY_STEP_RATIO).sum()),
                      "runs": len(values), "minus_ppti": round(float(difference.mean()), 4),
                      "minus_ppti_std_error": round(error(difference), 4)})
    return table


def noise_ceiling(runs: Sequence[dict], draws: int = 2000, seed: int = 0) -> dict:
    """What a rule that always picks the truly best step would score against the measured best, given the judge's
    sampling noise: each step's measured score is taken as its true rate, every step is measured again
    (binomial, the run's samples per step), and the true best step's new score is divided by the new best.
    Returns the mean of that ratio and the share of (run, draw) pairs reaching ANY_STEP_RATIO."""
    rng = np.random.default_rng(seed)
    ratios = []
    for run in runs:
        rates = np.array([r["score"] for r in run["per_step"]])
        measured = rng.binomial(run["samples_per_step"], rates, size=(draws, len(rates))) / run["samples_per_step"]
        best = measured.max(axis=1)
        ratios.append(np.where(best > 0, measured[:, int(rates.argmax())] / np.maximum(best, 1e-12), 1.0))
    ratios = np.concatenate(ratios)
    return {"mean_ratio": round(float(ratios.mean()), 4), "share_at_bar": round(float((ratios >= ANY_STEP_RATIO).mean()), 4),
            "draws_per_run": draws}


def ratio(run: dict, step: int) -> float:
    scores = {r["step"]: r["score"] for r in run["per_step"]}
    best = max(scores.values())
    return scores[step] / best if best > 0 else 1.0


def early_stopping_table(runs: Sequence[dict]) -> list[dict]:
    """Per (window, threshold): mean/worst ratio of the step it stops at, mean/least fraction of steps saved, and
    whether it is safe (every run at ANY_STEP_RATIO and saving at least 30%)."""
    table = []
    for window in WINDOWS:
        for threshold in THRESHOLDS:
            stops = [early_stop_step(run["per_step"], window, threshold) for run in runs]
            ratios = [ratio(run, s) for run, s in zip(runs, stops)]
            saved = [1 - s / run["max_steps"] for run, s in zip(runs, stops)]
            table.append({"window": window, "threshold": threshold, "mean_ratio": round(sum(ratios) / len(ratios), 4),
                          "min_ratio": round(min(ratios), 4), "mean_saved": round(sum(saved) / len(saved), 4),
                          "min_saved": round(min(saved), 4),
                          "safe": min(ratios) >= ANY_STEP_RATIO and min(saved) >= 0.3})
    return table


# ------------------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = tool_parser("step_choice.py", __doc__)
    parser.add_argument("--world", type=Path, default=WORLD_DIR, help="The world model folder (hash-checked).")
    parser.add_argument("--clip_model", type=Path, default=CLIP_DIR, help="The toy-world CLIP for tools/evaluate.py.")
    parser.add_argument("--concepts", nargs="+", default=[c.word for c in CONCEPTS], choices=[c.word for c in CONCEPTS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="Training seeds (also the images').")
    parser.add_argument("--max_train_steps", type=int, default=480)
    parser.add_argument("--save_steps", type=int, default=40, help="Save and log eval/loss every N steps.")
    parser.add_argument("--learning_rate", type=float, default=5e-3,
                        help="High enough to over-train within --max_train_steps (benchmarks/concept_recovery.py "
                             "uses 1e-3).")
    parser.add_argument("--train_batch_size", type=int, default=4)
    parser.add_argument("--num_images", type=int, default=5, help="Renderings of each concept to train on.")
    parser.add_argument("--sample_repeats", type=int, default=3,
                        help=f"Judge samples per step: {CONCEPT_SAMPLES} concept samples and {SAMPLES_PER_EDIT} per "
                             "edit (and per shape, styles) x this.")
    parser.add_argument("--eval_images", type=int, default=2, help="tools/evaluate.py --num_images.")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    parser.add_argument("--plot_dir", type=Path, help="Write one plot per concept and seed here.")
    parser.add_argument("--keep_runs", type=Path,
                        help="Keep the training runs here (default: a temporary folder); runs already there, trained "
                             "and scored with the same settings, are reused.")
    parser.add_argument("--truth_only", action="store_true",
                        help="With --keep_runs: train and score the ground truth only (tools/evaluate.py later).")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="Build the tables from these earlier --json files' runs instead of running anything.")
    args = parser.parse_args(argv)
    for name in ("max_train_steps", "save_steps", "train_batch_size", "num_images", "sample_repeats", "eval_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if args.truth_only and not args.keep_runs:
        parser.error("--truth_only keeps its work for later: give --keep_runs DIR")
    if args.max_train_steps % args.save_steps:
        parser.error(f"--max_train_steps {args.max_train_steps} must be a multiple of --save_steps {args.save_steps}")
    return args


def world_prompts(concept) -> list[str]:
    """tools/evaluate.py --prompts: the reconstruction prompt, then the recovery edits (one per colour/background)."""
    from ppti.world.recovery import concept_prompts, edit_prompts

    return [concept_prompts(concept, 1)[0][0]] + [p for p, _ in edit_prompts(concept, 1)]


def clip_rows(args, concept, run_dir: Path) -> list[dict]:
    """tools/evaluate.py on the run (toy CLIP, world prompts): scores.json's rows, by step."""
    from ppti.tools.evaluate import main as evaluate_main  # (tools/ is installed as ppti.tools)

    prompts = run_dir / "world-prompts.txt"
    prompts.write_text("\n".join(world_prompts(concept)) + "\n", encoding="utf-8")
    out = run_dir / f"evaluation-{Path(args.clip_model).name}-{args.eval_images}"
    if not (out / "scores.json").is_file():
        code = evaluate_main([str(run_dir), "--model", str(args.world), "--clip_model", str(args.clip_model),
                              "--prompts", str(prompts), "--num_images", str(args.eval_images), "-o", str(out)])
        if code != 0:
            raise SystemExit(f"tools/evaluate.py on {run_dir} failed (exit code {code})")
    return json.loads((out / "scores.json").read_text(encoding="utf-8"))["rows"]


def judge_scores(args, pipe, judge, concept, run_dir: Path, steps: dict[int, str]) -> dict[int, dict]:
    """The judge's concept / edit (/ transfer) accuracy and combined score of every saved step (fixed seeds)."""
    import paddle

    from ppti.embeddings import read_embeddings
    from ppti.world.recovery import evaluate

    paths = {s: run_dir / name for s, name in steps.items()}
    pipe.load_textual_inversion(str(next(iter(paths.values()))))
    token_id = pipe.tokenizer.convert_tokens_to_ids(concept.token)
    weight = pipe.text_encoder.get_input_embeddings().weight
    sizes, out = group_sizes(concept, args.sample_repeats), {}
    for step in steps:
        (embedding,) = read_embeddings(paths[step])
        rows = weight.numpy()
        rows[token_id] = embedding.vectors.reshape(-1)
        weight.set_value(paddle.to_tensor(rows))
        groups = evaluate(pipe, judge, concept, concept.token, edits=True, repeats=args.sample_repeats)
        combined = sum(groups[g] * sizes[g] for g in groups) / sum(sizes.values())
        out[step] = {**{f"judge_{g}": round(v, 4) for g, v in groups.items()}, "score": round(combined, 4)}
    return out


def vocabulary_median(pipe, token: str) -> float:
    """The median norm of the world's word embeddings, taken before the placeholder is added: the row its name
    resolves to then (the unknown token's) is left out."""
    from ppti.evaluation.embedding import vocabulary_median_norm

    weight = pipe.text_encoder.get_input_embeddings().weight.numpy()
    return vocabulary_median_norm(weight, [pipe.tokenizer.convert_tokens_to_ids(token)])


def run_one(args, concept, seed: int, judge, work: Path) -> Optional[dict]:
    """Train, score the truth and run tools/evaluate.py for one concept and seed. In --keep_runs, a run already
    trained and scored there is reused (training is deterministic for the seed: the same flags give the same
    files), and so is an evaluation by the same --clip_model."""
    from ppti.world.recovery import train_concept, write_concept_images
    from ppti.world.shipped import load_pipeline

    started = time.time()
    pipe = load_pipeline(args.world)  # a fresh one per run: the judge's samples add the run's token to it
    median = vocabulary_median(pipe, concept.token)
    run_dir = work / f"run-{concept.word}-{seed}"
    truth_file = run_dir / "judge-truth.json"
    reused = truth_file.is_file()
    if not reused:
        data = write_concept_images(concept, work / f"data-{concept.word}-{seed}", args.num_images, seed)
        train_concept(args.world, concept, data, run_dir, seed=seed, max_train_steps=args.max_train_steps,
                      learning_rate=args.learning_rate, train_batch_size=args.train_batch_size,
                      save_steps=args.save_steps, extra=("--eval_steps", str(args.save_steps),
                                                         "--checkpointing_steps", str(args.max_train_steps)))
        steps = {s: f"learned_embeds-steps-{s}.pdparams" for s in range(args.save_steps, args.max_train_steps + 1,
                                                                        args.save_steps)}
        truth = judge_scores(args, pipe, judge, concept, run_dir, steps)
        truth_file.write_text(json.dumps({str(k): v for k, v in truth.items()}, indent=1) + "\n", encoding="utf-8")
    truth = {int(k): v for k, v in json.loads(truth_file.read_text(encoding="utf-8")).items()}
    if args.truth_only:
        return None
    rows = [r for r in clip_rows(args, concept, run_dir) if r["step"] in truth]
    per_step = [{"step": r["step"], **truth[r["step"]],
                 **{k: round(float(r[k]), 6) for k in ("image_similarity", "text_similarity", "eval_loss", "norm")},
                 "norm_ratio": round(float(r["norm"]) / median, 4)} for r in rows]
    return summarise({"name": concept.word, "kind": concept.kind, "seed": seed, "max_steps": args.max_train_steps,
                      "samples_per_step": samples_per_step(concept, args.sample_repeats),
                      "seconds": None if reused else round(time.time() - started, 1), "per_step": per_step})


def group_sizes(concept, repeats: int) -> dict[str, int]:
    """Judge samples per group of ppti/world/recovery.py's evaluate() (concept, edit and, for styles, transfer)."""
    from ppti.world.recovery import concept_prompts, edit_prompts, transfer_prompts

    sizes = {"concept": len(concept_prompts(concept, CONCEPT_SAMPLES * repeats)),
             "edit": len(edit_prompts(concept, SAMPLES_PER_EDIT * repeats))}
    if concept.kind == "style":
        sizes["transfer"] = len(transfer_prompts(concept, SAMPLES_PER_EDIT * repeats))
    return sizes


def samples_per_step(concept, repeats: int) -> int:
    """Judge samples behind each step's combined score."""
    return sum(group_sizes(concept, repeats).values())


def summarise(run: dict) -> dict:
    """The run with its best step, ppti's recommended step, where --early_stopping (the trainer's defaults) stops
    and every rule's step, from its per-step table (--merge recomputes them: the rules may have changed)."""
    per_step = run["per_step"]
    best = max(per_step, key=lambda r: (r["score"], -r["step"]))
    recommended = ppti_rule(per_step)
    stop = early_stop_step(per_step, *EARLY_STOPPING_DEFAULTS)
    score_at = {r["step"]: r["score"] for r in per_step}
    head = {k: run[k] for k in ("name", "kind", "seed", "max_steps", "samples_per_step")}
    losses, scores = np.array([r["eval_loss"] for r in per_step]), np.array([r["score"] for r in per_step])
    evidence = {"eval_loss_spread": round(float(losses.std() / losses.mean()), 4),  # what --early_stopping watches
                "eval_loss_score_correlation": round(float(np.corrcoef(losses, scores)[0, 1]), 4)}
    front = pareto_steps(per_step)
    evidence["pareto_front"] = front  # tools/evaluate.py's candidates (scores.json "pareto_front")
    evidence["pareto_front_best_ratio"] = round(max(score_at[s] for s in front) / best["score"], 4) if best["score"] else 1.0
    return {**head, **evidence, "best_step": best["step"], "best_score": best["score"], "recommended_step": recommended,
            "recommended_score": score_at[recommended], "early_stop_step": stop, "early_stop_score": score_at[stop],
            "steps_run": stop, "rule_steps": {name: rule(per_step) for name, rule in RULES.items()},
            "seconds": run.get("seconds"), "per_step": per_step}


def plot(run: dict):
    """Judge score, CLIP image/text similarity, eval loss and norm per step; the recommended step dashed."""
    from ppti.evaluation.drawing import plot as scores_plot

    rows = score_rows(run["per_step"], lambda r: {"judge_score": r["score"]})
    recommended = next(r for r in rows if r.step == run["recommended_step"])
    title = (f"{run['name']} (seed {run['seed']}): best step {run['best_step']} (judge {run['best_score']:.2f}); "
             f"recommended {run['recommended_step']} (judge {run['recommended_score']:.2f}, dashed)")
    return scores_plot(rows, recommended, panels=(("judge_score", "judge: concept present and prompt followed"),
                                                  *PLOT_PANELS), title=title)


PLOT_PANELS = (("image_similarity", "CLIP image similarity"), ("text_similarity", "CLIP text similarity"),
               ("eval_loss", "eval loss (frozen batch)"), ("norm", "embedding norm"))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        runs = [summarise(run) for path in args.merge
                for run in json.loads(path.read_text(encoding="utf-8"))["concepts"]]
    else:
        runs = run_all(args)
        if args.truth_only:
            return 0
    rules, stopping, ceiling = rule_table(runs), early_stopping_table(runs), noise_ceiling(runs)
    front = front_summary(runs)
    print("\n| concept | seed | best step (score) | recommended step (score, ratio) | eval/loss spread | "
          "eval/loss-score correlation |\n|---|---|---|---|---|---|")
    for run in runs:
        print(f"| {run['name']} ({run['kind']}) | {run['seed']} | {run['best_step']} ({run['best_score']:.2f}) | "
              f"{run['recommended_step']} ({run['recommended_score']:.2f}, "
              f"{ratio(run, run['recommended_step']):.2f}) | {run['eval_loss_spread']:.1%} | "
              f"{run['eval_loss_score_correlation']:+.2f} |")
    print("\n| rule | mean ratio ± s.e. | minus ppti's ± s.e. | worst ratio | runs >= 0.95 of best |\n"
          "|---|---|---|---|---|")
    for r in rules:
        print(f"| {r['name']} | {r['mean_ratio']:.3f} ± {r['std_error']:.3f} | {r['minus_ppti']:+.3f} ± "
              f"{r['minus_ppti_std_error']:.3f} | {r['min_ratio']:.3f} | {r['runs_at_bar']}/{r['runs']} |")
    print(f"| the truly best step, measured again (noise ceiling) | {ceiling['mean_ratio']:.3f} | | | "
          f"{ceiling['share_at_bar']:.0%} of draws |")
    print(f"| the best of the Pareto front's {front['min_steps']}-{front['max_steps']} steps, compared by eye | "
          f"{front['mean_ratio']:.3f} | | | {front['runs_at_bar']}/{front['runs']} |")
    safe = [s for s in stopping if s["safe"]]
    print(f"\nearly stopping: {len(safe)} of {len(stopping)} (window, threshold) settings safe on every run"
          + (f"; most steps saved: {max(safe, key=lambda s: s['mean_saved'])}" if safe else ""))
    if args.json:
        config = ({"merged": [str(p) for p in args.merge],
                   **json.loads(args.merge[0].read_text(encoding="utf-8"))["config"]} if args.merge else
                  {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("json", "plot_dir", "keep_runs", "truth_only", "merge")})
        for key in ("world", "clip_model"):  # (relative to the repository: the committed table names no machine)
            path = Path(config[key]).resolve()
            config[key] = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        config["seeds"] = sorted({run["seed"] for run in runs})
        config["concepts"] = list(dict.fromkeys(run["name"] for run in runs))
        config["early_stopping_defaults"] = list(EARLY_STOPPING_DEFAULTS)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": config, "concepts": runs, "rules": rules,
                                         "noise_ceiling": ceiling, "pareto_front": front,
                                         "early_stopping": stopping}, indent=1) + "\n")
    return 0


def run_all(args) -> list[dict]:
    from ppti.world.shipped import load_world_judge

    judge = load_world_judge(args.world)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep_runs or Path(tmp)
        for concept in (c for c in CONCEPTS if c.word in args.concepts):
            for seed in args.seeds:
                run = run_one(args, concept, seed, judge, work)
                if run is None:
                    continue
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "per_step"}), flush=True)
                if args.plot_dir:
                    args.plot_dir.mkdir(parents=True, exist_ok=True)
                    plot(run).save(args.plot_dir / f"{concept.word}-seed{seed}.png")
    return runs


if __name__ == "__main__":
    sys.exit(main())
