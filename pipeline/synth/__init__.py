"""Synthetic datasets in the real on-disk layouts (one module per layout), built from a FLAME-format
model with :mod:`p3dmm.pipeline.synth.scans`. Each writer also stores ground truth under ``_truth/``;
:func:`p3dmm.pipeline.datasets.write_synthetic` picks the writer of a dataset by name."""
