#!/usr/bin/env bash
# Start a Ray cluster over a SLURM allocation, then run one p3dmm Ray stage on it.
#   sbatch -N 4 --cpus-per-task=32 infra/ray/slurm-ray.sh p3dmm register --source nphm --root /data/nphm \
#          --flame /data/FLAME2020 --out /data/registered
#SBATCH --job-name=p3dmm-ray
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source .venv/bin/activate

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
port=6379
cpus=${SLURM_CPUS_PER_TASK:-$(nproc)}

srun --nodes=1 --ntasks=1 -w "$head" ray start --head --port=$port --num-cpus="$cpus" --block &
sleep 10
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" ray start --address="$head:$port" --num-cpus="$cpus" --block &
done
sleep 10

# The stage connects to the running cluster; a rerun of the same command resumes from its manifest.
"$@" --address "$head:$port"
