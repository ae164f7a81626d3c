#!/usr/bin/env bash
# Every GPU check in one command, one table back: docs/gpu.md.
#
#   bash scripts/gpu_check.sh --dry-run          # the plan (no GPU, no torch); also --check-only
#   bash scripts/gpu_check.sh prepare            # here, with network: build/gpu_carry/ + the calls
#   bash scripts/gpu_check.sh --stage            # on the GPU: install, stage carried parts, probe
#   bash scripts/gpu_check.sh [--only smollm2,ties,step,generation,te,multi_gpu] [--deadline S]
#
# Writes $OUT/gpu_check.md, gpu_check.json and gpu_check.log (runs/gpu_check/ when OUT is
# unset). Exit status: 0 when every check that ran passed, 1 otherwise, 2 on a usage error.
# The interpreter: $PYTHON, else this clone's .venv when it runs, else python3 (the GPU image's,
# which holds torch and transformers; megatron-core comes from the carried wheels).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
  py=$PYTHON
elif [[ -x .venv/bin/python ]] && .venv/bin/python -c '' 2>/dev/null; then
  py=.venv/bin/python
else
  py=python3
fi
export PYTHONUNBUFFERED=1

if [[ "${1:-}" == prepare ]]; then
  shift
  exec "$py" scripts/gpu_check.py prepare "$@"
fi
exec "$py" scripts/gpu_check.py run "$@"
