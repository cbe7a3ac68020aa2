#!/usr/bin/env bash
# Multi-node training on SLURM: one task per GPU on every node; Lightning reads the SLURM environment
# (SLURM_PROCID, SLURM_NTASKS, ...) for ranks and the first node as the rendezvous.
#   sbatch -N 4 --gpus-per-node=8 infra/train/slurm-train.sh --config configs/train.yaml --data.shards /data/shards
#   resubmit with `--ckpt_path last` to resume (checkpoints in <default_root_dir>/checkpoints/)
#SBATCH --job-name=p3dmm-train
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source .venv/bin/activate
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
nodes=${SLURM_JOB_NUM_NODES:-1}
gpus=${SLURM_NTASKS_PER_NODE:-8}
# the launcher's settings come after "$@": a --config there would otherwise reset them
srun --kill-on-bad-exit=1 p3dmm train fit "$@" --trainer.num_nodes "$nodes" --trainer.devices "$gpus" \
    --trainer.strategy ddp
