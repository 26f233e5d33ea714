"""Runs inside .venv-torch. Writes embedding files the way diffusers, AUTOMATIC1111 WebUI and kohya do, with
real `torch.save` and `safetensors.torch`, plus `expected.npz` holding each file's float32 vectors (SDXL pairs
as `<file>/clip_l`, `<file>/clip_g`).

    python write_reference_files.py OUT_DIR WIDTH SDXL_G_WIDTH
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def webui_dict(name, vectors, step=500):
    """What WebUI's Embedding.save writes (F3)."""
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": name, "step": step,
            "sd_checkpoint": "abc123", "sd_checkpoint_name": "v1-5-pruned"}


def main(out: Path, width: int, width_g: int) -> None:
    torch.manual_seed(0)
    vocab = torch.randn(50, width)  # a whole embedding matrix: diffusers' old .bin saved a row view into it
    rows = {name: torch.randn(n, width) for name, n in (("a", 2), ("b", 1), ("c", 3), ("d", 2), ("e", 1))}
    expected = {}

    def keep(file_name, tensor):
        expected[file_name] = tensor.detach().float().reshape(-1, tensor.shape[-1]).numpy()

    save_file({"<f1-st>": rows["a"]}, out / "f1.safetensors", metadata={"format": "pt"})
    keep("f1.safetensors", rows["a"])
    torch.save({"<f1-view>": vocab[41]}, out / "f1_view.bin")  # 1-D, storage offset 41*width
    keep("f1_view.bin", vocab[41])
    torch.save({"<f1-strided>": vocab[10:16:2, :]}, out / "f1_strided.bin")  # offset + row stride 2*width
    keep("f1_strided.bin", vocab[10:16:2, :])
    torch.save({"<f1-half>": rows["c"].half()}, out / "f1_half.bin")
    keep("f1_half.bin", rows["c"].half())

    torch.save(webui_dict("<f3-name>", rows["d"]), out / "f3-stem.pt")
    keep("f3-stem.pt", rows["d"])
    param_dict = torch.nn.ParameterDict({"*": torch.nn.Parameter(rows["b"])})
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": param_dict},
               out / "f3-paramdict.pt")  # the original textual_inversion repo's layout, no name field
    keep("f3-paramdict.pt", rows["b"])

    save_file({"emb_params": rows["c"]}, out / "kohya-st.safetensors",
              metadata={"modelspec.title": "kohya-st", "modelspec.architecture": "stable-diffusion-v1/textual-inversion"})
    keep("kohya-st.safetensors", rows["c"])
    torch.save({"emb_params": rows["a"].bfloat16()}, out / "kohya-bf16.pt")
    keep("kohya-bf16.pt", rows["a"].bfloat16())

    clip_l, clip_g = torch.randn(2, width), torch.randn(2, width_g)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, out / "sdxl-pair.safetensors")
    expected["sdxl-pair.safetensors/clip_l"], expected["sdxl-pair.safetensors/clip_g"] = clip_l.numpy(), clip_g.numpy()

    torch.save(rows["e"][0].clone(), out / "bare-tensor.pt")
    keep("bare-tensor.pt", rows["e"][0])
    np.savez(out / "expected.npz", **expected)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
