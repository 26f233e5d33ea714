"""Convert textual-inversion embeddings between Paddle (ppdiffusers) and PyTorch (diffusers, WebUI, kohya).

    python tools/convert.py OUTPUT_DIR --to torch                  # -> OUTPUT_DIR/learned_embeds.safetensors
    python tools/convert.py OUTPUT_DIR --step 500 --to torch --format webui --token cat-toy
    python tools/convert.py downloaded.pt --to paddle --expect_dim 768
    python tools/convert.py --info some_embedding.safetensors

Reads .pdparams, diffusers .safetensors/.bin, WebUI .pt (old ParameterDict files too), kohya emb_params,
SDXL clip_l/clip_g pairs and WebUI PNG embeddings without torch or Paddle, and never executes pickled code.
"""

import argparse
import sys
from pathlib import Path

from ppti.embeddings import WRITE_DTYPES, EmbeddingFormatError, read_embeddings
from ppti.embeddings.convert import TARGETS, TORCH_FORMATS, convert, describe, resolve_input
from ppti.tool_cli import tool_parser

PROG = "convert.py"


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(PROG, __doc__)
    parser.add_argument("input", nargs="?", type=Path, metavar="INPUT",
                        help="An embedding file, or a training output_dir (its learned_embeds.pdparams).")
    parser.add_argument("--info", type=Path, metavar="FILE",
                        help="Print what FILE (or an output_dir's embedding) is: format, token, vectors, width, "
                             "dtype. Converts nothing.")
    parser.add_argument("--to", choices=TARGETS,
                        help="torch: diffusers/WebUI/kohya files; paddle: learned_embeds.pdparams for ppdiffusers.")
    parser.add_argument("--format", choices=TORCH_FORMATS, default=None,
                        help="With --to torch: diffusers learned_embeds.safetensors (default), webui "
                             "NAME.safetensors {emb_params} (WebUI, kohya, ComfyUI), or pt (WebUI NAME.pt).")
    parser.add_argument("--token", metavar="NAME",
                        help="Token name to write. Default by layout: diffusers/ppdiffusers files their key; WebUI "
                             ".pt/PNG the `name` field (else the file stem); emb_params, SDXL pairs and bare "
                             "tensors the file stem. --info shows which applies.")
    parser.add_argument("--dtype", choices=WRITE_DTYPES, default="fp32",
                        help="Stored precision of the output (default fp32; fp16/bf16 round to nearest).")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT",
                        help="Output file (or an existing folder to write the default name into).")
    parser.add_argument("--step", type=int, metavar="N",
                        help="With an output_dir INPUT: use learned_embeds-steps-N.pdparams.")
    parser.add_argument("--expect_dim", type=int, metavar="DIM",
                        help="Refuse unless the embedding width is this (768 SD1.x, 1024 SD2.x, 2048 SDXL pair).")
    parser.add_argument("--force", action="store_true", help="Overwrite existing output files.")
    args = parser.parse_args(argv)
    if args.info is None and (args.input is None or args.to is None):
        parser.error("give INPUT and --to torch|paddle, or --info FILE")
    if args.info is not None and (args.input is not None or args.to is not None):
        parser.error("--info only describes a file; run it without INPUT and --to")
    return args


def info(path: Path) -> None:
    path = resolve_input(path)
    for line in describe(path, read_embeddings(path)):
        print(line)


def run(args: argparse.Namespace) -> None:
    result = convert(args.input, args.to, fmt=args.format, token=args.token, dtype=args.dtype, output=args.output,
                     step=args.step, expect_dim=args.expect_dim, force=args.force)
    for path in result.paths:
        print(f"wrote {path}")
    for e in result.embeddings:
        part = f"[{e.part}] " if e.part else ""
        n, width = e.vectors.shape
        print(f"{part}token {e.token!r}, shape [{n}, {width}], dtype {result.dtype} (was {e.dtype})")
    for line in result.load_calls:
        print(line)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.info is not None:
            info(args.info)
        else:
            run(args)
    except (EmbeddingFormatError, OSError) as exc:  # OSError: e.g. the output folder is not writable
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
