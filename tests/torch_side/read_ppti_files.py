"""Runs inside .venv-torch. Reads files ppti wrote with real `torch.load(weights_only=True)` (zip files) or
`safetensors.torch.load_file`, and rounds reference float32 vectors with torch's own fp16/bf16 casts.

    python read_ppti_files.py OUT.npz SOURCE.npz FILE [FILE ...]

OUT.npz holds `<file>|<key path>` -> float32 values of every tensor read, and `round|<dtype>|<name>` -> each
SOURCE array cast to that dtype by torch and back to float32. Prints {"<file>|<key path>": torch dtype} as JSON.
"""

import json
import sys
import zipfile

import numpy as np
import torch
from safetensors.torch import load_file


def flatten(obj, prefix, out):
    """Tensors of nested dicts as `prefix|key|key` entries."""
    if torch.is_tensor(obj):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            flatten(value, f"{prefix}|{key}", out)


def main(out, source, files):
    tensors = {}
    for path in files:
        state = torch.load(path, weights_only=True) if zipfile.is_zipfile(path) else load_file(path)
        flatten(state, path, tensors)
    arrays = {key: t.float().numpy() for key, t in tensors.items()}
    for name, values in np.load(source).items():
        for dtype, torch_dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            arrays[f"round|{dtype}|{name}"] = torch.from_numpy(values).to(torch_dtype).float().numpy()
    np.savez(out, **arrays)
    print(json.dumps({key: str(t.dtype) for key, t in tensors.items()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
