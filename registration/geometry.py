"""Small numpy helpers on mesh connectivity shared by the registration steps (mesh boundary, edges).

Normals are not here: every stage uses :func:`p3dmm.flame.mesh.vertex_normals_np`.
"""

from __future__ import annotations

import numpy as np


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) sorted unique undirected edges of a triangle list (F, 3)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def boundary_vertices(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """(V,) bool: vertices on an edge used by exactly one face (lip seam, eye holes, neck opening)."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(e, axis=0, return_counts=True)
    out = np.zeros(num_vertices, dtype=bool)
    out[uniq[counts == 1].ravel()] = True
    return out
