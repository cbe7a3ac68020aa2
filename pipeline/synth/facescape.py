"""FaceScape TU layout: ``<id>/models_reg/<k>_<name>.obj`` (+ .obj.mtl, .jpg) and ``<id>/dpmap/<k>_<name>.png``.

TU models are registered meshes in one shared topology (here: FLAME without eyeballs, subdivided and
shuffled, with UV seams), stored in mm with the scale normalised so that every subject has the same
inter-pupil distance (``IPD_MM``), plus a per-subject offset: not true size, so the truth sidecar
stores ``metres_per_unit``. A landmark index file (``landmark_indices.npz``, key ``v10``) at the root
gives 68 vertex indices into the OBJ ``v`` order, as the toolkit's ``predef`` file does.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.similarity import Similarity
from p3dmm.pipeline.synth import scans as ss
from p3dmm.pipeline.synth import stress as st

EXPRESSIONS = (
    "neutral smile mouth_stretch anger jaw_left jaw_right jaw_forward mouth_left mouth_right dimpler "
    "chin_raiser lip_puckerer lip_funneler sadness lip_roll grin cheek_blowing eye_closed brow_raiser "
    "brow_lower"
).split()
"""FaceScape's 20 expressions; file stems are ``f"{k}_{name}"`` with k = index + 1."""
IPD_MM = 62.0
"""Inter-pupil distance every subject is scaled to (mm)."""
LANDMARK_FILE = "landmark_indices.npz"


class TUTopology:
    """FLAME -> TU mesh: drop eyeballs, subdivide ``subdivisions`` times, shuffle vertices.

    The same steps applied to any FLAME-topology vertices give the same TU topology, so every
    scan shares it and landmark indices stay valid.
    """

    def __init__(self, assets: FlameAssets, subdivisions: int, rng: np.random.Generator) -> None:
        faces = assets.model.faces
        eyes = np.concatenate([assets.masks.get("left_eyeball", []), assets.masks.get("right_eyeball", [])])
        bad = np.zeros(assets.model.num_vertices, dtype=bool)
        bad[eyes.astype(np.int64)] = True
        faces = faces[~bad[faces].any(axis=1)]
        self.keep = np.unique(faces)
        remap = np.full(assets.model.num_vertices, -1, dtype=np.int64)
        remap[self.keep] = np.arange(len(self.keep))
        self.flame_faces = remap[faces]
        self.subdivisions = subdivisions
        verts, sub_faces = self._subdivide(assets.model.v_template)
        self.perm = rng.permutation(len(verts))
        inverse = np.empty_like(self.perm)
        inverse[self.perm] = np.arange(len(self.perm))
        self.faces = inverse[sub_faces]

    def _subdivide(self, flame_vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import trimesh

        verts, faces = flame_vertices[self.keep], self.flame_faces
        for _ in range(self.subdivisions):
            verts, faces = trimesh.remesh.subdivide(verts, faces)
        return np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)

    def vertices(self, flame_vertices: np.ndarray) -> np.ndarray:
        """(V_tu, 3) TU vertices (OBJ order) of FLAME-topology vertices, same units and frame."""
        return self._subdivide(flame_vertices)[0][self.perm]


