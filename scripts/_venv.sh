# Shared by scripts/test.sh and scripts/demo.sh: find Python >= 3.12, build (or reuse) the venv.
#
# .venv in the repo root links to a venv cached outside the clone, keyed by the pins
# (requirements/ci.txt + setup.py + the Python version), because torch makes it ~5.5 GB.
# Override the cache location with SCIR_VENV_CACHE, the interpreter with SCIR_PYTHON.
# Source it from the repo root, then call ensure_venv and install_package.

runs_312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' >/dev/null 2>&1; }

find_python() {
  local candidates=("${SCIR_PYTHON:-}" python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=($(ls -d "$(pyenv root)"/versions/3.12.*/bin/python 2>/dev/null | sort -rV))
  fi
  local p
  for p in "${candidates[@]}"; do   # a pyenv shim may exist without working: run each one
    if [[ -n "$p" ]] && runs_312 "$p"; then echo "$p"; return; fi
  done
  echo "scripts/test.sh: no working Python >= 3.12 found (megatron-core 0.19 needs it); set SCIR_PYTHON" >&2
  exit 1
}

ensure_venv() {
  local py key cache
  py=$(find_python)
  key=$( { "$py" --version; cat requirements/ci.txt setup.py; } | sha256sum | cut -c1-16)
  cache="${SCIR_VENV_CACHE:-$HOME/.cache/megatron-scir/venvs}/py312-$key"
  if [[ ! -f "$cache/.complete" ]]; then
    echo "== building the venv $cache (torch + megatron-core; several minutes on a cold cache)"
    rm -rf "$cache"
    mkdir -p "$(dirname "$cache")"
    "$py" -m venv "$cache"
    "$cache/bin/python" -m pip install -q --upgrade pip
    "$cache/bin/python" -m pip install -q -r requirements/ci.txt
    "$cache/bin/python" -m pip install -q -e ".[hf,test,data]"
    touch "$cache/.complete"
  fi
  if [[ -L .venv || ! -e .venv ]]; then
    ln -sfn "$cache" .venv
  fi
}

install_package() {
  echo "== installing megatron-scir (editable) into $(readlink -f .venv)"
  .venv/bin/python -m pip install -q --no-deps -e ".[hf,test,data]"
  .venv/bin/python -c "import torch, megatron.core; print('torch', torch.__version__, '| megatron-core', megatron.core.__version__)"
}
