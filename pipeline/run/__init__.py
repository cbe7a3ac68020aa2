"""`p3dmm run`: the typed pipeline config and run-folder layout, the driver that calls each stage's library, and the run report."""
