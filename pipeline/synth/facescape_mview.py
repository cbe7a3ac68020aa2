"""Synthetic FaceScape multi-view tuples: raw-like MVS meshes and distorted photos in an arbitrary SfM frame.

Why: the real multi-view release needs a license and ~690 GB; its hard parts (unknown scale and
orientation per tuple, noisy holey re-triangulated meshes, lens distortion, invalid views, the flat
``params.json``, the optional ``Rt_scale_dict.json``) are what the adapter must get right, and all of
them can be reproduced from a FLAME head whose true surface we keep.

Frames (column vectors):
    FLAME/truth frame: metres, FLAME axes. TU frame: x_tu = 1000 x_flame (mm, FLAME axes).
    SfM frame: x_tu = R_s (s x_sfm) + t_s, with s ~ 30 (so SfM coordinates span ~0..7), R_s random.
    Cameras in params.json: x_cam = R x_sfm + t (OpenCV axes, SfM units).

Layout written (the real layout is described in docs/datasets.md)::

    <out>/fsmview_trainset/<id>/<k>_<name>.ply
    <out>/fsmview_trainset/<id>/<k>_<name>/<view>.jpg, params.json
    <out>/Rt_scale_dict.json                  {str(id): {str(k): [s, [[R_s | t_s]] (3x4)]}}
    <out>/_truth/facescape-mview__<id>__<k>_<name>.npz   truth in the FLAME frame (metres_per_unit 1)

Stress setting (``stress=True``, docs/datasets.md "Stress setting"): hard parameters, the detailed truth,
and :func:`p3dmm.pipeline.synth.stress.stress_scan` as the MVS mesh; the photos show what that scan was cut
from (:func:`stress_tuple`), so mesh, cameras and photos stay one consistent capture.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.cameras import Cameras, orbit
from p3dmm.flame.mesh import drop_unused_vertices, face_normals_np, save_mesh
from p3dmm.flame.render import render_shaded
from p3dmm.flame.similarity import Similarity
from p3dmm.pipeline.render.photos import undistort_points
from p3dmm.pipeline.synth import stress as st
from p3dmm.pipeline.synth.scans import (
    HAIR_COLORS,
    add_detail,
    posed_truth,
    sample_params,
    skin_colors,
    subdivide_until,
    write_truth,
)

EXPRESSION_NAMES = (
    "neutral", "smile", "mouth_stretch", "anger", "jaw_left", "jaw_right", "jaw_forward", "mouth_left",
    "mouth_right", "dimpler", "chin_raiser", "lip_puckerer", "lip_funneler", "sadness", "lip_roll", "grin",
    "cheek_blowing", "eye_closed", "brow_raiser", "brow_lower",
)
"""FaceScape's 20 expressions; tuple k (1-based) is ``f"{k}_{EXPRESSION_NAMES[k - 1]}"``."""

BACKGROUND = (40, 190, 70)
"""Photo background colour (far from any skin shade, so tests can tell foreground by colour)."""
CLOTHES_COLORS = ((0.15, 0.18, 0.35), (0.45, 0.45, 0.48), (0.42, 0.12, 0.15), (0.85, 0.85, 0.82), (0.08, 0.08, 0.09))
"""Stress photos: the torso's clothing colours (navy, grey, maroon, white, black: none near BACKGROUND)."""


# -- colours ---------------------------------------------------------------------------------------


# -- images ------------------------------------------------------------------------------------------


def distort_image(image: np.ndarray, K: np.ndarray, dist: Sequence[float], fill: Sequence[int]) -> np.ndarray:
    """The photo a distorting lens gives: pixel p_d of the output samples the pinhole image at
    undistort(p_d) (bilinear). image: (H, W, 3) uint8; K: (3, 3) pixels (pixel centres at integers)."""
    height, width = image.shape[:2]
    jj, ii = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    xy_d = np.stack([(jj.ravel() - K[0, 2]) / K[0, 0], (ii.ravel() - K[1, 2]) / K[1, 1]], axis=1)
    xy = undistort_points(xy_d, dist)
    cols = xy[:, 0] * K[0, 0] + K[0, 2]
    rows = xy[:, 1] * K[1, 1] + K[1, 2]
    out = np.empty_like(image)
    for c in range(image.shape[2]):
        sampled = map_coordinates(image[..., c].astype(np.float64), [rows, cols], order=1, cval=float(fill[c]))
        out[..., c] = np.clip(np.rint(sampled), 0, 255).reshape(height, width).astype(np.uint8)
    return out


