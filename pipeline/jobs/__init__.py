"""Ray jobs: the fault-triaging task runner and its manifest, and the registration, shard rendering and fitting jobs built on it."""
