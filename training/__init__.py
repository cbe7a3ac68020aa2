"""DINOv2 normal/UV prior networks: shard data, the network, the Lightning module and CLI (DDP, wandb),
and the export of the small inference file that fitting reads."""
