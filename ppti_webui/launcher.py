"""Runs one command for the web page and records how it ended: the page may be killed, the run goes on.

    python ppti_webui/launcher.py RUN_DIR -- python -u train_textual_inversion.py ...

Started by the page in a session of its own (its own process group), so closing or killing the page does not
reach it. The command's output goes to RUN_DIR/webui/train.log; when it exits, RUN_DIR/webui/exit.json gets its
exit code (atomically). SIGINT sent to the group reaches the trainer (which saves and exits 130, as on the command
line); this process ignores it and waits. Standard library only: it runs under the project's Python.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path


def write_json_atomically(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: launcher.py RUN_DIR -- COMMAND ...", file=sys.stderr)
        return 2
    state = Path(argv[0]) / "webui"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer handles the group's SIGINT; we wait for it
    with open(state / "train.log", "ab") as log:
        child = subprocess.Popen(argv[2:], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
        returncode = child.wait()
    write_json_atomically(state / "exit.json", {"returncode": returncode})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
