"""Triangle-mesh file I/O and batched normals, shared by every stage.

Files are read with trimesh exactly as stored (no merging, no reordering: vertex ``i`` of the file is
row ``i`` of the array), because registration and FLAME correspondences index vertices by position.
Bad files raise :class:`MeshError` with a one-line message that starts with the path, so a batch
driver can record it and go on. Writes are atomic: a half-written mesh never appears under its name.

Normals are defined once, as torch functions batched first (B meshes sharing one topology), so the
fitting stage can differentiate through them on the GPU. Numpy callers (registration, synthetic scans,
the CPU ray caster) use the ``*_np`` adapters, which run the same torch code on one (V, 3) mesh. The
definition (docs/conventions.md): a face normal is (v1 - v0) x (v2 - v0), outward for faces that are
counter-clockwise seen from outside; a vertex normal is the normalised sum of its faces' unnormalised
normals (area weighting); normalisation is n / max(|n|, NORMAL_EPS).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import trimesh

from .atomic import atomic_write

MESH_SUFFIXES = (".ply", ".obj")
"""File types :func:`save_mesh` writes (chosen by suffix, case-insensitive)."""
NORMAL_EPS = 1e-12
"""Norm floor of every normalisation of normals, n / max(|n|, eps): vectors shorter than eps shrink to
length |n| / eps instead of becoming NaN (shared by vertex, face and per-pixel normals)."""


class MeshError(ValueError):
    """A mesh file is missing, unreadable or invalid. The message is one line and starts with the path."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def require_file(path: str | os.PathLike, error: type[ValueError] = MeshError) -> Path:
    """`path` as a Path when it is a non-empty regular file, else `error` naming it and the problem (the
    check every mesh and scan reader makes before handing a file to a parser)."""
    p = Path(path)
    if not p.exists():
        raise error(f"{path}: no such file")
    if not p.is_file():
        raise error(f"{path}: not a regular file")
    if p.stat().st_size == 0:
        raise error(f"{path}: empty file (0 bytes)")
    return p


