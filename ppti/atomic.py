"""Crash-safe file writes: write to a temporary name in the same folder, fsync, then rename.

A crash, Ctrl-C or full disk in the middle of a save leaves either the previous file or the new one,
never a truncated file under the final name. Every file ppti writes goes through here (or, for folders written by
other libraries, through `atomic_dir`), and any OSError of a write becomes one `WriteError` line naming the file and
its folder ("no space left on the device of ... (while writing ...)"), with no temporary file left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

TMP_MARK = ".ppti-tmp-"

# errno -> what to tell the user about the folder; other errors are reported with their own strerror
_REASONS = {
    errno.ENOSPC: ("no space left on the device of", "free space there or choose another folder"),
    errno.EDQUOT: ("the disk quota is exceeded for", "free space there or choose another folder"),
    errno.EROFS: ("read-only file system at", "choose a writable folder"),
    errno.EACCES: ("no permission to write in", "choose a writable folder"),
    errno.EPERM: ("no permission to write in", "choose a writable folder"),
}


class WriteError(OSError):
    """A file could not be written; the message names the file and its folder, and says the previous file (if
    any) is unchanged."""

    def __init__(self, path: str | os.PathLike, exc: OSError, folder: bool = False):
        path = Path(path)
        directory, what, kept = ((path, "its files", "earlier files there are") if folder else
                                 (path.parent, path.name, f"an earlier {path.name} is"))
        reason, advice = _REASONS.get(exc.errno, (None, "check the disk or choose another folder"))
        where = f"{reason} {directory}" if reason else f"cannot write in {directory} ({exc.strerror or exc})"
        super().__init__(exc.errno, f"{where} (while writing {what}); {advice}. Nothing was half-written: {kept} "
                                    "unchanged")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


@contextlib.contextmanager
def write_errors(path: str | os.PathLike, folder: bool = False) -> Iterator[None]:
    """Any OSError inside the block becomes a WriteError about writing `path` (the files of `path` if folder)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(path, exc, folder) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed.

    Use for writers that insist on a file name (paddle.save, safetensors.save_file, PIL.Image.save).
    """
    final = Path(path)
    tmp = None
    with write_errors(final):
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=TMP_MARK, suffix=final.suffix, dir=final.parent)
            os.close(fd)
            tmp = Path(tmp_name)
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            set_normal_permissions(tmp)  # mkstemp creates 0600
            os.replace(tmp, final)
        finally:
            if tmp is not None and tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path` for a library that writes a whole folder (save_pretrained); on
    success each of its entries replaces the entry of the same name in `path` (a file by rename, a folder by
    rename after the old one is moved aside), on error it is removed. Entries of `path` it does not hold stay."""
    final = Path(path)
    tmp = None
    with write_errors(final, folder=True):
        try:
            final.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=TMP_MARK, dir=final))
            set_normal_permissions(tmp)  # mkdtemp creates 0700
            yield tmp
            for file in (p for p in tmp.rglob("*") if p.is_file()):
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
            for entry in sorted(tmp.iterdir()):
                target = final / entry.name
                if entry.is_dir() and target.is_dir():
                    old = final / f"{TMP_MARK}old-{entry.name}"
                    os.rename(target, old)
                    os.rename(entry, target)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(entry, target)
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def set_normal_permissions(path: Path) -> None:
    """The permissions open()/mkdir() would give (0666/0777 less the umask); mkstemp/mkdtemp create 0600/0700."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
