"""Pretrain the toy world (renderer -> VAE -> judge -> CLIP text encoder + UNet) on CPU and write it in the
Stable Diffusion layout, with a sha256 manifest (command and seed included). Build `models/toy-world/` with:

    python tools/make_toy_world.py models/toy-world --seed 0

and the Chinese world (Taiyi's layout: BERT text encoder distilled from the English world, whose UNet, VAE and judge
it links) with:

    python tools/make_toy_world.py models/toy-world-zh --language zh --seed 0

and the world's CLIP (text and image towers trained contrastively on the world's renderings, for tools/evaluate.py
--clip_model; the --clip_* switches are its recipe, the world's VAE gives the reconstructions it also sees) with:

    python tools/make_toy_world.py models/toy-world-clip --make clip --seed 0

(with --language zh: a ChineseCLIPModel over the Chinese world's vocabulary, its samples drawn by models/toy-world-zh).

The model folder is saved every --checkpoint_every diffusion steps, so an interrupted build leaves a usable model.
"""

import shlex
import sys
from dataclasses import fields
from pathlib import Path

from ppti.world.chinese import make_world_zh
from ppti.world.clip import ClipRecipe, make_world_clip
from ppti.world.pretrain import Recipe, RecipeError, make_world
from ppti.manifest import ManifestError, write_manifest
from ppti.tool_cli import EXIT_BAD_INPUT, tool_parser

CHOICES = {"prediction_type": ("epsilon", "v_prediction"), "noise_schedule": ("sd", "linear"), "language": ("en", "zh")}
CLIP_PREFIX = "clip_"  # ClipRecipe fields are --clip_<name>, except these two shared with the world's recipe:
SHARED = ("seed", "language")
WORLDS = {"en": Path("models/toy-world"), "zh": Path("models/toy-world-zh")}


def _channels(text: str) -> tuple:
    """--unet_channels 32,64,64: one UNet level per number."""
    return tuple(int(c) for c in text.split(","))


def _show(default) -> str:
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


def _flag_type(default):
    """argparse type for a Recipe field: bool fields read true/false (bool("false") would be True)."""
    def true_or_false(text: str) -> bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"

    if isinstance(default, tuple):
        return _channels
    return true_or_false if isinstance(default, bool) else type(default)


def parse_args(argv=None):
    parser = tool_parser("make_toy_world.py", __doc__)
    parser.add_argument("out_dir", type=Path, help="Folder to write the world model (or its CLIP) into.")
    parser.add_argument("--make", choices=("world", "clip"), default="world",
                        help="world: the text-to-image model (default); clip: the world's CLIP scoring model, trained "
                             "with the --seed, --language and --clip_* switches on renderings and their round trips "
                             "through --world's VAE")
    parser.add_argument("--world", type=Path, default=None,
                        help="--make clip: the world whose VAE, samples and judge the CLIP uses (default "
                             "models/toy-world, with --language zh models/toy-world-zh)")
    parser.add_argument("--stage_dir", type=Path, default=None,
                        help="Where the VAE and judge are kept for reuse (default OUT_DIR.stage); the Chinese world "
                             "reuses the English one's: --stage_dir models/toy-world.stage")
    parser.add_argument("--english_world", type=Path, default=Path("models/toy-world"),
                        help="--language zh: the English world whose UNet, VAE and judge the Chinese one shares "
                             "(built with the same --seed)")
    for f in fields(Recipe):
        parser.add_argument(f"--{f.name}", type=_flag_type(f.default), default=f.default, choices=CHOICES.get(f.name),
                            help=f"(default {_show(f.default)})")
    for f in fields(ClipRecipe):
        if f.name not in SHARED:
            parser.add_argument(f"--{CLIP_PREFIX}{f.name}", type=_flag_type(f.default), default=f.default,
                                help=f"--make clip (default {_show(f.default)})")
    return parser.parse_args(argv)


def _make_clip(args) -> dict:
    recipe = ClipRecipe(**{f.name: getattr(args, f.name if f.name in SHARED else CLIP_PREFIX + f.name)
                           for f in fields(ClipRecipe)})
    return make_world_clip(args.out_dir, recipe, world=args.world or WORLDS[recipe.language])


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    try:
        if args.make == "clip":
            info = _make_clip(args)
        elif recipe.language == "zh":
            make_world_zh(args.out_dir, args.english_world, recipe)
        else:
            make_world(args.out_dir, recipe, stage=args.stage_dir)
    except (RecipeError, ManifestError) as exc:
        print(f"make_toy_world.py: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    command = "python tools/make_toy_world.py " + " ".join(map(shlex.quote, argv if argv is not None else sys.argv[1:]))
    manifest = write_manifest(args.out_dir, command=command, seed=recipe.seed)
    if args.make == "clip":
        accuracy = ", ".join(f"{k} {v:.3f}" for k, v in info["zero_shot_held_out"].items())
        print(f"wrote the toy world's CLIP to {args.out_dir} ({manifest['total_bytes']:,} bytes); zero-shot "
              f"accuracy on held-out renderings: {accuracy}")
        return 0
    print(f"wrote the toy world to {args.out_dir} ({manifest['total_bytes']:,} bytes of weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
