"""Dataset adapters (NPHM, FaceScape, Ava256, generic folders) and the Ray orchestration of
registration and shard rendering. Filled by the registration and shards issues."""
