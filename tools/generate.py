"""Render a prompt with trained textual-inversion embeddings into a grid PNG (one column per seed).

    python tools/generate.py --model tiny-sd --embeddings outputs/demo --prompt "a photo of a <demo-toy>" -o out.png
    python tools/generate.py --model tiny-sd --steps_sweep outputs/demo --prompt "a photo of a <demo-toy>" -o sweep.png
    python tools/generate.py --model MODEL --embeddings a.safetensors b.pt --prompt "<a> in the style of <b>" -o x.png

--embeddings takes files in any format tools/convert.py reads (.pdparams, diffusers .safetensors/.bin, WebUI .pt/.png,
kohya emb_params) or a training output_dir (its learned_embeds file). --steps_sweep renders one row per
learned_embeds-steps-N of a run, labelled with its step, so the best step can be picked by eye. Image i uses
seed + i: with the run's seed and size (--num_inference_steps and --mixed_precision default to the run's validation
settings) it renders what the run's validation grid showed.
"""

import argparse
import os
import random
import sys
from pathlib import Path

from ppti.config import MAX_IMAGE_SIDE, NUM_INFERENCE_STEPS
from ppti.tool_cli import EXIT_BAD_INPUT, deprecated_name, quiet_build_warnings, render_problems, tool_parser

PROG = "generate.py"


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__)
    parser.add_argument("--model", required=True, help="Stable Diffusion model folder (or Hub id) to render with.")
    parser.add_argument("--embeddings", nargs="+", type=Path, default=[], metavar="FILE_OR_DIR",
                        help="Embedding files or training output_dirs to load (several: all are loaded).")
    parser.add_argument("--steps_sweep", type=Path, metavar="DIR",
                        help="A training output_dir: one grid row per learned_embeds-steps-N file in it.")
    parser.add_argument("--prompt", required=True, help="The prompt, with the placeholder token(s).")
    parser.add_argument("--negative_prompt", default=None, help="What the images should not show.")
    parser.add_argument("--num_images", type=int, default=4, help="Images per row, seeds seed .. seed+n-1.")
    parser.add_argument("--num_inference_steps", type=int, default=NUM_INFERENCE_STEPS,
                        help=f"Denoising steps per image (default {NUM_INFERENCE_STEPS}: what validation grids use).")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="Classifier-free guidance scale.")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the first image (default: random, printed).")
    parser.add_argument("--height", type=int, default=None, help="Image height (multiple of 8; default: the model's).")
    parser.add_argument("--width", type=int, default=None, help="Image width (multiple of 8; default: the model's).")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                        help="Precision of the UNet and VAE (the text encoder stays fp32, as in training). Default: "
                             "the --mixed_precision of the run the embeddings come from (its train_config.yaml), "
                             "else no (fp32). fp16/bf16 need a GPU.")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.png", help="The grid PNG to write.")
    deprecated_name(parser, "--steps", "--num_inference_steps")
    deprecated_name(parser, "--dtype", "--mixed_precision", convert=lambda v: {"fp32": "no"}.get(v, v),
                    choices=["fp32", "fp16", "bf16"])
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = []
    if not args.embeddings and args.steps_sweep is None:
        problems.append("give --embeddings FILE_OR_DIR and/or --steps_sweep DIR")
    problems += render_problems(args, positive=("num_images", "num_inference_steps"))
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value < 8 or value % 8):
            problems.append(f"--{name} {value} is not a positive multiple of 8 (the VAE downsamples by 8)")
        elif value is not None and value > MAX_IMAGE_SIDE:
            problems.append(f"--{name} {value} is above the maximum {MAX_IMAGE_SIDE} (the trainer's limit; memory "
                            "grows with the square of the side)")
    if args.output.is_dir():
        problems.append(f"-o {args.output} is a directory; give the PNG file to write, e.g. {args.output / 'grid.png'}")
    elif args.output.exists() and not os.access(args.output, os.W_OK):
        problems.append(f"-o {args.output}: the file is not writable")
    elif any(parent.exists() and not parent.is_dir() for parent in args.output.parents):
        problems.append(f"-o {args.output}: a parent of it is a file, not a folder")
    if problems:
        parser.error("; ".join(problems))
    return args


def run(args: argparse.Namespace) -> tuple[Path, int]:
    """Render and write the grid; returns (PNG path, seed of the first image)."""
    from ppti.atomic import atomic_path
    from ppti.generate import (
        GenerateError, RenderSettings, load_into, load_pipeline, read_embedding_args, render_row, render_sweep,
        run_dtype, run_model_options, step_files, warn_unused_tokens,
    )
    from ppti.precision import DTYPES, device_problem
    from ppti.reporting import setup_console

    embeddings = read_embedding_args(args.embeddings)  # every file is checked before Paddle and the model load
    steps = step_files(args.steps_sweep) if args.steps_sweep is not None else None
    given = {"no": "fp32"}.get(args.mixed_precision, args.mixed_precision)  # (the precision module's names)
    dtype = given or run_dtype([*args.embeddings, *([args.steps_sweep] if args.steps_sweep else [])]) or "fp32"
    problem = device_problem(dtype, "--mixed_precision")  # before the model loads
    if problem:
        raise GenerateError(problem + ("" if given else " (the default --mixed_precision is the training run's; "
                                       "give --mixed_precision no)"))
    setup_console(is_main=True)  # (imports ppdiffusers: slow)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    settings = RenderSettings(args.prompt, args.negative_prompt, args.num_images, seed, args.num_inference_steps,
                              args.guidance_scale, args.height, args.width)
    options = run_model_options([*args.embeddings, *([args.steps_sweep] if args.steps_sweep else [])], args.model)
    pipeline = load_pipeline(args.model, DTYPES.get(dtype, "float32"), options)  # (the run's model-source flags)
    load_into(pipeline, embeddings)
    warn_unused_tokens(args.prompt, list(dict.fromkeys(e.token for e in embeddings)))
    if steps:
        grid = render_sweep(pipeline, settings, steps)
    else:
        from ppti.validation import image_grid

        grid = image_grid([render_row(pipeline, settings)])
    with atomic_path(args.output) as tmp:
        grid.save(tmp, format="PNG")
    return args.output, seed


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_build_warnings()
    from ppti.embeddings import EmbeddingFormatError
    from ppti.generate import GenerateError
    from ppti.models import ModelError

    try:
        out, seed = run(args)
    except ModelError as exc:  # the trainer's loader names its own flag
        print(f"{PROG}: error: {str(exc).replace('--pretrained_model_name_or_path', '--model')}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (EmbeddingFormatError, GenerateError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {out}: images use seeds {seed}..{seed + args.num_images - 1} (--seed {seed} reproduces them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
