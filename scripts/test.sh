#!/usr/bin/env bash
# The README's test command: build (or reuse) the Python 3.12 venv, install the package, run the suite.
#
#   bash scripts/test.sh [pytest args...]
#
# The venv: scripts/_venv.sh (cached outside the clone, keyed by the pins; SCIR_VENV_CACHE,
# SCIR_PYTHON). Debian's Slurm and munge for tests/slurm (a real two-node cluster on this
# machine): installed here when missing (as root or through sudo); SCIR_NO_SLURM=1 skips both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh

SLURM_PACKAGES=(slurmctld slurmd slurm-client munge)
ensure_slurm() {
  [[ "${SCIR_NO_SLURM:-0}" == 1 ]] && return
  if [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] \
      && command -v sbatch >/dev/null; then
    return
  fi
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if ! sudo -n true 2>/dev/null; then
      echo "scripts/test.sh: tests/slurm needs ${SLURM_PACKAGES[*]} (apt-get as root);" \
           "install them or set SCIR_NO_SLURM=1" >&2
      exit 1
    fi
    sudo=(sudo -n)
  fi
  echo "== installing ${SLURM_PACKAGES[*]} (Debian) for tests/slurm"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${SLURM_PACKAGES[@]}" \
      >/dev/null; then
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${SLURM_PACKAGES[@]}" >/dev/null
  fi
}

ensure_slurm
ensure_venv
install_package

echo "== ruff"
.venv/bin/ruff check .
echo "== lint-imports (the layering contract in pyproject.toml)"
.venv/bin/lint-imports --no-cache
tmp=${TMPDIR:-/tmp}
echo "== pytest (free in $tmp: $(df -h --output=avail "$tmp" | tail -1 | tr -d ' '); the suite needs a few GB there)"
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "scripts/test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $status
