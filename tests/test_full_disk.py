"""Full disks: every kind of file ppti writes fails with one WriteError line naming the file and its folder, leaves the
previous version intact and no temporary file behind; a training run on a full disk ends with one error line, and
two runs never mix in one folder.

Each kind is tested on a really full filesystem (a small tmpfs, mounted when the test may: root) and with an
ENOSPC simulated at the write boundary (the fsync every atomic write makes before its rename: where delayed
allocation reports a full disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, train_args

from ppti import outputs
from ppti.atomic import TMP_MARK, WriteError
from ppti.config import TrainConfig
from ppti.distributed import DistContext
from ppti.reporting import NullReporter, Reporter

NO_SPACE = "no space left on the device of"
TOOLS = REPO / "tools"


# ------------------------------------------------------------------------------------------------------------
# disks
# ------------------------------------------------------------------------------------------------------------
class TmpfsDisk:
    """A small tmpfs: really full after fill()."""

    def __init__(self, root: Path):
        self.root = root

    def fill(self) -> None:
        fd = os.open(self.root / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (b"\0" * (1 << 20), b"\0" * 4096, b"\0"):
                try:
                    while os.write(fd, chunk):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)


class SimulatedDisk:
    """A folder whose writes fail at the fsync before the rename with ENOSPC after fill()."""

    def __init__(self, root: Path, monkeypatch):
        self.root, self.monkeypatch = root, monkeypatch

    def fill(self) -> None:
        real_fsync, root = os.fsync, str(self.root)

        def fsync(fd):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(root):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        self.monkeypatch.setattr(os, "fsync", fsync)


def mount_tmpfs(path: Path, size: str, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}); the simulated ENOSPC "
                    "variant covers the same code")


@contextlib.contextmanager
def full_disk(kind: str, root: Path, size: str, monkeypatch):
    """A disk of `kind` at root: a tmpfs of `size` (skips where mounting is not allowed) or a simulated one; the
    caller fills it. Unmounted afterwards."""
    if kind == "simulated":
        root.mkdir(parents=True, exist_ok=True)
        yield SimulatedDisk(root, monkeypatch)
        return
    mount_tmpfs(root, size)
    try:
        yield TmpfsDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def files_left(root: Path) -> list[str]:
    """Every file under root but the tmpfs filler."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "filler")


SIMULATE = Path(__file__).parent / "simulated_full_disk.py"  # a full disk for another process (see its docstring)


@pytest.fixture(params=["tmpfs", "simulated"])
def disk(request, tmp_path, monkeypatch):
    root = tmp_path / "disk"
    if request.param == "simulated":
        root.mkdir()
        yield SimulatedDisk(root, monkeypatch)
        return
    mount_tmpfs(root, "8m")
    try:
        yield TmpfsDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (but the filler) -> sha256 of a file's bytes, or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.name == "filler":
            continue
        out[str(path.relative_to(root))] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------------------------
# writers: (disk folder, version) -> writes one kind of file; version 2 differs from version 1
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tiny_model_en, tmp_path_factory):
    """A set-up training run on the tiny model (its components, rows, optimizer, reporter)."""
    from ppti.config import parse_config
    from ppti.train import setup

    out = tmp_path_factory.mktemp("unused")
    args = train_args(tiny_model_en, REPO / "examples" / "demo_concept", out, validation_prompt="a <demo-toy>")
    return setup(parse_config(args), DistContext())  # (a validation prompt keeps the VAE for validation)


def _with_dir(run, folder: Path, **changes):
    run.config = dataclasses.replace(run.config, output_dir=str(folder), **changes)
    return run


def write_embeddings(run, folder, version):
    outputs.save_embeddings(_with_dir(run, folder).config, np.full((1, 32), version, np.float32), step=4)


def write_run_files(run, folder, version):
    outputs.write_run_files(_with_dir(run, folder, seed=version).config, version, "en")


def write_checkpoint(run, folder, version):
    from ppti.train import save_checkpoint

    _with_dir(run, folder)
    run.rows.rows.set_value(np.full((1, 32), version, np.float32))
    save_checkpoint(run, 4)


def write_visualdl_log(run, folder, version):
    reporter = getattr(run, "_test_reporter", None)
    if reporter is None or version == 1:
        reporter = run._test_reporter = Reporter("visualdl", folder / "logs")
    reporter.scalar("train/loss", float(version), version)
    reporter.flush()


