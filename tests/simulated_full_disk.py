"""Test-only: run a script as if the disk under ROOT were full, for processes the test cannot monkeypatch (a
converter run as a user runs it, the ranks of paddle.distributed.launch).

    python tests/simulated_full_disk.py ROOT SCRIPT [ARGS ...]

Every fsync of a file under ROOT fails with ENOSPC: the write boundary where a full disk shows (delayed allocation
reports it at the fsync every atomic write makes before its rename), as tests/test_full_disk.py's SimulatedDisk
does in-process. Used where mounting a small tmpfs is not allowed (not root).
"""

from __future__ import annotations

import errno
import os
import runpy
import sys
from pathlib import Path


def fail_fsync_under(root: str) -> None:
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(root):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    os.fsync = fsync


if __name__ == "__main__":
    root, script, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    fail_fsync_under(str(Path(root).resolve()))
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)  # as `python SCRIPT` would have it
    runpy.run_path(script, run_name="__main__")
