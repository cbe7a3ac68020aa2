"""Pure functions that register one loaded raw scan to FLAME topology: initial similarity, FLAME fit,
non-rigid offsets, metrics and an accept/reject verdict. No files, no Ray (those are `pipeline.jobs`)."""