def write_validation_grid(run, folder, version):
    from ppti.validation import run_validation

    run_validation(run.components.pipeline, ["a photo of a <demo-toy>"], 1, version, 64, 64, folder / "validation",
                   4, NullReporter())


def write_converted(run, folder, version):
    from ppti.embeddings import write_embeddings as write
    from ppti.embeddings.convert import convert

    source = folder.parent.parent / f"source-{version}.pdparams"  # (outside the disk)
    write(source, {"<demo-toy>": np.full((1, 32), version, np.float32)}, fmt="pdparams")
    convert(source, "torch", fmt=None, token="<demo-toy>", dtype="fp32", output=folder / "converted.safetensors",
            step=None, expect_dim=None, force=True)


def write_tiny_model(run, folder, version):
    from ppti.tiny import make_tiny_model

    make_tiny_model(folder / "tiny-sd", seed=version)


def write_pipeline(run, folder, version):
    _with_dir(run, folder)
    run.rows.rows.set_value(np.full((1, 32), version, np.float32))
    outputs.save_pipeline(run.config, run.components, run.conditioning)


KINDS = {
    "embeddings": write_embeddings,
    "train_config": write_run_files,
    "checkpoint": write_checkpoint,
    "visualdl_log": write_visualdl_log,
    "validation_grid": write_validation_grid,  # (rendered with 2 denoising steps, see the test)
    "converted": write_converted,
    "tiny_model": write_tiny_model,
    "full_pipeline": write_pipeline,
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_disk_keeps_the_previous_file_and_leaves_nothing_behind(kind, disk, run, monkeypatch):
    from ppti import validation

    monkeypatch.setattr(validation, "render", functools.partial(validation.render, num_inference_steps=2))
    folder = disk.root / "out"
    KINDS[kind](run, folder, 1)
    before = snapshot(disk.root)
    assert before, "the first write wrote nothing"
    disk.fill()
    with pytest.raises(WriteError) as caught:
        KINDS[kind](run, folder, 2)
    message = str(caught.value)
    assert NO_SPACE in message and str(folder) in message, message
    assert "\n" not in message and "(while writing " in message
    assert snapshot(disk.root) == before  # previous files intact, no temporary or empty file left
    assert not [p for p in disk.root.rglob(f"*{TMP_MARK}*")]


# ------------------------------------------------------------------------------------------------------------
# whole runs (the rows): 0 KB and a few KB free, with and without checkpoints; no mixing of two runs
# ------------------------------------------------------------------------------------------------------------
def cli(argv) -> tuple[int, str]:
    from ppti.cli import main

    return main([str(a) for a in argv])


@pytest.mark.parametrize("kind", ["tmpfs", "simulated"])
@pytest.mark.parametrize("checkpointing_steps", [0, 2])
def test_a_run_on_a_full_disk_ends_with_one_line(tiny_model_en, demo_images, tmp_path, capsys, monkeypatch,
                                                 checkpointing_steps, kind):
    with full_disk(kind, tmp_path / "disk", "256k", monkeypatch) as disk:
        disk.fill()
        out = disk.root / "run"
        rc = cli(train_args(tiny_model_en, demo_images, out, report_to="visualdl",
                            checkpointing_steps=checkpointing_steps))
        err = capsys.readouterr().err
        left = files_left(disk.root)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and "Traceback" not in err and len(errors) == 1, err
    assert NO_SPACE in errors[0] and str(out) in errors[0], errors[0]
    assert left == [], left  # no partial, temporary or empty file


@pytest.mark.parametrize("kind", ["tmpfs", "simulated"])
@pytest.mark.parametrize("checkpointing_steps", [0, 2])
def test_a_second_run_on_a_full_disk_never_mixes_with_the_first(tiny_model_en, demo_images, tmp_path, capsys,
                                                                 monkeypatch, checkpointing_steps, kind):
    """The issue's case: a second run (new seed) into a finished run's folder on a full disk. Without
    --overwrite_output_dir it is refused and the first run stays as it was; with it the first run's files are removed
    before the new run writes, so whatever the disk lets through belongs to the new run (which writes more files
    than the first freed, and so fails with one line; on the simulated disk no write gets through)."""
    with full_disk(kind, tmp_path / "disk", "2m", monkeypatch) as disk:
        out = disk.root / "run"
        args = train_args(tiny_model_en, demo_images, out, save_steps=2, checkpointing_steps=checkpointing_steps,
                          report_to="visualdl")
        assert cli(args) == 0
        first = snapshot(out)
        disk.fill()
        capsys.readouterr()
        second_run = args + ["--seed", "8", "--save_steps", "1", "--save_format", "both"]
        assert cli(second_run) == 2  # refused: the folder holds a run
        refusal = capsys.readouterr().err
        assert "--overwrite_output_dir" in refusal and "--resume_from_checkpoint" in refusal
        assert snapshot(out) == first
        rc = cli(second_run + ["--overwrite_output_dir"])
        err = capsys.readouterr().err
        second = snapshot(out)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and "Traceback" not in err and len(errors) == 1 and NO_SPACE in errors[0], err
    old = {digest for name, digest in first.items() if name.startswith(("learned_embeds", "train_config", "checkpoints/"))
           and digest != "dir"}
    assert old and not old & set(second.values()), "a file of the first run is still there next to the second's"
    assert not [name for name in second if TMP_MARK in name or name.endswith(".log") and not second[name]]


# ------------------------------------------------------------------------------------------------------------
# tools and several cards
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tmpfs", "simulated"])
def test_the_converter_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, kind):
    from ppti.embeddings import write_embeddings as write

    source = tmp_path / "learned_embeds.pdparams"
    write(source, {"<t>": np.ones((1, 8), np.float32)}, fmt="pdparams")
    with full_disk(kind, tmp_path / "disk", "64k", monkeypatch) as disk:
        command = [str(TOOLS / "convert.py"), str(source), "--to", "torch", "-o", str(disk.root / "x.safetensors")]
        if kind == "simulated":  # (the converter runs in its own process: the simulation goes with it)
            command = [str(SIMULATE), str(disk.root), *command]
        else:
            disk.fill()
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120)
        left = files_left(disk.root)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and NO_SPACE in done.stderr and "x.safetensors" in done.stderr
    assert left == [], left


