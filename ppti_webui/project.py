"""The project's command-line tools, run by the project's Python: checks, generation, conversion.

The page's environment cannot import Paddle; these subprocesses can. Each answers with the tool's own one-line
message (`error: ...`), which is what the page shows: never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Optional

GENERATE_TIMEOUT = 30 * 60


class ToolFailed(RuntimeError):
    """A tool refused or failed; str() is its one-line message."""


def one_line(output: str, prefix: str = "") -> str:
    """The tool's last `error:` line (what it prints for the user), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error: " in line and not line.startswith(("Traceback", "File "))]
    return prefix + (errors[-1] if errors else lines[-1] if lines else "no output")


class ProjectTools:
    def __init__(self, project_python: str, repo: Path, workspace_root: Path):
        self.python, self.repo, self.cwd = project_python, repo, workspace_root
        self._checker: Optional[subprocess.Popen] = None
        self._checker_lock = threading.Lock()

    def run(self, tool: str, args: list[str], timeout: float = GENERATE_TIMEOUT) -> str:
        """Run tools/TOOL with args; its stdout on success, ToolFailed with its one-line error otherwise."""
        try:
            proc = subprocess.run([self.python, str(self.repo / "tools" / tool), *args], cwd=self.cwd,
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ToolFailed(f"error: {tool} did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise ToolFailed(one_line(proc.stderr + "\n" + proc.stdout))
        return proc.stdout

    def check(self, argv: list[str]) -> tuple[bool, str]:
        """tools/check_config.py ARGV through one long-lived `serve` process (the tokenizer stays loaded)."""
        with self._checker_lock:
            for _attempt in range(2):
                if self._checker is None or self._checker.poll() is not None:
                    self._checker = subprocess.Popen(
                        [self.python, str(self.repo / "tools" / "check_config.py"), "serve"], cwd=self.cwd,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                try:
                    self._checker.stdin.write(json.dumps({"argv": argv}) + "\n")
                    self._checker.stdin.flush()
                    reply = json.loads(self._checker.stdout.readline())
                    return reply["returncode"] == 0, reply["message"]
                except (OSError, ValueError):  # the checker died: start a new one once
                    self._checker.kill()
                    self._checker = None
            return False, "error: the checker (tools/check_config.py serve) could not run; see the page's console"

    def close(self) -> None:
        if self._checker is not None and self._checker.poll() is None:
            self._checker.kill()
