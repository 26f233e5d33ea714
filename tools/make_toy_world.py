"""Pretrain the toy world (renderer -> VAE -> judge -> CLIP text encoder + UNet) on CPU and write it in the
Stable Diffusion layout, with a sha256 manifest (command and seed included). Build `models/toy-world/` with:

    python tools/make_toy_world.py models/toy-world --seed 0

The model folder is saved every --checkpoint_every diffusion steps, so an interrupted build leaves a usable model.
"""

import shlex
import sys
from dataclasses import fields
from pathlib import Path

# Runnable as `python tools/make_toy_world.py` from a checkout: put the repo root (holding `ppti/`) first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppti.world.pretrain import Recipe, make_world  # noqa: E402
from ppti.manifest import write_manifest  # noqa: E402
from ppti.tool_cli import tool_parser  # noqa: E402

CHOICES = {"prediction_type": ("epsilon", "v_prediction")}


def parse_args(argv=None):
    parser = tool_parser("make_toy_world.py", __doc__)
    parser.add_argument("out_dir", type=Path, help="Folder to write the world model into.")
    for f in fields(Recipe):
        if f.name != "unet_channels":
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default, choices=CHOICES.get(f.name),
                                help=f"(default {f.default})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe) if f.name != "unet_channels"})
    info = make_world(args.out_dir, recipe)
    command = "python tools/make_toy_world.py " + " ".join(map(shlex.quote, argv if argv is not None else sys.argv[1:]))
    manifest = write_manifest(args.out_dir, command=command, seed=recipe.seed)
    print(f"wrote the toy world to {args.out_dir} ({manifest['total_bytes']:,} bytes of weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