def orbit_cameras(center: np.ndarray, yaws_deg: np.ndarray, distance_m: float, fov_deg: float,
                  image_size: tuple[int, int], rng: np.random.Generator) -> Cameras:
    """float64 cameras around ``center`` (FLAME frame, metres) at the given yaws, small random pitch,
    looking at the face (+z side); image_size is (H, W)."""
    yaw = np.radians(yaws_deg)
    pitch = np.radians(rng.uniform(-10, 10, len(yaw)))
    return orbit(center, yaw, pitch, distance_m, fov_deg, image_size)


# -- raw-like MVS mesh -----------------------------------------------------------------------------


def mvs_mesh(verts: np.ndarray, faces: np.ndarray, rng: np.random.Generator,
             noise_m: float = 0.0005) -> tuple[np.ndarray, np.ndarray]:
    """A raw-looking MVS reconstruction of a head (metres in, metres out): the back of the head dropped
    (no cameras see it), re-triangulated (two subdivisions, vertices shuffled), noisy, with holes and
    a few clutter pieces (a backdrop patch and floating specks)."""
    normals = face_normals_np(verts, faces)
    faces = faces[normals[:, 2] > -0.35]
    v, f = trimesh.remesh.subdivide(verts, faces)
    v, f = trimesh.remesh.subdivide(v, f)
    used = np.unique(f)
    remap = np.full(len(v), -1)
    order = rng.permutation(len(used))
    remap[used[order]] = np.arange(len(used))
    v_new = np.empty((len(used), 3))
    v_new[remap[used]] = v[used]
    v, f = v_new, remap[f]
    v = v + rng.normal(0.0, noise_m, v.shape)
    centroids = v[f].mean(axis=1)
    keep = np.ones(len(f), bool)
    for centre in v[rng.choice(len(v), 4, replace=False)]:
        keep &= np.linalg.norm(centroids - centre, axis=1) > 0.012
    f = f[keep]
    # clutter: a backdrop patch behind the head and floating specks near it
    lo, hi = v.min(axis=0), v.max(axis=0)
    gx, gy = np.meshgrid(np.linspace(lo[0] - 0.05, hi[0] + 0.05, 8), np.linspace(lo[1], hi[1], 8))
    patch = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, lo[2] - 0.08)], axis=1)
    idx = np.arange(64).reshape(8, 8)
    quads = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], axis=-1).reshape(-1, 4)
    patch_f = np.concatenate([quads[:, [0, 2, 1]], quads[:, [0, 3, 2]]])
    specks = (lo + rng.uniform(0, 1, (5, 3)) * (hi - lo))[:, None, :] + rng.normal(0, 0.004, (5, 3, 3))
    specks_f = np.arange(15).reshape(5, 3)
    all_v = np.concatenate([v, patch, specks.reshape(-1, 3)])
    all_f = np.concatenate([f, patch_f + len(v), specks_f + len(v) + len(patch)])
    return drop_unused_vertices(all_v, all_f)


