"""Small numpy geometry helpers shared by the registration steps (normals, mesh boundary, edges)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals. vertices: (V, 3); faces: (F, 3) CCW seen from outside -> (V, 3).

    Vertices no face uses get a zero normal.
    """
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(out, faces[:, k], fn)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norm, 1e-30)


def point_cloud_normals(points: np.ndarray, k: int = 12) -> np.ndarray:
    """Unoriented normals of a point cloud (P, 3) from the PCA of k neighbours -> (P, 3), oriented away
    from the centroid (a guess: callers treat them as unoriented and compare with |dot|)."""
    _, idx = cKDTree(points).query(points, k=min(k, len(points)))
    nb = points[idx] - points[idx].mean(axis=1, keepdims=True)
    cov = np.einsum("pki,pkj->pij", nb, nb)
    _, vecs = np.linalg.eigh(cov)
    n = vecs[:, :, 0]
    flip = np.einsum("pi,pi->p", n, points - points.mean(axis=0)) < 0
    n[flip] *= -1
    return n


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
