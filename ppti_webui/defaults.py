"""The form's defaults from the model and the machine: the models the workspace holds, the model's own image size,
a batch size that fits, and an estimate of the training's memory against what the machine has.

Read from the model folder's JSON files only (the page cannot import Paddle). The estimate is the trainer's peak
resident memory measured on CPU with the toy world (float32, no gradient checkpointing, OMP_NUM_THREADS=1):

    resolution x batch:   32x4 615 MiB   64x4 637 MiB   128x4 753 MiB   128x8 908 MiB   256x2 1208 MiB

fitted (least squares, within 4 MiB of each) as a fixed part (the process and the weights) plus, per image of the
batch, a part growing with the latent pixels (scaled by the UNet's width for other models) and one with their
square (self-attention maps). Checked outside the fit: 512x1 measured 4.01 GiB (estimate 4.11), 384x2 2.96 GiB
(3.1). The issue's failing default, 512 px x batch 16, comes out at 57 GiB. It is a guide, not a
promise: it says when a run will most likely not fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = (REPO / "models" / "toy-world", REPO / "models" / "toy-world-zh")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
GIB = 2**30

# Fitted on the toy world (block_out_channels [32, 64], 64-wide attention); see the module docstring.
PROCESS_BYTES = 595 * 2**20  # Python + Paddle + ppti imported, before any weight
PER_LATENT_PIXEL = 100 * 2**10  # bytes per latent pixel per image, at the toy world's width (32 channels)
PER_ATTENTION_PAIR = 200  # bytes per (latent pixel)^2 per image (self-attention maps)
TOY_CHANNELS = 32
BATCH_SIZES = (4, 2, 1)  # largest first; 4 as in configs/quickstart.yaml
FIT_FRACTION = 0.6  # a batch "fits" when the estimate is below this share of the memory available now


@dataclass(frozen=True)
class ModelFacts:
    """What the form needs to know about a model folder."""
    path: Path
    sample_size: int  # the image side the model was trained at (UNet sample size x the VAE's downsampling)
    channels: int  # the UNet's first block width
    weights_bytes: int
    sdxl: bool

    @property
    def small(self) -> bool:
        """A toy-sized model (trains in minutes on a CPU)."""
        return self.sample_size <= 128


def model_folders(root: Path, depth: int = 3) -> list[Path]:
    """Folders under `root` (not runs/ or uploads/) holding a model_index.json, sorted by path."""
    found: list[Path] = []

    def walk(folder: Path, level: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if level == 0 and child.name in ("runs", "uploads"):
                continue
            if (child / "model_index.json").is_file():
                found.append(child)
            elif level + 1 < depth and not child.name.startswith("."):
                walk(child, level + 1)

    walk(root, 0)
    return found


def model_choices(root: Path) -> list[tuple[str, str]]:
    """(label, value) pairs for the model picker: the workspace's model folders (relative paths), then the shipped
    toy worlds (absolute paths; read-only, outside the workspace)."""
    local = [(str(p.relative_to(root)), str(p.relative_to(root))) for p in model_folders(root)]
    shipped = [(f"{p.name} (ppti)", str(p)) for p in SHIPPED_MODELS if (p / "model_index.json").is_file()]
    return local + shipped


def shipped_model(value: str) -> Optional[Path]:
    """The shipped model `value` names (its absolute path or its folder name), else None."""
    text = (value or "").strip()
    for path in SHIPPED_MODELS:
        if text in (str(path), path.name, f"{path.name} (ppti)") and (path / "model_index.json").is_file():
            return path
    return None


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _folder_bytes(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except OSError:
        return 0


def model_facts(folder: Path) -> Optional[ModelFacts]:
    """The facts of a ppdiffusers/diffusers model folder, None when it is not one (or unreadable)."""
    if not (folder / "model_index.json").is_file():
        return None
    unet, vae = _json(folder / "unet" / "config.json"), _json(folder / "vae" / "config.json")
    try:
        sample = int(unet.get("sample_size") or 64)
        down = 2 ** (len(vae.get("block_out_channels") or [0, 0, 0, 0]) - 1)
        channels = int((unet.get("block_out_channels") or [320])[0])
    except (TypeError, ValueError):
        return None
    index = _json(folder / "model_index.json")
    return ModelFacts(folder, sample * down, channels, sum(_folder_bytes(folder / c) for c in COMPONENTS),
                      "XL" in str(index.get("_class_name", "")))


def estimate_bytes(facts: ModelFacts, height: int, width: int, batch: int) -> int:
    """The trainer's peak memory (bytes) for this model, image size and batch size (see the module docstring)."""
    latent = max(1, height // 8) * max(1, width // 8)
    scale = facts.channels / TOY_CHANNELS
    per_image = PER_LATENT_PIXEL * scale * latent + PER_ATTENTION_PAIR * latent * latent
    return int(PROCESS_BYTES + 2 * facts.weights_bytes + batch * per_image)


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (what can be used now without swapping); 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass(frozen=True)
class FormDefaults:
    resolution: int
    batch_size: int
    steps: int
    learning_rate: float
    validation_steps: int


def form_defaults(facts: Optional[ModelFacts], available: int) -> FormDefaults:
    """Resolution = the model's own; the largest batch size (4, 2, 1) whose estimate fits; steps and learning rate
    for the model's size (the quick start's for toy models, the ppdiffusers example's for real ones)."""
    resolution = facts.sample_size if facts else 512
    batch = 1
    if facts and available:
        batch = next((b for b in BATCH_SIZES
                      if estimate_bytes(facts, resolution, resolution, b) <= FIT_FRACTION * available), 1)
    if facts is not None and facts.small:
        return FormDefaults(resolution, batch, 100, 5e-3, 50)
    return FormDefaults(resolution, batch, 3000, 5e-4, 500)


def memory_verdict(facts: Optional[ModelFacts], height: int, width: int, batch: int, available: int) -> tuple[str, dict]:
    """(key of the i18n table, its values) saying the estimate against the machine."""
    if facts is None or not (height and width and batch):
        return "memory_unknown", {}
    need = estimate_bytes(facts, height, width, batch)
    values = {"need": f"{need / GIB:.1f}", "have": f"{available / GIB:.1f}"}
    if not available:
        return "memory_unknown_machine", values
    if need > available:
        return "memory_too_much", values
    if need > FIT_FRACTION * available:
        return "memory_tight", values
    return "memory_ok", values