def load_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle mesh as stored in the file (PLY, OBJ, or anything trimesh reads).

    Args:
        path: mesh file. Polygons are triangulated by trimesh; vertex order is the file's
            (``process=False``, OBJ ``maintain_order=True``).

    Returns:
        verts: (V, 3) float64, in the file's units and frame.
        faces: (F, 3) int64 indices into ``verts``.

    Raises:
        MeshError: missing file, empty file, unparsable or corrupt file, 0 vertices, 0 faces,
            non-finite coordinates, or face indices outside [0, V). The message starts with ``path``.
    """
    p = require_file(path)
    try:
        # trimesh.load, not load_mesh: load_mesh turns a faceless file into an empty mesh, hiding
        # whether vertices were read at all.
        mesh = trimesh.load(str(p), process=False, maintain_order=True)
        if isinstance(mesh, trimesh.Scene):  # several bodies (GLB, some OBJ): one mesh, transforms applied
            mesh = mesh.to_mesh() if mesh.geometry else None
    except Exception as err:  # trimesh raises many types for corrupt input; all mean "unreadable"
        raise MeshError(f"{path}: cannot read mesh ({type(err).__name__}: {_one_line(err)})") from err

    verts = getattr(mesh, "vertices", None)
    faces = getattr(mesh, "faces", None)
    verts = np.zeros((0, 3)) if verts is None else np.asarray(verts, dtype=np.float64)
    faces = np.zeros((0, 3), np.int64) if faces is None else np.asarray(faces, dtype=np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3 or len(verts) == 0:
        raise MeshError(f"{path}: 0 vertices (empty or truncated)")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise MeshError(f"{path}: 0 faces (empty or truncated)")
    bad = ~np.isfinite(verts).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise MeshError(
            f"{path}: {int(bad.sum())} of {len(verts)} vertices have non-finite coordinates "
            f"(first: vertex {first} = {verts[first].tolist()})"
        )
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= len(verts):
        raise MeshError(
            f"{path}: face indices out of range: min {lo}, max {hi}, but there are {len(verts)} vertices"
        )
    return np.ascontiguousarray(verts), np.ascontiguousarray(faces)


def save_mesh(
    path: str | os.PathLike,
    verts: np.ndarray,
    faces: np.ndarray,
    vertex_colors: np.ndarray | None = None,
) -> None:
    """Write a triangle mesh as binary PLY or OBJ (by suffix), atomically, keeping vertex order.

    Args:
        path: destination ending in .ply or .obj; its folder must exist.
        verts: (V, 3) float, any units (stored as float32 in PLY by trimesh: ~1e-7 relative).
        faces: (F, 3) int indices into ``verts``, counter-clockwise seen from outside.
        vertex_colors: optional (V, 3) or (V, 4); float in [0, 1] or uint8 in [0, 255].

    Raises:
        ValueError: unknown suffix, bad shapes, non-finite vertices or faces out of range.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"save_mesh: {path}: unsupported suffix {suffix!r}; use one of {MESH_SUFFIXES}")
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"save_mesh: {path}: verts must be (V, 3), got {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"save_mesh: {path}: faces must be integer (F, 3), got {faces.dtype} {faces.shape}")
    if not np.isfinite(verts).all():
        raise ValueError(f"save_mesh: {path}: verts contain NaN or inf")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(verts)):
        raise ValueError(f"save_mesh: {path}: face indices must lie in [0, {len(verts)})")
    colors = None
    if vertex_colors is not None:
        colors = np.asarray(vertex_colors)
        if colors.ndim != 2 or colors.shape[0] != len(verts) or colors.shape[1] not in (3, 4):
            raise ValueError(
                f"save_mesh: {path}: vertex_colors must be ({len(verts)}, 3 or 4), got {colors.shape}"
            )
        if colors.dtype != np.uint8:
            colors = np.clip(np.rint(np.asarray(colors, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    mesh = trimesh.Trimesh(
        vertices=verts, faces=faces.astype(np.int64), vertex_colors=colors, process=False, validate=False
    )
    data = mesh.export(file_type=suffix[1:])
    atomic_write(path, data.encode("utf-8") if isinstance(data, str) else data)


def drop_unused_vertices(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mesh without the vertices no face uses: (V', 3) kept vertices in their order, (F, 3) faces renumbered."""
    used = np.unique(faces)
    remap = np.full(len(verts), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


def _check_normals_inputs(name: str, verts: torch.Tensor, faces: torch.Tensor) -> None:
    if not torch.is_tensor(verts) or verts.ndim != 3 or verts.shape[-1] != 3:
        got = tuple(verts.shape) if torch.is_tensor(verts) else type(verts).__name__
        raise ValueError(f"{name}: verts must be a (B, V, 3) tensor, got {got}; add a batch dim with [None]")
    if not torch.is_tensor(faces) or faces.ndim != 2 or faces.shape[-1] != 3 or faces.is_floating_point():
        got = tuple(faces.shape) if torch.is_tensor(faces) else type(faces).__name__
        raise ValueError(f"{name}: faces must be an integer (F, 3) tensor shared by the batch, got {got}")


def _face_cross(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, F, 3) cross product (v1 - v0) x (v2 - v0): outward normal times twice the face area."""
    v0, v1, v2 = (verts[:, faces[:, k]] for k in range(3))
    return torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit normals of each face, (v1 - v0) x (v2 - v0) normalised (outward for CCW faces).

    Args:
        verts: (B, V, 3) float, any frame.
        faces: (F, 3) int64, shared by the batch.

    Returns:
        (B, F, 3) unit vectors in the frame of ``verts``; degenerate faces (|cross| < 1e-12 in
        squared vertex units) get a shorter or zero vector, never NaN.
    """
    _check_normals_inputs("face_normals", verts, faces)
    return torch.nn.functional.normalize(_face_cross(verts, faces.long()), dim=-1, eps=NORMAL_EPS)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals: the normalised sum of the unnormalised normals of adjacent faces.

    Weighting by area makes large faces dominate, which is what a smooth surface sampled by an
    irregular triangulation (a scan, FLAME) needs; it is also differentiable everywhere except at
    zero-sum vertices.

    Args:
        verts: (B, V, 3) float, any frame.
        faces: (F, 3) int64, shared by the batch.

    Returns:
        (B, V, 3) unit vectors; zero (never NaN) for isolated vertices, and shorter than unit for
        vertices whose adjacent faces are degenerate or cancel out (summed |cross| < 1e-12).
    """
    _check_normals_inputs("vertex_normals", verts, faces)
    faces = faces.long()
    cross = _face_cross(verts, faces)  # (B, F, 3), |cross| = 2 * area
    acc = torch.zeros_like(verts)
    for k in range(3):
        acc = acc.index_add(1, faces[:, k], cross)
    return torch.nn.functional.normalize(acc, dim=-1, eps=NORMAL_EPS)


def _one_mesh(verts: np.ndarray, faces: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, V, 3) and (F, 3) int64 tensors sharing memory with a numpy mesh (copied if read-only, strided
    or of another integer type: torch.from_numpy warns on read-only arrays)."""
    verts, faces = np.require(verts, None, ["C", "W"]), np.require(faces, np.int64, ["C", "W"])
    return torch.from_numpy(verts)[None], torch.from_numpy(faces)


def face_normals_np(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """:func:`face_normals` of one numpy mesh: verts (V, 3) float, faces (F, 3) int -> (F, 3), verts' dtype."""
    return face_normals(*_one_mesh(verts, faces))[0].numpy()


def vertex_normals_np(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """:func:`vertex_normals` of one numpy mesh: verts (V, 3) float, faces (F, 3) int -> (V, 3), verts' dtype.

    Zero for vertices no face uses (callers test ``|n| > 0.5`` to drop them).
    """
    return vertex_normals(*_one_mesh(verts, faces))[0].numpy()