def random_sfm_transform(rng: np.random.Generator, verts_mm: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R_s, t_s) with x_tu = R_s (s x_sfm) + t_s, chosen so that SfM coordinates of the head lie in ~0..7."""
    s = float(rng.uniform(27.0, 33.0))
    rot = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
    # x_sfm = R_s^T (x_tu - t_s) / s; pick the SfM position of the head centre, then solve for t_s.
    centre_sfm = rng.uniform(4.5, 5.5, 3)
    centre_tu = verts_mm.mean(axis=0)
    t_s = centre_tu - rot @ (s * centre_sfm)
    return s, rot, t_s


# -- stress setting ----------------------------------------------------------------------------------


def paint_points(points: np.ndarray, surface: np.ndarray, surface_colors: np.ndarray, hair_color: np.ndarray,
                 clothes_color: np.ndarray, neck_y: float, tol_m: float = 0.004) -> tuple[np.ndarray, np.ndarray]:
    """Colours (P, 3) of scan points for the photos, and the (P,) mask of points off the subject.

    A point within ``tol_m`` of a ``surface`` vertex takes that vertex's colour (the scan is the surface
    decimated, with 0.2 mm noise); one farther off is clutter only the scan has: clothing below ``neck_y``
    (torso), hair above (bridge triangles, floating fragments such as stray hair).
    """
    distance, nearest = cKDTree(surface).query(points)
    colors = surface_colors[nearest]
    off = distance > tol_m
    below = points[:, 1] < neck_y
    colors[off & below] = clothes_color
    colors[off & ~below] = hair_color
    return colors, off


def stress_tuple(assets: FlameAssets, truth: np.ndarray, colors: np.ndarray, hair_color: np.ndarray,
                 clothes_color: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The stress MVS mesh of a tuple (metres, FLAME frame) and the scene its photos render.

    The mesh is :func:`stress.stress_scan` of the detailed ``truth``. The photos must show the person
    that mesh was reconstructed from, not the bald truth: the whole hair-capped surface
    (:func:`stress.hair_surface` of a twin of ``rng``: the same hairline and thickness, without the
    scanner's holes) plus the scan's faces off that surface (torso, bridge, fragments). ``colors``:
    (V, 3) per FLAME vertex (the subject's skin), interpolated like the vertices.

    Returns:
        mesh vertices (P, 3), mesh faces (F, 3), and (vertices, faces, colours) of the photo scene.
    """
    twin = copy.deepcopy(rng)
    scan_v, scan_f = st.stress_scan(assets, truth, rng)
    surface_v, surface_f, hair = st.hair_surface(assets, truth, twin)
    surface_c, _ = subdivide_until(np.asarray(colors, dtype=np.float64), assets.model.faces, len(surface_f))
    surface_c[hair] = hair_color
    scan_c, off = paint_points(scan_v, surface_v, surface_c, hair_color, clothes_color, truth[:, 1].min() + 0.005)
    clutter = scan_f[off[scan_f].any(axis=1)]
    extra_v, extra_f = drop_unused_vertices(scan_v, clutter)
    extra_c = scan_c[np.unique(clutter)]  # drop_unused_vertices keeps the used vertices in index order
    scene = (np.concatenate([surface_v, extra_v]), np.concatenate([surface_f, extra_f + len(surface_v)]),
             np.concatenate([surface_c, extra_c]))
    return scan_v, scan_f, scene


# -- the writer --------------------------------------------------------------------------------------


def write_synthetic(out: str | os.PathLike, assets: FlameAssets, *, subjects: int, expressions: int,
                    seed: int, stress: bool = False) -> list[str]:
    """The dataset registry's uniform writer: subjects 1..N with expressions k = 1..M."""
    return write_facescape_mview(out, assets, list(range(1, subjects + 1)), list(range(1, expressions + 1)),
                                 seed=seed, stress=stress)


