#!/usr/bin/env bash
# The README's test command: build (or reuse) the Python 3.12 venv, install the package, run the suite.
#
#   bash scripts/test.sh [pytest args...]
#
# The venv: scripts/_venv.sh (cached outside the clone, keyed by the pins; SCIR_VENV_CACHE,
# SCIR_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv
install_package

echo "== ruff"
.venv/bin/ruff check .
echo "== lint-imports (the layering contract in pyproject.toml)"
.venv/bin/lint-imports --no-cache
echo "== pytest"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "scripts/test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $status
