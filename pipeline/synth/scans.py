"""Shared pieces of the synthetic scan datasets: random FLAME heads, detail, scanner-like meshes, clutter.

Adapters must be tested on the real on-disk contract (docs/datasets.md), without licensed data. Each
layout writer (:mod:`p3dmm.pipeline.synth`) builds a scan the same way and only differs in file
formats, units and frames:

1. :func:`sample_params` draws FLAME parameters, :func:`posed_truth` poses FLAME (metres, FLAME frame).
2. :func:`add_detail` adds smooth bumps FLAME cannot express; the displaced FLAME-topology vertices are
   the ground truth, and the scan is built from the same displaced surface, so they agree exactly.
3. :func:`dense_scan` gives the surface a different, denser topology with noise and holes, and drops the
   eyeballs (a scanner never sees them).
4. :func:`add_clutter` adds hair, torso and bridging triangles.
5. :func:`write_truth` stores the truth sidecar ``<out>/_truth/<id>.npz`` that only tests read.

Everything is deterministic for a given ``numpy.random.Generator`` state.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import trimesh

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.mesh import drop_unused_vertices, vertex_normals_np
from p3dmm.flame.model import FLAME

TRUTH_DIR = "_truth"
"""Folder under a synthetic dataset root holding the ground truth; adapters never read it."""


def sample_params(rng: np.random.Generator, n_shape: int, n_expression: int) -> dict[str, np.ndarray]:
    """Plausible random FLAME parameters, in units of each component's sigma and radians.

    Identity N(0, 1) on the first 50 components, expression N(0, 0.7) on the first 20, a small global
    and neck rotation, small eye rotations, and a jaw opened (0.1-0.35 rad) in about a third of the
    draws. Translation is a few millimetres.

    Returns:
        dict with ``shape`` (n_shape,), ``expression`` (n_expression,), ``pose`` (15,) axis-angle for
        [global, neck, jaw, left eye, right eye], ``translation`` (3,) metres; all float64.
    """
    shape = np.zeros(n_shape)
    k = min(50, n_shape)
    shape[:k] = rng.normal(0.0, 1.0, k)
    expression = np.zeros(n_expression)
    k = min(20, n_expression)
    expression[:k] = rng.normal(0.0, 0.7, k)
    pose = np.zeros((5, 3))
    pose[0] = rng.normal(0.0, 0.04, 3)
    pose[1] = rng.normal(0.0, 0.08, 3)
    jaw_open = rng.uniform(0.1, 0.35) if rng.random() < 0.35 else rng.uniform(0.0, 0.04)
    pose[2] = [jaw_open, rng.normal(0.0, 0.02), rng.normal(0.0, 0.02)]
    gaze = rng.normal(0.0, 0.08, 3)
    pose[3] = gaze
    pose[4] = gaze
    translation = rng.normal(0.0, 0.003, 3)
    return {"shape": shape, "expression": expression, "pose": pose.reshape(15), "translation": translation}


def posed_truth(assets: FlameAssets, params: dict[str, np.ndarray]) -> np.ndarray:
    """FLAME vertices for ``params`` (from :func:`sample_params`).

    Returns:
        (V, 3) float64, metres, FLAME frame (x = subject's left, y up, z out of the face).
    """
    n_shape, n_expr = len(params["shape"]), len(params["expression"])
    flame = FLAME(assets, n_shape=n_shape, n_expression=n_expr, dtype=torch.float64)
    with torch.no_grad():
        out = flame(
            shape=torch.as_tensor(params["shape"], dtype=torch.float64)[None],
            expression=torch.as_tensor(params["expression"], dtype=torch.float64)[None],
            pose=torch.as_tensor(params["pose"], dtype=torch.float64)[None],
            translation=torch.as_tensor(params["translation"], dtype=torch.float64)[None],
        )
    return out.vertices[0].numpy().astype(np.float64)


def add_detail(
    vertices: np.ndarray,
    faces: np.ndarray,
    rng: np.random.Generator,
    *,
    n_bumps: int = 40,
    amplitude_m: tuple[float, float] = (0.3e-3, 1.0e-3),
    radius_m: tuple[float, float] = (0.008, 0.02),
) -> np.ndarray:
    """Smooth bumps along the normals: identity detail (wrinkles, moles) that FLAME cannot express.

    Each bump is a Gaussian of random sign, amplitude and radius centred on a random vertex. The
    displaced FLAME-topology vertices are the ground truth; build the scan from them too.

    Args:
        vertices: (V, 3) float64 metres. faces: (F, 3) int64.

    Returns:
        (V, 3) float64 displaced vertices, metres.
    """
    normals = vertex_normals_np(vertices, faces)
    used = np.unique(faces)
    centres = vertices[rng.choice(used, size=n_bumps)]
    amp = rng.uniform(*amplitude_m, n_bumps) * rng.choice([-1.0, 1.0], n_bumps)
    rad = rng.uniform(*radius_m, n_bumps)
    d2 = ((vertices[:, None, :] - centres[None]) ** 2).sum(-1)  # (V, n_bumps)
    height = (amp[None] * np.exp(-0.5 * d2 / rad[None] ** 2)).sum(1)
    return vertices + normals * height[:, None]


def subdivide_until(
    vertices: np.ndarray, faces: np.ndarray, target_faces: int
) -> tuple[np.ndarray, np.ndarray]:
    """Loop-free midpoint subdivision (each step x4 faces) until at least ``target_faces`` faces.

    New vertices lie on the flat triangles, so the surface (and the ground truth) is unchanged.
    """
    while len(faces) < target_faces:
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    return np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)


def dense_scan(
    vertices: np.ndarray,
    faces: np.ndarray,
    target_faces: int,
    rng: np.random.Generator,
    *,
    exclude_vertices: np.ndarray | None = None,
    noise_m: float = 0.2e-3,
    n_holes: int = 3,
    hole_radius_m: tuple[float, float] = (0.005, 0.012),
) -> tuple[np.ndarray, np.ndarray]:
    """A scanner-like mesh of the surface: denser, different topology, noisy, with holes.

    Faces touching ``exclude_vertices`` (eyeballs, mouth interior) are dropped first, then the mesh
    is subdivided to at least ``target_faces`` faces, every vertex moves by Gaussian noise of
    ``noise_m`` (metres, 3D), ``n_holes`` round patches are cut out, and vertices are shuffled so
    no index matches FLAME's.

    Args:
        vertices: (V, 3) float64 metres (the detailed truth). faces: (F, 3) int64.

    Returns:
        (P, 3) float64 metres and (F', 3) int64 faces, no unused vertices.
    """
    faces = np.asarray(faces, dtype=np.int64)
    if exclude_vertices is not None and len(exclude_vertices):
        bad = np.zeros(len(vertices), dtype=bool)
        bad[exclude_vertices] = True
        faces = faces[~bad[faces].any(axis=1)]
    verts, faces = drop_unused_vertices(vertices, faces)
    verts, faces = subdivide_until(verts, faces, target_faces)
    verts = verts + rng.normal(0.0, noise_m / np.sqrt(3.0), verts.shape)
    if n_holes:
        centres = verts[rng.choice(len(verts), size=n_holes, replace=False)]
        radii = rng.uniform(*hole_radius_m, n_holes)
        centroid = verts[faces].mean(axis=1)
        cut = (np.linalg.norm(centroid[:, None] - centres[None], axis=-1) < radii[None]).any(axis=1)
        faces = faces[~cut]
    verts, faces = drop_unused_vertices(verts, faces)
    perm = rng.permutation(len(verts))
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return verts[perm], inverse[faces]


def _grid_faces(rows: int, cols: int, wrap: bool) -> np.ndarray:
    """Triangles of a rows x cols vertex grid (row-major), optionally closed along the columns."""
    out = []
    last = cols if wrap else cols - 1
    for r in range(rows - 1):
        for c in range(last):
            a, b = r * cols + c, r * cols + (c + 1) % cols
            d, e = a + cols, b + cols
            out += [(a, d, b), (b, d, e)]
    return np.asarray(out, dtype=np.int64)


def _torso(
    neck_bottom: np.ndarray, rng: np.random.Generator, n_around: int = 48
) -> tuple[np.ndarray, np.ndarray]:
    """Shoulders and chest: an elliptic tube widening from the neck base down 25-30 cm."""
    heights = np.linspace(0.0, -rng.uniform(0.25, 0.3), 12)
    width = 0.06 + 0.14 * np.clip(-heights / 0.08, 0.0, 1.0) ** 0.6
    depth = 0.055 + 0.05 * np.clip(-heights / 0.08, 0.0, 1.0)
    angle = np.linspace(0.0, 2 * np.pi, n_around, endpoint=False)
    x = width[:, None] * np.sin(angle)[None]
    z = depth[:, None] * np.cos(angle)[None]
    y = np.broadcast_to(heights[:, None], x.shape)
    verts = np.stack([x, y, z], axis=-1).reshape(-1, 3) + neck_bottom
    return verts, _grid_faces(len(heights), n_around, wrap=True)


def add_clutter(
    scan_vertices: np.ndarray,
    scan_faces: np.ndarray,
    truth_vertices: np.ndarray,
    truth_faces: np.ndarray,
    masks: dict[str, np.ndarray],
    rng: np.random.Generator,
    *,
    hair: bool = True,
    torso: bool = True,
    n_bridges: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """What a real head scan has besides the head: hair over the scalp, torso, fusion bridges.

    Hair is the FLAME scalp region pushed out 5-25 mm along the normals (a random, smooth thickness,
    so every call gives another hairstyle), subdivided once. The torso is a tube from the neck base
    (the lowest truth vertices) down ~30 cm. Bridges are large triangles between random far-apart
    scan vertices, as watertight fusion leaves over unobserved areas.

    Args:
        scan_vertices, scan_faces: the head scan (metres, FLAME frame), e.g. from :func:`dense_scan`.
        truth_vertices, truth_faces: FLAME-topology truth (metres) giving the scalp and neck.
        masks: FLAME region masks (``scalp`` is used; absent means no hair).

    Returns:
        (P, 3) float64 and (F, 3) int64: the scan with the clutter appended (scan vertices first).
    """
    parts_v = [np.asarray(scan_vertices, dtype=np.float64)]
    parts_f = [np.asarray(scan_faces, dtype=np.int64)]
    count = len(scan_vertices)
    if hair and "scalp" in masks and len(masks["scalp"]):
        in_scalp = np.zeros(len(truth_vertices), dtype=bool)
        in_scalp[masks["scalp"]] = True
        hair_faces = truth_faces[in_scalp[truth_faces].all(axis=1)]
        if len(hair_faces):
            normals = vertex_normals_np(truth_vertices, truth_faces)
            wave = rng.normal(size=3)
            thickness = 0.015 + 0.01 * np.tanh(truth_vertices @ wave / 0.05)
            lifted = truth_vertices + normals * thickness[:, None]
            hv, hf = drop_unused_vertices(lifted, hair_faces)
            hv, hf = trimesh.remesh.subdivide(hv, hf)
            parts_v.append(np.asarray(hv))
            parts_f.append(np.asarray(hf) + count)
            count += len(hv)
    if torso:
        bottom_y = truth_vertices[:, 1].min()
        low = truth_vertices[truth_vertices[:, 1] < bottom_y + 0.01]
        base = np.array([low[:, 0].mean(), bottom_y - 0.005, low[:, 2].mean()])
        tv, tf = _torso(base, rng)
        parts_v.append(tv)
        parts_f.append(tf + count)
        count += len(tv)
    verts = np.concatenate(parts_v)
    faces = np.concatenate(parts_f)
    if n_bridges:
        picks = rng.choice(len(verts), size=(n_bridges, 3))
        faces = np.concatenate([faces, picks.astype(np.int64)])
    return verts, faces


def truth_path(out_root: str | os.PathLike, scan_id: str) -> Path:
    """``<out_root>/_truth/<scan_id with '/' replaced by '__'>.npz``."""
    return Path(out_root) / TRUTH_DIR / (scan_id.replace("/", "__") + ".npz")


def write_truth(
    out_root: str | os.PathLike,
    scan_id: str,
    truth_vertices: np.ndarray,
    metres_per_unit: float,
    params: dict[str, np.ndarray],
    landmarks: np.ndarray | None = None,
) -> Path:
    """Store the ground truth of one synthetic scan (tests read it; adapters never do).

    Args:
        truth_vertices: (V, 3) FLAME-topology vertices in the frame and units the adapter's
            ScanGeometry will have (adapter metres; these are true metres times 1/metres_per_unit).
        metres_per_unit: true metres per unit of ``truth_vertices`` (1.0 unless the dataset rescales,
            e.g. FaceScape's inter-pupil normalisation).
        params: FLAME parameters from :func:`sample_params`.
        landmarks: optional (68, 3) truth landmarks, same frame and units.

    Keys: vertices, metres_per_unit, shape, expression, pose, translation, scan_id (+ landmarks).
    """
    path = truth_path(out_root, scan_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "vertices": np.asarray(truth_vertices, dtype=np.float64),
        "metres_per_unit": np.float64(metres_per_unit),
        "shape": np.asarray(params["shape"], dtype=np.float64),
        "expression": np.asarray(params["expression"], dtype=np.float64),
        "pose": np.asarray(params["pose"], dtype=np.float64),
        "translation": np.asarray(params["translation"], dtype=np.float64),
        "scan_id": np.str_(scan_id),
    }
    if landmarks is not None:
        arrays["landmarks"] = np.asarray(landmarks, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())
    return path


def read_truth(out_root: str | os.PathLike, scan_id: str) -> dict[str, np.ndarray]:
    """The sidecar written by :func:`write_truth`, as a dict of arrays (for tests and benchmarks)."""
    with np.load(truth_path(out_root, scan_id), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def save_png(path: str | os.PathLike, image: np.ndarray, fmt: str = "PNG") -> None:
    """Atomic image write; uint16 (H, W) becomes a 16-bit grey PNG, uint8 (H, W, 3) an RGB image."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image.astype("<u2") if image.dtype == np.uint16 else image))
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt)
    atomic_write(path, buffer.getvalue())


def skin_colors(assets: FlameAssets, vertices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(V, 3) float albedo in [0, 1]: a skin tone with smooth blotches, reddish lips, white eyeballs,
    so photos have texture for multi-view methods and lips/eyes stand out."""
    tone = np.array([0.82, 0.62, 0.50]) * rng.uniform(0.85, 1.1)
    phase = rng.uniform(0, 2 * np.pi, 3)
    blotch = sum(np.sin(vertices[:, i] * 90.0 + phase[i]) for i in range(3)) / 3.0
    colors = np.clip(tone[None] * (1.0 + 0.12 * blotch[:, None]), 0.0, 1.0)
    masks = assets.masks
    if "lips" in masks:
        colors[masks["lips"]] = (0.72, 0.36, 0.36)
    for key in ("left_eyeball", "right_eyeball"):
        if key in masks:
            colors[masks[key]] = (0.92, 0.92, 0.90)
    return colors


HAIR_COLORS = ((0.10, 0.07, 0.05), (0.25, 0.16, 0.09), (0.55, 0.42, 0.25), (0.45, 0.20, 0.10), (0.03, 0.03, 0.03))


def scan_albedo(assets: FlameAssets, truth: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(P, 3) albedo in [0, 1] for scan points: skin (with darker brows, reddish lips) where the point lies
    on the truth head, hair colour on the hair shell above it, a clothing colour on the torso below."""
    from scipy.spatial import cKDTree

    skin = skin_colors(assets, truth, rng)
    if assets.landmarks is not None:
        brows = frontal_landmarks(assets, truth)[17:27]
        d_brow, _ = cKDTree(brows).query(truth)
        skin[d_brow < 0.007] *= 0.55
    _, nearest = cKDTree(truth).query(points)
    colors = skin[nearest]
    mesh = trimesh.Trimesh(truth, assets.model.faces, process=False)
    _, distance, _ = trimesh.proximity.closest_point(mesh, points)
    clutter = distance > 0.004  # hair shell (5-25 mm out) and torso; the head surface itself is within noise
    below = points[:, 1] < truth[:, 1].min() + 0.005
    colors[clutter & ~below] = HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))]
    colors[clutter & below] = rng.uniform(0.1, 0.8, 3)
    return colors


def bake_texture(face_uv: np.ndarray, faces: np.ndarray, colors: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 texture (OBJ convention, v up) whose texels take the colour of the nearest
    face corner in UV space: per-vertex colours turned into an image texture for the scan's own UVs."""
    from scipy.spatial import cKDTree

    corners = np.asarray(face_uv, np.float64).reshape(-1, 2)
    corner_colors = np.asarray(colors)[np.asarray(faces).reshape(-1)]
    centres = (np.arange(size) + 0.5) / size
    uu, vv = np.meshgrid(centres, 1.0 - centres)
    _, k = cKDTree(corners).query(np.stack([uu.ravel(), vv.ravel()], axis=1))
    return np.clip(np.rint(corner_colors[k] * 255), 0, 255).astype(np.uint8).reshape(size, size, 3)
