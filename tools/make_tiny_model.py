"""Write a tiny random Stable Diffusion model folder (for tests, the demo and benchmarks).

    python tools/make_tiny_model.py /tmp/tiny-sd --language zh --seed 0
    python tools/make_tiny_model.py /tmp/tiny-sdxl --arch sdxl              # SDXL layout, two text encoders
    python tools/make_tiny_model.py /tmp/tiny-clip --arch clip    # a tiny CLIP for tools/evaluate.py --clip_model
"""

import argparse
import sys
from pathlib import Path

from ppti.tiny import LANGUAGES, PREDICTION_TYPES, make_tiny_clip, make_tiny_model


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("out_dir", type=Path, help="Folder to create; must be absent or empty unless --force.")
    parser.add_argument("--arch", choices=("sd", "sdxl", "clip"), default="sd",
                        help="sd: a Stable Diffusion pipeline folder (see --language); sdxl: a "
                        "StableDiffusionXLPipeline folder with two CLIP text encoders (English only); clip: a CLIP "
                        "scoring model (text + vision towers, CLIPModel for en, ChineseCLIPModel for zh/zh_en) for "
                        "tools/evaluate.py --clip_model.")
    parser.add_argument("--language", choices=LANGUAGES, default="en",
                        help="en: CLIP (SD-1.x); zh: BERT (Taiyi); zh_en: XLM-R (AltDiffusion).")
    parser.add_argument("--seed", type=int, default=0, help="Same seed -> byte-identical weight files.")
    parser.add_argument("--prediction_type", choices=PREDICTION_TYPES, default="epsilon",
                        help="The noise scheduler's prediction type.")
    parser.add_argument("--force", action="store_true", help="Write into an existing non-empty folder.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out_dir.exists() and not args.force and (args.out_dir.is_file() or any(args.out_dir.iterdir())):
        print(f"error: {args.out_dir} exists and is not empty (use --force to write into it)", file=sys.stderr)
        return 2
    if args.arch == "sdxl" and args.language != "en":
        print("error: --arch sdxl has English CLIP tokenizers only; drop --language", file=sys.stderr)
        return 2
    if args.arch == "clip":
        out = make_tiny_clip(args.out_dir, language=args.language, seed=args.seed)
        print(f"wrote tiny {args.language} CLIP (seed {args.seed}) to {out}:")
    else:
        out = make_tiny_model(args.out_dir, language=args.language, seed=args.seed,
                              prediction_type=args.prediction_type, arch=args.arch)
        print(f"wrote tiny {args.arch} {args.language} model (seed {args.seed}, {args.prediction_type}) to {out}:")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out)}  ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
