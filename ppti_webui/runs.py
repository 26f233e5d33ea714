"""Training runs as the page sees them: started as subprocesses, stopped with SIGINT, read back from their folder.

Nothing lives only in memory: a run's state is its output_dir (webui/run.json: who runs it; webui/train.log: the
trainer's output, whose progress bar gives step, total and loss; webui/exit.json: how it ended; the trainer's own
files), so a reloaded or restarted page shows a run exactly as it is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .workspace import Workspace, WorkspaceError, final_embedding, validation_grids

LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
# tqdm's bar: "Train steps:  40%|████      | 16/40 [00:03<00:04,  5.1it/s, loss=0.1234, lr=5.00e-03]"
BAR = re.compile(r"Train steps:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)(?:\s*\[[^\]]*?loss=([-+0-9.eEnaif]+))?")
MESSAGE = re.compile(r"^(error|interrupted): .*")
PUSH_FAILED = re.compile(r"--push_to_hub: upload to .* failed .*")
# What the trainer logs as it starts (in this order), before its progress bar: the page shows the phase reached.
PHASES = (("latents:", "phase_first_step"), ("prompt templates:", "phase_encoding"), ("initializer ", "phase_encoding"))
LOG_TAIL_LINES = 25
RESUMED = "--- resumed from the page ---"  # written to train.log before a resumed attempt's output
KILLED = (-9, 137)  # SIGKILL (the kernel's out-of-memory killer), as Popen and as a shell report it


@dataclass
class RunState:
    name: str
    run_dir: Path
    status: str  # running | finished | stopped | failed | lost
    step: int = 0
    total: int = 0
    losses: dict[int, float] = field(default_factory=dict)
    message: str = ""  # the trainer's last one-line message (error:/interrupted:), if any
    grid: Optional[Path] = None  # the newest validation grid
    embedding: Optional[Path] = None  # learned_embeds.pdparams once saved
    returncode: Optional[int] = None
    phase: str = ""  # i18n key of the start-up phase while no step is done yet
    log_tail: str = ""  # the last lines of train.log
    push_failed: str = ""  # the trainer's "--push_to_hub: upload ... failed" line, if any
    resumable: bool = False  # stopped or failed with a checkpoint to continue from

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def killed(self) -> bool:
        """Ended by SIGKILL: on a machine with nothing else killing it, the kernel's out-of-memory killer."""
        return self.returncode in KILLED


def read_progress(log_text: str) -> tuple[int, int, dict[int, float]]:
    """(step, total, {step: loss}) from the progress bar lines of the trainer's output."""
    step = total = 0
    losses: dict[int, float] = {}
    for piece in re.split(r"[\r\n]", log_text):
        match = BAR.search(piece)
        if not match:
            continue
        step, total = int(match.group(1)), int(match.group(2))
        if match.group(3):
            try:
                losses[step] = float(match.group(3))
            except ValueError:
                pass
    return step, total, losses


def last_message(log_text: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]", log_text) if MESSAGE.match(line.strip())]
    return lines[-1] if lines else ""


def start_phase(log_text: str) -> str:
    """The i18n key of the start-up phase the trainer's log has reached (loading the model, encoding the images,
    the first step)."""
    for marker, key in PHASES:
        if marker in log_text:
            return key
    return "phase_loading"


