#!/usr/bin/env bash
# Self-rewarding SCIR iterations of Mistral-7B on one node x 8 GPUs (bf16, TP 4 + SP, DP 2; `scir plan --config mistral_7b`).
#
#   sbatch slurm/scir_7b.sh data.prompts=prompts.jsonl --hf-dir /models/Mistral-7B-Instruct-v0.3
#
# Everything after the script name goes to `scir iterate` (overrides; --config/--hf-dir).
# Environment knobs: slurm/launch.sh; the runbook: docs/slurm.md.
#SBATCH --job-name=scir-7b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
export SCIR_CONFIG=${SCIR_CONFIG:-mistral_7b}
source "${SCIR_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh"