def write_facescape_mview(
    out: str | os.PathLike,
    assets: FlameAssets,
    subjects: Sequence[int],
    expressions: Sequence[int],
    seed: int,
    views: int = 6,
    image_size: tuple[int, int] = (240, 360),
    *,
    stress: bool = False,
) -> list[str]:
    """Write FaceScape multi-view tuples for ``subjects`` x ``expressions`` (1-based k) under ``out``.

    Args:
        out: root; receives ``fsmview_trainset/``, ``Rt_scale_dict.json`` and ``_truth/``.
        assets: a FLAME model (the synthetic one in tests); truth is its posed mesh.
        subjects: integer ids (folder names, not padded). expressions: k in 1..20.
        seed: everything is deterministic given it.
        views: cameras per tuple, yaw spread over ±60°; view 1 (when views > 2) is marked invalid.
        image_size: (H, W) of the photos.
        stress: hard parameters (:func:`stress.stress_params`), the detailed truth, and
            :func:`stress_tuple`: the stress scan as the MVS mesh (hair cap, unseen parts and holes, torso
            bridge, fragments, decimation, noise) instead of :func:`mvs_mesh`, photos of the hair-capped
            subject with torso and fragments; per subject also a hair and a clothing colour.

    Returns:
        The scan ids written, "facescape-mview/<id>/<k>_<name>".
    """
    if views < 2:
        raise ValueError(f"write_facescape_mview: views must be >= 2, got {views}")
    bad = [k for k in expressions if not 1 <= int(k) <= len(EXPRESSION_NAMES)]
    if bad:
        raise ValueError(f"write_facescape_mview: expressions must lie in 1..20 (FaceScape's k), got {bad}")
    rng = np.random.default_rng(seed)
    root = Path(out) / "fsmview_trainset"
    rt_dict: dict[str, dict[str, list]] = {}
    sample = st.stress_params if stress else sample_params
    ids = []
    for sid in subjects:
        identity = sample(rng, assets.model.num_shape, assets.model.num_expression)["shape"]
        colors = skin_colors(assets, assets.model.v_template, rng)
        if stress:
            hair_color = np.asarray(HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))])
            clothes_color = np.asarray(CLOTHES_COLORS[int(rng.integers(len(CLOTHES_COLORS)))])
        for k in expressions:
            tuple_name = f"{int(k)}_{EXPRESSION_NAMES[int(k) - 1]}"
            params = sample(rng, assets.model.num_shape, assets.model.num_expression)
            params["shape"] = identity
            params["translation"] = rng.uniform(-0.02, 0.02, 3) + np.array([0.0, -0.02, 0.0])
            truth = posed_truth(assets, params)
            if stress:
                truth = add_detail(truth, assets.model.faces, rng)
            scan_id = f"facescape-mview/{int(sid)}/{tuple_name}"
            write_truth(out, scan_id, truth, 1.0, params)

            if stress:
                raw_m, raw_f, scene = stress_tuple(assets, truth, colors, hair_color, clothes_color, rng)
            else:
                raw_m, raw_f = mvs_mesh(truth, assets.model.faces, rng)
                scene = (truth, assets.model.faces, colors)
            s, rot_s, t_s = random_sfm_transform(rng, truth * 1000.0)
            folder = root / str(int(sid))
            (folder / tuple_name).mkdir(parents=True, exist_ok=True)
            sfm_to_mm = Similarity(s, rot_s, t_s)  # x_tu (mm) = s x_sfm @ R_s^T + t_s
            save_mesh(folder / f"{tuple_name}.ply", sfm_to_mm.invert_points(raw_m * 1000.0), raw_f)  # x_sfm
            rt_dict.setdefault(str(int(sid)), {})[str(int(k))] = [
                s, np.concatenate([rot_s, t_s[:, None]], axis=1).tolist()
            ]
            sfm_to_flame = Similarity(s / 1000.0, rot_s, t_s / 1000.0)  # x_flame (m) from x_sfm
            centre = truth.mean(axis=0) + np.array([0.0, 0.0, 0.03])
            _write_photos(folder / tuple_name, centre, scene, sfm_to_flame, views, image_size, rng)
            ids.append(scan_id)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "Rt_scale_dict.json").write_text(json.dumps(rt_dict))
    return ids


def _write_photos(folder: Path, centre: np.ndarray, scene: tuple[np.ndarray, np.ndarray, np.ndarray],
                  sfm_to_flame: Similarity, views: int, image_size: tuple[int, int], rng: np.random.Generator) -> None:
    """Render ``views`` distorted photos of ``scene`` (vertices in the FLAME frame, faces, vertex colours:
    the truth mesh, or a stress tuple's subject) looking at ``centre``, and write params.json in SfM units."""
    verts, faces, colors = scene
    yaws = np.linspace(-60.0, 60.0, views)
    cams = orbit_cameras(centre, yaws, distance_m=0.7, fov_deg=26.0, image_size=image_size, rng=rng)
    params: dict[str, object] = {}
    for v in range(views):
        K = cams.K[v].numpy()
        R_c, t_c = cams.R[v].numpy(), cams.t[v].numpy()
        dist = [rng.uniform(-0.08, 0.08), rng.uniform(-0.05, 0.05), rng.uniform(-0.002, 0.002),
                rng.uniform(-0.002, 0.002), rng.uniform(-0.01, 0.01)]
        image = render_shaded(verts, faces, cams[v], colors, background=BACKGROUND)
        image = distort_image(image, K, dist, BACKGROUND)
        Image.fromarray(image).save(folder / f"{v}.jpg", quality=92)
        # x_cam (metres) = R_c x_flame + t_c with x_flame = (R_s s x_sfm + t_s) / 1000: a rigid SfM camera
        R, t = sfm_to_flame.camera_in_source(R_c, t_c)
        K4 = np.eye(4)
        K4[:3, :3] = K
        params[f"{v}_K"] = K4.tolist()
        params[f"{v}_Rt"] = np.concatenate([R, t[:, None]], axis=1).tolist()
        params[f"{v}_distortion"] = [float(d) for d in dist]
        params[f"{v}_width"] = int(image_size[1])
        params[f"{v}_height"] = int(image_size[0])
        params[f"{v}_valid"] = not (views > 2 and v == 1)
        params[f"{v}_matches"] = int(rng.integers(500, 5000))
        params[f"{v}_sn"] = f"{int(rng.integers(10**7, 10**8))}"
        params[f"{v}_ori"] = 0
    (folder / "params.json").write_text(json.dumps(params, indent=1))
