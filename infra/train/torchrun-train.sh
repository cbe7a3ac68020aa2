#!/usr/bin/env bash
# Training with torchrun: one process per GPU, any number of nodes. Run it on every node:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 infra/train/torchrun-train.sh --config configs/train.yaml --data.shards /data/shards
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 infra/train/torchrun-train.sh --config configs/train.yaml --data.shards /data/shards
# One node: infra/train/torchrun-train.sh --config configs/train.yaml (NPROC defaults to the GPU count).
set -euo pipefail
cd "$(dirname "$0")/../.."
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC=${NPROC:-$(.venv/bin/python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# the launcher's settings come after "$@": a --config there would otherwise reset them
exec .venv/bin/python -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --nproc_per_node "$NPROC" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m p3dmm train fit "$@" --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC" --trainer.strategy ddp
