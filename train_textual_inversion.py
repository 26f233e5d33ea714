"""Textual inversion for Stable Diffusion with PaddlePaddle: the command-line entry point.

    python -u train_textual_inversion.py --pretrained_model_name_or_path=... --train_data_dir=... \
        --placeholder_token="<cat-toy>" --initializer_token="toy" [--config configs/X.yaml] ...

Parses and validates the configuration (every problem reported before any model loads), then calls ppti.
"""

import sys

from ppti.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
