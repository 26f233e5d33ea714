"""Label every 32x32 tile of a toy-world image grid (e.g. a validation grid) with the world's judge.

    python tools/judge_grid.py outputs/quickstart/validation/step-80.png --row 0 --expect shape=star

Prints shape / colour / texture / background per tile; with --expect, exits 1 unless the judge finds the expected
value(s) in at least --min_fraction of the tiles (of --row only, if given).
"""

import sys
from pathlib import Path

from ppti.world.render import ATTRIBUTES, IMAGE_SIZE
from ppti.tool_cli import tool_parser
from ppti.world.shipped import WORLD_DIR


def parse_args(argv=None):
    parser = tool_parser("judge_grid.py", __doc__)
    parser.add_argument("grid", type=Path, help="A PNG made of 32x32 tiles.")
    parser.add_argument("--world", type=Path, default=WORLD_DIR, help="World folder whose judge to use.")
    parser.add_argument("--row", type=int, default=None, help="Judge only this row of tiles (0 = first).")
    parser.add_argument("--expect", nargs="*", default=[], metavar="ATTRIBUTE=VALUE",
                        help=f"e.g. shape=star; attributes: {', '.join(ATTRIBUTES)}.")
    parser.add_argument("--min_fraction", type=float, default=0.5, help="Share of tiles that must match (default 0.5).")
    args = parser.parse_args(argv)
    for item in args.expect:
        name, _, value = item.partition("=")
        if value not in ATTRIBUTES.get(name, ()):
            parser.error(f"--expect {item}: not ATTRIBUTE=VALUE with one of {ATTRIBUTES}")
    if not args.grid.is_file():
        parser.error(f"{args.grid}: no such file")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    from PIL import Image

    from ppti.world.judge import predict_names
    from ppti.world.shipped import load_world_judge

    try:
        pixels = np.asarray(Image.open(args.grid).convert("RGB"))
    except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        print(f"error: {args.grid}: not a readable image ({exc})", file=sys.stderr)
        return 2
    if pixels.shape[0] < IMAGE_SIZE or pixels.shape[1] < IMAGE_SIZE:
        print(f"error: {args.grid}: {pixels.shape[1]}x{pixels.shape[0]} px holds no {IMAGE_SIZE}x{IMAGE_SIZE} tile",
              file=sys.stderr)
        return 2
    rows, cols = pixels.shape[0] // IMAGE_SIZE, pixels.shape[1] // IMAGE_SIZE
    wanted_rows = [args.row] if args.row is not None else range(rows)
    tiles = [pixels[r * IMAGE_SIZE:(r + 1) * IMAGE_SIZE, c * IMAGE_SIZE:(c + 1) * IMAGE_SIZE]
             for r in wanted_rows for c in range(cols)]
    labels = predict_names(load_world_judge(args.world), np.stack(tiles))
    for i, found in enumerate(labels):
        print(f"tile {i}: " + ", ".join(f"{k}={v}" for k, v in found.items()))
    if not args.expect:
        return 0
    expected = dict(item.partition("=")[::2] for item in args.expect)
    fraction = float(np.mean([all(f[k] == v for k, v in expected.items()) for f in labels]))
    print(f"{fraction:.2f} of {len(labels)} tiles show {' '.join(args.expect)}")
    return 0 if fraction >= args.min_fraction else 1


if __name__ == "__main__":
    sys.exit(main())