@pytest.mark.parametrize("kind", ["tmpfs", "simulated"])
def test_two_cards_with_a_full_disk_end_with_the_error_not_a_hang(tiny_model_en, demo_images, tmp_path, monkeypatch,
                                                                  kind):
    """Rank 0 (the writer) hits the full disk; both ranks end within the failure bound, the console names it."""
    from helpers import FAILURE_BOUND, launch

    with full_disk(kind, tmp_path / "disk", "64k", monkeypatch) as disk:
        script, args = REPO / "train_textual_inversion.py", train_args(tiny_model_en, demo_images, disk.root / "run",
                                                                       train_batch_size=1)
        if kind == "simulated":  # (each rank runs the simulation)
            script, args = SIMULATE, [disk.root, script, *args]
        else:
            disk.fill()
        rc, console, seconds = launch(script, args, tmp_path / "launch-logs")
        left = files_left(disk.root)
    assert rc != 0 and seconds < FAILURE_BOUND, console[-3000:]
    assert NO_SPACE in console, console[-3000:]
    worker0 = (tmp_path / "launch-logs" / "workerlog.0").read_text(errors="replace")
    assert "Traceback" not in worker0 and NO_SPACE in worker0, worker0[-3000:]
    assert left == [], left


@pytest.mark.parametrize("code, reason", [
    (errno.ENOSPC, "no space left on the device of"),
    (errno.EDQUOT, "the disk quota is exceeded for"),
    (errno.EROFS, "read-only file system at"),
    (errno.EACCES, "no permission to write in"),
    (errno.EIO, "cannot write in"),
])
def test_every_write_error_is_one_line_naming_the_file_and_folder(tmp_path, monkeypatch, code, reason):
    from ppti.atomic import atomic_write_text

    target = tmp_path / "train_config.yaml"
    target.write_text("old", encoding="utf-8")

    def failing_replace(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(WriteError) as caught:
        atomic_write_text(target, "new")
    message = str(caught.value)
    assert message.startswith(f"{reason} {tmp_path}") and "(while writing train_config.yaml)" in message
    assert "\n" not in message and isinstance(caught.value, OSError) and caught.value.errno == code
    assert target.read_text(encoding="utf-8") == "old" and sorted(tmp_path.iterdir()) == [target]
