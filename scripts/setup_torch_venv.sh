#!/usr/bin/env bash
# Create .venv-torch (CPU PyTorch + diffusers + transformers) for tests/test_torch_interop.py.
#
#   bash scripts/setup_torch_venv.sh
#
# A separate venv because diffusers/transformers need a newer huggingface_hub than paddlenlp 2.8.1 allows.
# Idempotent: returns at once when .venv-torch already holds exactly requirements-torch.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-torch
REQUIREMENTS=requirements-torch.txt
STAMP="$VENV/.requirements-torch.sha256"
wanted=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
    echo "$VENV is up to date"
    exit 0
fi
if ! "$VENV/bin/python" -c "" 2>/dev/null; then
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# torch alone first, so that it is the CPU wheel and nothing later pulls a CUDA build as a dependency.
"$VENV/bin/pip" install --quiet "$(grep -E '^torch==' "$REQUIREMENTS")"
"$VENV/bin/pip" install --quiet -r "$REQUIREMENTS"
"$VENV/bin/python" - <<'PY'
import importlib.metadata
import torch, diffusers, transformers

cuda = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
              if d.metadata["Name"].lower().startswith("nvidia"))
if torch.version.cuda is not None or cuda:
    raise SystemExit(f"a CUDA build of torch was installed ({torch.__version__}; {cuda}): install the CPU wheel")
print(f".venv-torch: torch {torch.__version__}, diffusers {diffusers.__version__}, "
      f"transformers {transformers.__version__}")
PY
echo "$wanted" > "$STAMP"
