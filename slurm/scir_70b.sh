#!/usr/bin/env bash
# Self-rewarding SCIR iterations of Llama-3.x-70B in FP8 on 4 nodes x 8 GPUs (H100/H200 80 GB+).
#
#   sbatch slurm/scir_70b.sh data.prompts=prompts.jsonl checkpoint.load=ckpt/llama3_70b \
#       iteration.num_iterations=2 scir.beta=0.05
#   sbatch --nodes=8 slurm/scir_70b.sh ...       # DP 2: half the optimizer state per GPU
#
# Everything after the script name goes to `scir iterate` (overrides; --config/--hf-dir).
# Layout (TP 8 + SP, PP 4, FP8, distributed optimizer): `scir plan --config llama3_70b_fp8
# --nodes 4`, docs/slurm.md. Environment knobs: slurm/launch.sh.
#SBATCH --job-name=scir-70b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@600
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# --signal: 10 minutes before the time limit every task gets SIGUSR1, finishes its training step
# or generation chunk, saves, and exits 75; launch.sh then requeues the job (--requeue allows it).
export SCIR_CONFIG=${SCIR_CONFIG:-llama3_70b_fp8}
source "${SCIR_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh"
