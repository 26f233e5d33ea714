"""The workspace: the one folder the page reads and writes. Every path a user gives is resolved inside it.

Layout: `runs/NAME/` is a run's output_dir (the trainer's files plus `webui/` with the page's own), `uploads/NAME/`
holds the images uploaded for run NAME.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from PIL import Image, UnidentifiedImageError

from ppti import runfiles  # (standard library only: the run files' names, shared with the trainer)

from . import security

MIN_IMAGES, MAX_IMAGES = 3, 20
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 8192 * 8192
IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Keys of the "advanced" YAML box that the form itself sets (so the two cannot disagree).
FORM_KEYS = ("pretrained_model_name_or_path", "train_data_dir", "output_dir", "placeholder_token",
             "initializer_token", "learnable_property", "max_train_steps", "learning_rate", "resolution", "height",
             "width", "num_vectors", "train_batch_size")
# Keys of the YAML box that name files: resolved inside the workspace like every other path.
PATH_KEYS = ("tokenizer_name", "templates", "resume_from_checkpoint")


class WorkspaceError(ValueError):
    """A refused input; the message is one line naming the field and what to do."""


def looks_like_hub_id(name: str) -> bool:
    """'CompVis/stable-diffusion-v1-4' as opposed to a path (the trainer's rule, ppti.config._looks_like_hub_id)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


class Workspace:
    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.runs = self.root / "runs"
        self.runs.mkdir(exist_ok=True)
        self.uploads = self.root / "uploads"

    # ---- paths --------------------------------------------------------------------------------------------
    def resolve(self, value: str, field: str, must_exist: bool = True) -> Path:
        """`value` (relative to the workspace, or absolute inside it) as a real path inside the workspace.

        Refuses `..` components, absolute paths outside, and symlinks (anywhere on the way) that lead outside."""
        text = (value or "").strip()
        if not text:
            raise WorkspaceError(f"{field}: empty; give a path inside the workspace {self.root}")
        if has_control_characters(text):
            raise WorkspaceError(f"{field} {text!r}: contains a control character (such as NUL); type the path again")
        path = Path(text).expanduser() if text.startswith("~") else Path(text)
        if ".." in path.parts:
            raise WorkspaceError(f"{field} {text}: '..' is not allowed; give a path inside the workspace {self.root}")
        real = (path if path.is_absolute() else self.root / path).resolve()
        if real != self.root and self.root not in real.parents:
            raise WorkspaceError(f"{field} {text}: outside the workspace {self.root} (symlinks are followed)")
        if must_exist and not real.exists():
            raise WorkspaceError(f"{field} {text}: no such file or folder in the workspace {self.root}")
        return real

    def model(self, value: str, field: str = "model") -> str:
        """A model folder inside the workspace (absolute path), or a Hub id that is not a folder here."""
        text = (value or "").strip()
        if looks_like_hub_id(text) and not (self.root / text).exists():
            return text
        return str(self.resolve(text, field))

    # ---- runs ---------------------------------------------------------------------------------------------
    def new_run_dir(self, name: str) -> Path:
        if not RUN_NAME.fullmatch(name or ""):
            raise WorkspaceError(f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (no spaces or '/')")
        path = self.runs / name
        if path.exists():
            raise WorkspaceError(f"run name {name!r}: runs/{name} exists already; choose another name")
        return path

    def run_dirs(self) -> list[Path]:
        """Runs the page started, newest first."""
        if not self.runs.is_dir():
            return []
        found = [p.parent.parent for p in self.runs.glob("*/webui/run.json")]
        return sorted(found, key=lambda p: (p / "webui" / "run.json").stat().st_mtime, reverse=True)

    def run_dir(self, name: str) -> Path:
        if not RUN_NAME.fullmatch(name or "") or not (self.runs / name / "webui" / "run.json").is_file():
            raise WorkspaceError(f"run {name!r}: no such run in {self.runs}")
        return self.runs / name

    # ---- uploads ------------------------------------------------------------------------------------------
    def save_uploads(self, files: Sequence[str], run_name: str) -> Path:
        """Check the uploaded files (count, size, really images) and copy them to uploads/RUN_NAME/."""
        if not MIN_IMAGES <= len(files) <= MAX_IMAGES:
            raise WorkspaceError(f"images: upload {MIN_IMAGES} to {MAX_IMAGES} images (got {len(files)})")
        checked = [(Path(f), check_image(Path(f))) for f in files]
        target = self.uploads / run_name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for i, (source, suffix) in enumerate(checked):
            shutil.copyfile(source, target / f"{i:02d}-{safe_stem(source.stem)}{suffix}")
        return target


def has_control_characters(text: str, allowed: str = "") -> bool:
    """Whether `text` holds a NUL or another control character (other than those in `allowed`)."""
    return any((ord(c) < 32 or 127 <= ord(c) < 160) and c not in allowed for c in text)


def sort_uploads(files: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the files that are images within the limits, a one-line refusal per other file): an upload is judged file
    by file, so one bad file does not cost the good ones."""
    kept, refused = [], []
    for name in files:
        try:
            check_image(Path(name))
        except WorkspaceError as exc:
            refused.append(str(exc).removeprefix("images: "))
        except OSError as exc:
            refused.append(f"{Path(name).name}: not readable ({exc.strerror})")
        else:
            kept.append(name)
    return kept, refused


def safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem)[:40] or "image"


def check_image(path: Path) -> str:
    """The file's suffix by its decoded format; refuses non-images, huge files and decompression bombs."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise WorkspaceError(f"images: {path.name} is {size / 2**20:.1f} MiB; the limit is "
                             f"{MAX_IMAGE_BYTES // 2**20} MiB per image")
    try:
        with Image.open(path) as image:
            fmt = image.format
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise WorkspaceError(f"images: {path.name} is {image.width}x{image.height} pixels; too large")
            image.load()  # decode fully: a truncated or disguised file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, WorkspaceError):
            raise
        reason = "unknown format" if isinstance(exc, UnidentifiedImageError) else str(exc).replace(str(path), path.name)
        raise WorkspaceError(f"images: {path.name} is not an image the trainer can read ({reason})") from None
    if fmt not in IMAGE_SUFFIXES:
        raise WorkspaceError(f"images: {path.name} is a {fmt} image; use JPEG, PNG, WebP or BMP")
    return IMAGE_SUFFIXES[fmt]


def parse_advanced_yaml(text: str, workspace: Workspace) -> dict[str, Any]:
    """The "advanced" box: a YAML mapping of trainer flags. Keys the form sets are refused, file keys are resolved
    inside the workspace; the trainer's own --config validation then checks names, types and values."""
    if not (text or "").strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkspaceError(f"advanced YAML: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WorkspaceError("advanced YAML: expected a mapping of flag names to values, e.g. 'repeats: 50'")
    clash = sorted(set(data) & set(FORM_KEYS))
    if clash:
        raise WorkspaceError(f"advanced YAML: set {', '.join(clash)} in the form above, not here")
    security.check_secret_keys(data)  # (the box is saved in the run folder)
    for key in PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and not (key == "resume_from_checkpoint" and value == "latest") and not (
                key == "tokenizer_name" and looks_like_hub_id(value) and not (workspace.root / value).exists()):
            data[key] = str(workspace.resolve(value, f"advanced YAML {key}"))
    logging_dir = data.get("logging_dir")
    if isinstance(logging_dir, str):  # relative to output_dir: must stay inside the run
        if Path(logging_dir).is_absolute() or ".." in Path(logging_dir).parts:
            raise WorkspaceError(f"advanced YAML logging_dir {logging_dir}: give a folder name inside the run")
    return data


def validation_grids(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, validation/step-N.png) of a run, by step."""
    found = []
    for path in (run_dir / runfiles.VALIDATION_DIR).glob("step-*.png"):
        step = path.stem.removeprefix("step-")
        if step.isdigit():
            found.append((int(step), path))
    return sorted(found)


def saved_steps(run_dir: Path) -> list[int]:
    """Steps N of the run's learned_embeds-steps-N files."""
    return [step for step, _ in runfiles.saved_steps(run_dir)] if run_dir.is_dir() else []


def final_embedding(run_dir: Path) -> Optional[Path]:
    return runfiles.embeddings_file(run_dir)
