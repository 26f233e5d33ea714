"""Convert a Stable Diffusion model you have into a ppdiffusers folder, once, and print the command to train on it.

    python tools/convert_model.py v1-5-pruned-emaonly.safetensors -o models/sd15 --tokenizer_name clip-tokenizer
    python tools/convert_model.py sd_xl_base_1.0.safetensors -o models/sdxl --tokenizer_name sdxl-diffusers-folder
    python tools/convert_model.py v2-1_768-ema-pruned.ckpt -o models/sd21 --use_ema --tokenizer_name sd21-tokenizer
    python tools/convert_model.py diffusers-folder -o models/converted

The trainer converts the same inputs by itself (into --model_cache_dir); this writes the folder where you choose.
Reads diffusers folders (safetensors or .bin) and single .safetensors/.ckpt files (SD-1.x, SD-2.x, SDXL base),
never executing pickled code.
"""

import argparse
import sys
import time
from pathlib import Path

from ppti.tool_cli import tool_parser

PROG = "convert_model.py"


def parse_args(argv=None) -> argparse.Namespace:
    parser = tool_parser(PROG, __doc__)
    parser.add_argument("source", metavar="SRC", help="A diffusers folder or a single .safetensors/.ckpt file.")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                        help="The ppdiffusers folder to write (replaced atomically if it exists).")
    parser.add_argument("--tokenizer_name", default=None,
                        help="For a single file: a CLIP tokenizer folder, a model folder with tokenizer/ "
                             "(tokenizer_2/ for SDXL) or a hub id (default: the architecture's usual tokenizer).")
    parser.add_argument("--use_ema", action="store_true", help="Use the file's EMA copy of the UNet.")
    parser.add_argument("--prediction_type", choices=("epsilon", "v_prediction"), default=None,
                        help="Override the prediction type (SD-2.x files default to v_prediction).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ppti.model_source import ARCH_NAMES, converted_folder
    from ppti.models import ModelError
    from ppti.tool_cli import quiet_build_warnings

    quiet_build_warnings()
    started = time.perf_counter()
    try:
        out, facts = converted_folder(args.output, args.source, args.tokenizer_name, args.use_ema,
                                      args.prediction_type)
    except (ModelError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    what = facts["kind"]
    if "architecture" in facts:
        what += (f": {ARCH_NAMES[facts['architecture']]}, {facts['prediction_type']}, "
                 f"{'EMA' if facts.get('ema') else 'non-EMA'} weights, {facts['dtype']} -> float32")
    print(f"converted {args.source} ({what}) into {out} in {time.perf_counter() - started:.1f} s")
    print("train on it with:")
    print(f"  python train_textual_inversion.py --pretrained_model_name_or_path {out} --train_data_dir DATA "
          "--placeholder_token '<my-concept>' --initializer_token WORD --output_dir OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
