"""Data in and out of the stages, in the order data flows: synthetic datasets (`synth`), the registration
file (`registered`), target rendering (`render`), the shard format (`shards`), dataset readers
(`datasets`), then orchestration: Ray jobs (`jobs`), registration reports (`report`) and the
whole-pipeline driver (`run`). See docs/architecture.md."""
