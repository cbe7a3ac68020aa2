"""One adapter per dataset layout; each yields :class:`ScanRecord` and loads :class:`ScanGeometry`."""

from __future__ import annotations

import importlib

SOURCES = {
    "nphm": "p3dmm.pipeline.datasets.nphm",
    "facescape": "p3dmm.pipeline.datasets.facescape",
    "facescape-mview": "p3dmm.pipeline.datasets.facescape_mview",
    "ava256": "p3dmm.pipeline.datasets.ava256",
    "generic": "p3dmm.pipeline.datasets.generic",
}


def adapter(source: str):
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return importlib.import_module(SOURCES[source])