def seam_uv(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cylindrical UVs with a seam at the back of the head: faces across it get their own ``vt``.

    Returns:
        vt (T, 2) with T > V when a seam exists, ft (F, 3) indices into vt.
    """
    u = np.arctan2(vertices[:, 0], vertices[:, 2]) / (2 * np.pi) + 0.5
    v = (vertices[:, 1] - vertices[:, 1].min()) / max(np.ptp(vertices[:, 1]), 1e-9)
    vt = np.stack([u, v], axis=1)
    ft = faces.copy()
    across = np.ptp(u[faces], axis=1) > 0.5
    extra = []
    for f in np.flatnonzero(across):
        for c in range(3):
            vi = faces[f, c]
            if u[vi] < 0.5:
                ft[f, c] = len(vt) + len(extra)
                extra.append((1.0, v[vi]))
    if extra:
        vt = np.concatenate([vt, np.asarray(extra)])
    return vt, ft


def write_obj(
    path: Path, vertices: np.ndarray, faces: np.ndarray, vt: np.ndarray, ft: np.ndarray, mtl: str
) -> None:
    """An OBJ as FaceScape ships it: ``mtllib``, ``v``, ``vt``, ``f v/vt`` (1-based), atomically."""
    lines = [f"mtllib {mtl}", "usemtl material_0"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {a:.6f} {b:.6f}" for a, b in vt]
    lines += [f"f {a}/{d} {b}/{e} {c}/{f}" for (a, b, c), (d, e, f) in zip(faces + 1, ft + 1, strict=True)]
    atomic_write(path, ("\n".join(lines) + "\n").encode("ascii"))


def _stress_obj(assets: FlameAssets, truth: np.ndarray, to_stored: Similarity, landmarks: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A stress scan of ``truth`` in the stored frame (metres as read), with 68 landmark slots first:
    copies of the scan vertices nearest ``landmarks`` (used by no face), then the scan."""
    from scipy.spatial import cKDTree

    sv, sf = st.stress_scan(assets, truth, rng)
    stored = to_stored.apply(sv)
    _, near = cKDTree(stored).query(to_stored.apply(landmarks))
    return np.concatenate([stored[near], stored]), sf + len(near)


def write_facescape(
    out: str | os.PathLike,
    assets: FlameAssets,
    subjects: int | Sequence[int] = 2,
    expressions: int | Sequence[str] = 2,
    seed: int = 0,
    *,
    subdivisions: int = 2,
    image_size: int = 256,
    stress: bool = False,
) -> list[str]:
    """Write a synthetic FaceScape TU dataset and its truth; returns ids ("facescape/1/1_neutral", ...).

    Args:
        subjects: a count (ids 1, 2, ...) or explicit integer ids.
        expressions: a count (the first names of :data:`EXPRESSIONS`) or explicit names from it.
        subdivisions: midpoint subdivisions of FLAME giving the TU topology (real TU: 26,317 vertices).
        image_size: side of the texture JPEG and the 16-bit displacement PNG.
        stress: hard parameters, and each OBJ holds a raw-scan-like mesh (:mod:`p3dmm.pipeline.synth.stress`)
            in its own topology instead of the shared TU mesh; its first 68 ``v`` lines are copies of the
            scan vertices nearest the truth landmarks, so ``v10`` = 0..67 holds for every scan.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sids = list(range(1, 1 + subjects)) if isinstance(subjects, int) else list(subjects)
    names = list(EXPRESSIONS[:expressions]) if isinstance(expressions, int) else list(expressions)
    unknown = [n for n in names if n not in EXPRESSIONS]
    if unknown:
        raise ValueError(f"write_facescape: expressions must come from FaceScape's list, got {unknown}")
    topo = TUTopology(assets, subdivisions, rng)
    lmk_template = frontal_landmarks(assets, assets.model.v_template)
    tu_template = topo.vertices(assets.model.v_template)
    v10 = np.argmin(((tu_template[None] - lmk_template[:, None]) ** 2).sum(-1), axis=1).astype(np.int64)
    if stress:
        v10 = np.arange(68, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, v10=v10)
    atomic_write(out / LANDMARK_FILE, buffer.getvalue())

    faces = assets.model.faces
    n_shape, n_expr = assets.model.num_shape, assets.model.num_expression
    sample = st.stress_params if stress else ss.sample_params
    ids = []
    for sid in sids:
        identity = sample(rng, n_shape, n_expr)["shape"]
        offset = rng.normal(0.0, 0.01, 3)
        (out / str(sid) / "models_reg").mkdir(parents=True, exist_ok=True)
        (out / str(sid) / "dpmap").mkdir(parents=True, exist_ok=True)
        for name in names:
            stem = f"{EXPRESSIONS.index(name) + 1}_{name}"
            params = sample(rng, n_shape, n_expr)
            params["shape"] = identity
            if name == "neutral":
                params["expression"][:] = 0.0
                params["pose"][6:9] = 0.0
            truth = ss.add_detail(ss.posed_truth(assets, params), faces, rng)
            lmk = frontal_landmarks(assets, truth)
            ipd = np.linalg.norm(lmk[42:48].mean(0) - lmk[36:42].mean(0))
            to_stored = Similarity(IPD_MM / 1000.0 / ipd, np.eye(3), offset)
            stored = to_stored.apply(truth)  # metres as the adapter reports them (mm / 1000)
            tu, tu_faces = _stress_obj(assets, truth, to_stored, lmk, rng) if stress else (
                topo.vertices(stored), topo.faces)
            vt, ft = seam_uv(tu, tu_faces)
            folder = out / str(sid) / "models_reg"
            write_obj(folder / f"{stem}.obj", tu * 1000.0, tu_faces, vt, ft, f"{stem}.obj.mtl")
            atomic_write(folder / f"{stem}.obj.mtl", f"newmtl material_0\nmap_Kd {stem}.jpg\n".encode())
            albedo = ss.scan_albedo(assets, truth, to_stored.invert_points(tu), rng)
            ss.save_png(folder / f"{stem}.jpg", ss.bake_texture(vt[ft], tu_faces, albedo, image_size), fmt="JPEG")
            disp = (32768 + rng.normal(0, 800, (image_size, image_size))).clip(0, 65535).astype(np.uint16)
            ss.save_png(out / str(sid) / "dpmap" / f"{stem}.png", disp)
            scan_id = f"facescape/{sid}/{stem}"
            ss.write_truth(out, scan_id, stored, 1.0 / to_stored.scale, params, to_stored.apply(lmk))
            ids.append(scan_id)
    return ids
