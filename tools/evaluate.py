"""Score every saved embedding of a training run and recommend the step to use.

    python tools/evaluate.py outputs/demo --model tiny-sd --clip_model tiny-clip
    python tools/evaluate.py outputs/cat --model runwayml/stable-diffusion-v1-5 --copy_best
    python tools/evaluate.py outputs/taiyi-style --model models/taiyi --prompts my_prompts.txt

Per learned_embeds-steps-N file (and the final learned_embeds file): image similarity to the training images and
text similarity to the edit prompts (CLIP), the frozen-batch loss training logs as eval/loss, the embedding's
norm and drift; with a toy-world --model (models/toy-world, models/toy-world-zh), also the world judge's
judge_concept (fraction of images showing the concept), judge_edit (edit images showing the concept and every
world word of their prompt) and judge_score (all images showing both; see ppti/world/meaning.py). Writes
RUN_DIR/evaluation/ (or -o): scores.csv, scores.json, scores.png, contact_sheet.png.
The recommended step is the one closest to having both the best image and the best text similarity (see
ppti/evaluation/scores.py). --prompts FILE: one prompt per line with {} for the placeholder; the first line is the
reconstruction prompt, the others are edit prompts.
"""

import argparse
import sys
from pathlib import Path

from ppti.config import NUM_INFERENCE_STEPS
from ppti.tool_cli import EXIT_BAD_INPUT, quiet_build_warnings, render_problems, tool_parser

PROG = "evaluate.py"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="A training --output_dir.")
    parser.add_argument("--model", required=True, help="The Stable Diffusion model folder (or Hub id) the run trained.")
    parser.add_argument("--clip_model", default=None,
                        help="CLIP folder or Hub id for the similarities: a CLIPModel (ppdiffusers) or ChineseCLIPModel "
                        "(paddlenlp). Default: openai/clip-vit-base-patch32 for English runs, "
                        "OFA-Sys/chinese-clip-vit-base-patch16 for Chinese ones.")
    parser.add_argument("--config", type=Path, default=None,
                        help="The run's settings (default: RUN_DIR/train_config.yaml, written by training).")
    parser.add_argument("--train_data_dir", default=None, help="The training images, if they moved since the run.")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="Prompts with {} for the placeholder, one per line: reconstruction first, then edits.")
    parser.add_argument("--num_images", type=int, default=2, help="Images per prompt (seeds seed .. seed+n-1).")
    parser.add_argument("--num_inference_steps", type=int, default=NUM_INFERENCE_STEPS,
                        help=f"Denoising steps per image (default {NUM_INFERENCE_STEPS}: what validation grids use).")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="Classifier-free guidance scale.")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the first image (default: the run's seed).")
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                        help="Compute dtype of the frozen models (default: the run's).")
    parser.add_argument("-o", "--output_dir", type=Path, default=None, help="Default: RUN_DIR/evaluation.")
    parser.add_argument("--copy_best", action="store_true",
                        help="Also write the recommended step's embedding as RUN_DIR/learned_embeds-best.pdparams.")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = render_problems(args, positive=("num_images", "num_inference_steps"))
    if problems:
        parser.error("; ".join(problems))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_build_warnings()
    from ppti.config import ConfigError
    from ppti.data import DataError
    from ppti.embeddings import EmbeddingFormatError
    from ppti.evaluate import Settings, evaluate_run, load_line
    from ppti.evaluation.clip import EvaluationError
    from ppti.evaluation.scores import pareto_front
    from ppti.models import ModelError
    from ppti.reporting import setup_console
    from ppti.tokens import TokenError

    setup_console(is_main=True)
    settings = Settings(
        run_dir=args.run_dir, model=args.model, clip_model=args.clip_model, config_file=args.config,
        train_data_dir=args.train_data_dir, prompts_file=args.prompts, num_images=args.num_images,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale, seed=args.seed,
        out_dir=args.output_dir, copy_best=args.copy_best, mixed_precision=args.mixed_precision)
    try:
        result = evaluate_run(settings)
    except (ConfigError, DataError, EmbeddingFormatError, EvaluationError, ModelError, TokenError, OSError) as exc:
        lines = [line.strip().removeprefix("- ") for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
        message = " ".join(lines).replace("--pretrained_model_name_or_path", "--model")  # (the trainer's flag name)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    judged = any("judge_score" in r.extra for r in result.rows)  # a toy world's judge scored the images too
    print(f"{'step':>8} {'image_sim':>10} {'text_sim':>10} {'eval_loss':>10} {'norm':>8} {'drift':>8}"
          + (f" {'judge_score':>11}" if judged else "") + "  file")
    for r in result.rows:
        mark = "  <- recommended" if r is result.recommended else ""
        print(f"{r.step:>8} {r.image_similarity:>10.4f} {r.text_similarity:>10.4f} {r.eval_loss:>10.5f} "
              f"{r.norm:>8.4f} {r.drift:>8.4f}" + (f" {r.extra['judge_score']:>11.4f}" if judged else "")
              + f"  {r.file}{mark}")
    print(f"{len(result.rows)} file(s), {result.seconds_per_file:.1f} s per file; wrote "
          + ", ".join(str(p) for p in result.written))
    if result.recommended is not None:
        front = ", ".join(str(r.step) for r in sorted(pareto_front(result.rows), key=lambda r: r.step))
        print(f"recommended step: {result.recommended.step}; load it with:\n"
              f"    {load_line(args.run_dir, result.recommended)}\n"
              f"steps no other step beats on both similarities (the Pareto front): {front}; compare them in "
              "contact_sheet.png before you settle (docs/evaluation.md, 'Which step is best')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
