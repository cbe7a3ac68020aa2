"""DINOv2 normal/UV prior networks and their Lightning DDP training. Filled by the training issue."""
