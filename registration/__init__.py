"""Pure functions that register one raw scan to FLAME topology (no Ray here). Filled by the
registration issue."""
