"""sha256 manifests for model folders that ship inside the repository (the toy world).

`manifest.json` lists every file of the folder with its sha256 and size, plus how the folder was made. A folder
that has one is checked before use: a changed, missing or extra weight file is refused with a one-line message,
so nobody trains on a half-downloaded or edited model by accident.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write_text
from .checkpoint import _sha256 as sha256  # the checkpoints' file hash: one implementation

MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """The folder's files do not match its manifest.json."""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, **about) -> dict:
    """Hash every file of `folder` into folder/manifest.json (with `about`, e.g. the command); returns it."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in _files(folder)}
    manifest = {**about, "total_bytes": sum(f["bytes"] for f in files.values()), "files": files}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def verify_manifest(folder: Path) -> None:
    """Raise ManifestError naming the first problem if `folder`'s files differ from its manifest.json."""
    folder = Path(folder)
    try:
        listed = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise ManifestError(f"{folder / MANIFEST}: unreadable ({exc}); restore it with `git checkout {folder}`")
    present = {p.relative_to(folder).as_posix() for p in _files(folder)}
    missing = sorted(set(listed) - present)
    if missing:
        raise ManifestError(f"{folder}: {missing[0]} is missing (listed in {MANIFEST}); restore the folder with "
                            f"`git checkout {folder}` or rebuild it")
    for name, entry in listed.items():
        if sha256(folder / name) != entry["sha256"]:
            raise ManifestError(f"{folder / name}: sha256 differs from {MANIFEST} (file changed or corrupt); "
                                f"restore it with `git checkout {folder}` or rebuild the folder")
    extra = sorted(present - set(listed))
    if extra:
        raise ManifestError(f"{folder}: {extra[0]} is not listed in {MANIFEST}; remove it")
