#!/usr/bin/env bash
# The shared launcher of slurm/scir_*.sh: environment and srun only. Every decision about the run
# (which stage to continue, what a checkpoint holds) is made by `scir iterate` in Python.
#
# Sourced by a batch script inside the allocation, with SCIR_CONFIG set and the batch script's
# arguments as "$@": they are passed to `scir iterate` as they are: options first (--config
# PRESET_OR_YAML replaces SCIR_CONFIG, --hf-dir DIR), then a.b=c overrides. The run directory is
# SCIR_RUN_DIR (it is passed last, as iteration.run_dir).
#
# Environment (each optional):
#   SCIR_HOME             the megatron-scir checkout (default: the directory sbatch ran in)
#   SCIR_RUN_DIR          iteration.run_dir (default: $SCIR_HOME/runs/<job name>-<job id>; a
#                         requeued job keeps its id, so it continues in the same directory)
#   SCIR_LOG_DIR          srun's logs, one file per attempt (default: $SCIR_RUN_DIR/logs)
#   SCIR_PYTHON_BIN       the interpreter (default: $SCIR_HOME/.venv/bin/python outside a
#                         container when it exists, else python3)
#   SCIR_CONTAINER_IMAGE  run every task in this pyxis/enroot image (e.g. nvcr.io#nvidia/pytorch:..)
#   SCIR_CONTAINER_MOUNTS pyxis --container-mounts (default: $SCIR_HOME and the run directory)
#   SCIR_SRUN_ARGS        more srun options, word-split (e.g. "--cpu-bind=none")
#   MASTER_ADDR/PORT      the rendezvous (default: the first node of the allocation, as Slurm
#                         reaches it, and a port derived from the job id)
set -euo pipefail

: "${SLURM_JOB_ID:?slurm/launch.sh runs inside a Slurm allocation: sbatch slurm/scir_70b.sh ...}"
: "${SCIR_CONFIG:?the batch script sets SCIR_CONFIG}"

SCIR_HOME=${SCIR_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
SCIR_RUN_DIR=${SCIR_RUN_DIR:-$SCIR_HOME/runs/${SLURM_JOB_NAME:-scir}-$SLURM_JOB_ID}
SCIR_LOG_DIR=${SCIR_LOG_DIR:-$SCIR_RUN_DIR/logs}
ATTEMPT=${SLURM_RESTART_COUNT:-0}
mkdir -p "$SCIR_RUN_DIR" "$SCIR_LOG_DIR"

# --- rendezvous: every task joins the process group on the allocation's first node. The address
# is the one Slurm itself uses for that node (NodeAddr), so it works where node names do not
# resolve; the port is spread by job id so two jobs sharing a node do not collide.
FIRST_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
NODE_ADDR=$(scontrol show node "$FIRST_NODE" -o | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
export MASTER_ADDR=${MASTER_ADDR:-${NODE_ADDR:-$FIRST_NODE}}
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}

# --- NCCL (inter-GPU communication)
# Fail a hung or failed collective with an error instead of waiting forever.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# Do not keep tensors alive through recordStream with overlapped grad reduce/param gather.
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
# WARN by default; NCCL_DEBUG=INFO prints the chosen interfaces and transports (IB/NVLink/socket).
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# InfiniBand retry timeout (4.096 us * 2^N): 22 rides out fabric hiccups on large jobs.
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
# Set NCCL_SOCKET_IFNAME (bootstrap interface, e.g. ib0 or ^lo,docker) when NCCL picks a wrong
# one: the first thing to check when a multi-node job hangs at start-up (docs/slurm.md).

# --- CUDA, Transformer Engine
# One hardware work queue: Megatron's TP/SP communication overlap relies on kernel order.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
# Leave SMs to the overlapped TP communication kernels during TE's layer norms.
export NVTE_FWD_LAYERNORM_SM_MARGIN=${NVTE_FWD_LAYERNORM_SM_MARGIN:-16}
export NVTE_BWD_LAYERNORM_SM_MARGIN=${NVTE_BWD_LAYERNORM_SM_MARGIN:-16}
# cuDNN fused attention (TE's default backend on Hopper) and flash attention where installed.
export NVTE_FUSED_ATTN=${NVTE_FUSED_ATTN:-1}
# Fewer fragmentation OOMs between the generation and training stages of one process.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
# One CPU thread per rank for OpenMP; data loading and tokenization are not the bottleneck.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1

# --- the command
SRUN=(srun --kill-on-bad-exit=1 --label --output "$SCIR_LOG_DIR/attempt-$ATTEMPT.log")
if [[ -n "${SCIR_CONTAINER_IMAGE:-}" ]]; then
  SRUN+=(--container-image="$SCIR_CONTAINER_IMAGE"
         --container-mounts="${SCIR_CONTAINER_MOUNTS:-$SCIR_HOME:$SCIR_HOME,$SCIR_RUN_DIR:$SCIR_RUN_DIR}"
         --container-workdir="$SCIR_HOME" --no-container-mount-home)
  PYTHON=${SCIR_PYTHON_BIN:-python3}
elif [[ -x "$SCIR_HOME/.venv/bin/python" ]]; then
  PYTHON=${SCIR_PYTHON_BIN:-$SCIR_HOME/.venv/bin/python}
else
  PYTHON=${SCIR_PYTHON_BIN:-python3}
fi
# shellcheck disable=SC2206  # word-split on purpose
SRUN+=(${SCIR_SRUN_ARGS:-})

echo "scir: job $SLURM_JOB_ID attempt $ATTEMPT on $SLURM_JOB_NUM_NODES node(s) x" \
     "${SLURM_NTASKS_PER_NODE:-?} task(s); rendezvous $MASTER_ADDR:$MASTER_PORT"
echo "scir: run dir $SCIR_RUN_DIR; log $SCIR_LOG_DIR/attempt-$ATTEMPT.log"
set +e
(cd "$SCIR_HOME" && "${SRUN[@]}" "$PYTHON" -m megatron_scir.cli iterate --config "$SCIR_CONFIG" \
  "$@" iteration.run_dir="$SCIR_RUN_DIR")
status=$?
set -e

# 75: `scir iterate` saved and stopped on SIGUSR1 (time limit near, --signal) or SIGTERM
# (preemption), and wrote preempted.json (read too: once one rank exits, --kill-on-bad-exit
# kills the others in their teardown and the step's status is theirs). Put the job back in the
# queue; the requeued job reruns this script with the same arguments and job id, and
# `scir iterate` continues at the first unfinished stage.
if [[ $status -eq 75 || -f "$SCIR_RUN_DIR/preempted.json" ]]; then
  echo "scir: stopped by a signal after saving; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
fi
echo "scir: scir iterate exited with $status"
exit "$status"