def log_tail(log_text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of the trainer's output, progress-bar redraws reduced to their last state."""
    shown: list[str] = []
    for line in (piece.rstrip() for piece in re.split(r"[\r\n]", log_text)):
        if not line.strip():
            continue
        if shown and BAR.search(line) and BAR.search(shown[-1]):
            shown[-1] = line  # (the bar's redraws: its last state only)
        else:
            shown.append(line)
    return "\n".join(shown[-lines:])


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run saved a checkpoint (checkpoints/checkpoint-N) to continue from."""
    return any(p.is_dir() for p in (run_dir / "checkpoints").glob("checkpoint-*"))


def process_alive(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is still this run's launcher (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    zombie = stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]
    return not zombie and str(LAUNCHER).encode() in cmdline and str(run_dir).encode() in cmdline


def read_state(run_dir: Path) -> RunState:
    webui = run_dir / "webui"
    info = json.loads((webui / "run.json").read_text())
    log_path = webui / "train.log"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    step, total, losses = read_progress(log_text)
    message = last_message(log_text.rsplit(RESUMED, 1)[-1])  # (the message of the latest attempt)
    exit_file = webui / "exit.json"
    code = None
    if exit_file.exists():
        code = json.loads(exit_file.read_text())["returncode"]
        status = "finished" if code == 0 else "stopped" if code in (130, 143) else "failed"
        if status == "failed" and not message and code not in KILLED:
            message = f"error: the trainer exited with code {code}; see the end of {log_path.name} below"
    elif process_alive(info["pid"], run_dir):
        status = "running"
    else:
        status, message = "lost", "the run's process is gone without an exit code (machine restarted?)"
    grids = validation_grids(run_dir)
    pushes = [line.strip() for line in re.split(r"[\r\n]", log_text) if PUSH_FAILED.search(line)]
    return RunState(run_dir.name, run_dir, status, step, total, losses, message,
                    grids[-1][1] if grids else None, final_embedding(run_dir), code,
                    start_phase(log_text) if status == "running" and not total else "", log_tail(log_text),
                    PUSH_FAILED.search(pushes[-1]).group(0) if pushes else "",
                    status in ("stopped", "failed") and has_checkpoint(run_dir))


class Runs:
    """Starts and stops the workspace's training runs; one at a time."""

    def __init__(self, workspace: Workspace, project_python: str, repo: Path):
        self.workspace, self.project_python, self.repo = workspace, project_python, repo
        self._lock = threading.Lock()
        self._children: list[subprocess.Popen] = []  # reaped while the page lives; orphans go to init otherwise

    def states(self) -> list[RunState]:
        self._reap()
        return [read_state(d) for d in self.workspace.run_dirs()]

    def active(self) -> Optional[RunState]:
        return next((s for s in self.states() if s.running), None)

    def start(self, run_dir: Path, trainer_args: list[str]) -> RunState:
        """Start train_textual_inversion.py with `trainer_args` (output_dir is set here); refuses a second run."""
        with self._lock:
            active = self.active()
            if active is not None:
                raise WorkspaceError(f"a run is in progress ({active.name}, step {active.step}/{active.total}); "
                                     "wait for it or press Stop")
            (run_dir / "webui").mkdir(parents=True, exist_ok=True)
            command = [self.project_python, "-u", str(self.repo / "train_textual_inversion.py"), *trainer_args,
                       "--output_dir", str(run_dir)]
            child = subprocess.Popen(
                [self.project_python, str(LAUNCHER), str(run_dir), "--", *command],
                cwd=self.workspace.root, start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
            )
            self._children.append(child)
            info = {"pid": child.pid, "command": command, "started": time.time()}
            tmp = run_dir / "webui" / ".run.json.tmp"
            tmp.write_text(json.dumps(info, indent=1))
            os.replace(tmp, run_dir / "webui" / "run.json")
            self._reap()
            return read_state(run_dir)

    def resume(self, name: str) -> RunState:
        """Continue a stopped or failed run in its own folder from its latest checkpoint (the same command plus
        --resume_from_checkpoint latest); train.log goes on."""
        run_dir = self.workspace.run_dir(name)
        with self._lock:
            state = read_state(run_dir)
            if state.status not in ("stopped", "failed"):
                raise WorkspaceError(f"run {name} is {state.status}: only a stopped or failed run can be resumed")
            if not state.resumable:
                raise WorkspaceError(f"run {name} saved no checkpoint (checkpointing_steps: 0): it cannot be "
                                     "resumed; start a new run")
            command = json.loads((run_dir / "webui" / "run.json").read_text())["command"]
            trainer_args = command[3:command.index("--output_dir")] if "--output_dir" in command else None
            if trainer_args is None or command[2] != str(self.repo / "train_textual_inversion.py"):
                raise WorkspaceError(f"run {name}: its webui/run.json is not the page's; start a new run")
            if "--resume_from_checkpoint" not in trainer_args:
                trainer_args += ["--resume_from_checkpoint", "latest"]
            active = self.active()
            if active is not None:
                raise WorkspaceError(f"a run is in progress ({active.name}, step {active.step}/{active.total}); "
                                     "wait for it or press Stop")
            ended = run_dir / "webui" / "exit.json"
            ended.rename(run_dir / "webui" / "exit-before-resume.json")  # (so it shows as running once started)
        with open(run_dir / "webui" / "train.log", "a") as log:
            log.write(f"\n{RESUMED}\n")
        try:
            return self.start(run_dir, trainer_args)
        except BaseException:
            (run_dir / "webui" / "exit-before-resume.json").rename(ended)
            raise

    def stop(self, name: str) -> RunState:
        """SIGINT to the run's process group: the trainer finishes its step, saves and exits (130)."""
        run_dir = self.workspace.run_dir(name)
        state = read_state(run_dir)
        if not state.running:
            raise WorkspaceError(f"run {name} is not running ({state.status})")
        pid = json.loads((run_dir / "webui" / "run.json").read_text())["pid"]
        os.killpg(pid, signal.SIGINT)  # the launcher leads its own session: its pid is the group id
        return state

    def _reap(self) -> None:
        self._children = [c for c in self._children if c.poll() is None]


def project_python_default(repo: Path) -> str:
    venv = repo / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable
