#!/usr/bin/env bash
# The README's first command: the CPU study, SCIR vs SRLM (vs oracle-label DPO) in miniature.
#
#   bash scripts/demo.sh [--full] [--out runs/demo] [a.b=c ...]     (arguments go to scir demo)
#
# Sets up .venv exactly as scripts/test.sh does (scripts/_venv.sh), then runs `scir demo`:
# about 5 minutes on 2 CPU cores; tables per iteration, then runs/demo/results.{md,png,jsonl}.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
install_package
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
exec .venv/bin/scir demo "$@"
