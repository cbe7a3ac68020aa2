"""Shared by every stage: the FLAME model and its official files, geometry, cameras and renderers.

Public API (imported lazily, so `p3dmm --help` never pays for torch):

    from p3dmm.flame import load_flame
    flame = load_flame("path/to/FLAME2020")          # folder or generic_model.pkl
    out = flame(shape=..., expression=..., pose=..., translation=...)
    out.vertices  # (B, V, 3) metres;  out.landmarks  # (B, 68, 3)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_flame": "p3dmm.flame.model",
    "FLAME": "p3dmm.flame.model",
    "FlameOutput": "p3dmm.flame.model",
    "load_assets": "p3dmm.flame.files",
    "resolve_flame_dir": "p3dmm.flame.files",
    "FlameAssets": "p3dmm.flame.assets",
    "FlameModelData": "p3dmm.flame.assets",
    "FlameFileError": "p3dmm.flame.assets",
    "Cameras": "p3dmm.flame.cameras",
    "load_mesh": "p3dmm.flame.mesh",
    "save_mesh": "p3dmm.flame.mesh",
    "mirror_map": "p3dmm.flame.mirror",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'p3dmm.flame' has no attribute {name!r}")
