"""The page's own environment, .venv-webui: created on first use, reinstalled only when its requirements change.

Standard library only (it runs under the project's Python, before the page's environment exists).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-webui"


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def in_venv(venv: Path = VENV) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def ensure(requirements: Path, venv: Path = VENV) -> Path:
    """Create `venv` if needed and install `requirements`, then this project without its dependencies (ppti_webui
    and the Paddle-free ppti modules it imports; editable, so the page runs this checkout's code), unless that is
    already installed (a hash stamp of the requirements file and pyproject.toml); returns the venv's python."""
    stamp = venv / f".installed-{requirements.name}.sha256"
    wanted = hashlib.sha256(requirements.read_bytes() + (REPO / "pyproject.toml").read_bytes()).hexdigest()
    python = venv_python(venv)
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return python
    healthy = python.exists() and subprocess.run([str(python), "-c", ""], capture_output=True).returncode == 0
    if not healthy:
        print(f"creating {venv} (the page's own environment; once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    print(f"installing {requirements.name} into {venv}", file=sys.stderr)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                    str(requirements)], check=True, cwd=requirements.parent)
    # --no-deps: the project's own dependencies (paddlenlp, ppdiffusers) would replace Gradio's huggingface_hub
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "-e", str(REPO)], check=True)
    stamp.write_text(wanted)
    return python
