"""The stress setting of the synthetic scans: what real raw scans have and the default scans lack.

The default scans (:mod:`p3dmm.pipeline.synth.scans`) are easy. :func:`stress_scan` builds a scan of
the detailed truth the way a scanner sees a real person (docs/datasets.md, "Stress setting"):

1. :func:`stress_params`: wide identities, strong expressions, open jaws, head and neck turned against
   each other.
2. :func:`hair_mask` + :func:`hair_cap`: the scalp pushed out 5-20 mm with a ragged hairline; the skin
   under the hair is gone (the vertices moved, a scanner sees only hair).
3. :func:`visible_faces` of a 21-camera rig (:func:`rig_cameras`): eyeball backs, the mouth interior and
   deep folds are dropped.
4. :func:`punch_holes` under the chin, in the nostrils (:func:`hole_centres`) and at random;
   :func:`cut_neck`; :func:`bridge_holes` closes about a third of the small holes with flat fans.
5. :func:`torso_bridge`: a torso under the cut neck joined by large triangles; :func:`fragments`: small
   floating patches near the head.
6. :func:`decimate` to about 100k faces, :func:`normal_noise` of 0.2 mm, shuffled vertex order.

Layouts with photos also need the subject the cameras saw: :func:`hair_surface` replays steps 1-2 whole
(facescape-mview's photos; ava256 applies steps 2 and 6 to its fixed tracked topology instead).

All functions are vectorised numpy and deterministic for a ``numpy.random.Generator`` state.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.cameras import Cameras, orbit
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.mesh import drop_unused_vertices, face_normals_np, vertex_normals_np
from p3dmm.flame.render import RayCaster
from p3dmm.pipeline.synth import scans as ss

STRESS_FACES = 120_000
"""Faces the truth is subdivided to (at least) before the scanner effects; decimated back to MAX_FACES."""
MAX_FACES = 100_000
"""A stress scan denser than this is decimated to about this many faces."""


def stress_params(rng: np.random.Generator, n_shape: int, n_expression: int) -> dict[str, np.ndarray]:
    """Hard FLAME parameters (sigma units, radians), same keys as :func:`scans.sample_params`.

    Identity N(0, 1) on the first 100 components; expression N(0, 1) on the first 20 with one component
    at +-2 sigma in half the draws; the jaw open 0.15-0.45 rad in half the draws; global yaw/pitch up to
    20 degrees, and in half the draws a neck turn of 60-100 % of it in the opposite direction (the head
    stays frontal while the body turns: global and neck rotation trade off).
    """
    shape = np.zeros(n_shape)
    k = min(100, n_shape)
    shape[:k] = rng.normal(0.0, 1.0, k)
    expression = np.zeros(n_expression)
    k = min(20, n_expression)
    expression[:k] = rng.normal(0.0, 1.0, k)
    if k and rng.random() < 0.5:
        expression[rng.integers(k)] = 2.0 * rng.choice([-1.0, 1.0])
    limit = np.radians(20.0)
    pose = np.zeros((5, 3))
    pose[0] = [rng.uniform(-limit, limit), rng.uniform(-limit, limit), rng.normal(0.0, 0.05)]
    if rng.random() < 0.5:
        pose[1] = -pose[0] * rng.uniform(0.6, 1.0) + rng.normal(0.0, 0.03, 3)
    else:
        pose[1] = rng.normal(0.0, 0.1, 3)
    jaw_open = rng.uniform(0.15, 0.45) if rng.random() < 0.5 else rng.uniform(0.0, 0.04)
    pose[2] = [jaw_open, rng.normal(0.0, 0.03), rng.normal(0.0, 0.03)]
    gaze = rng.normal(0.0, 0.1, 3)
    pose[3] = gaze
    pose[4] = gaze
    translation = rng.normal(0.0, 0.005, 3)
    return {"shape": shape, "expression": expression, "pose": pose.reshape(15), "translation": translation}


def smooth_field(points: np.ndarray, rng: np.random.Generator, amplitude: float, wavelength_m: float,
                 n_waves: int = 6) -> np.ndarray:
    """(P,) a random smooth scalar field: ``n_waves`` plane waves of the given wavelength, peak ~amplitude."""
    directions = rng.normal(size=(n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    phase = rng.uniform(0.0, 2 * np.pi, n_waves)
    waves = np.sin(points @ directions.T * (2 * np.pi / wavelength_m) + phase)
    return amplitude * waves.sum(axis=1) / np.sqrt(n_waves / 2.0)


def hair_mask(points: np.ndarray, truth: np.ndarray, scalp: np.ndarray, rng: np.random.Generator,
              ragged_m: float = 0.005) -> np.ndarray:
    """(P,) bool: the points under hair, the FLAME ``scalp`` region with a ragged hairline.

    The signed distance to the scalp boundary (distance to the nearest non-scalp truth vertex minus the
    distance to the nearest scalp vertex, > 0 inside) plus a smooth random field of ~``ragged_m`` (two
    wavelengths, 1.5 and 4 cm) decides; every call (scan) draws another hairline.
    """
    in_scalp = np.zeros(len(truth), dtype=bool)
    in_scalp[scalp] = True
    if not in_scalp.any() or in_scalp.all():
        return np.zeros(len(points), dtype=bool)
    d_inside, _ = cKDTree(truth[~in_scalp]).query(points)
    d_outside, _ = cKDTree(truth[in_scalp]).query(points)
    noise = smooth_field(points, rng, ragged_m, 0.015) + smooth_field(points, rng, ragged_m, 0.04)
    return d_inside - d_outside + noise > 0


def hair_cap(verts: np.ndarray, faces: np.ndarray, hair: np.ndarray, rng: np.random.Generator,
             thickness_m: tuple[float, float] = (0.005, 0.02)) -> np.ndarray:
    """(V, 3) the vertices with the ``hair`` ones pushed out along the normals by a smooth random
    thickness in ``thickness_m``: the hair surface replaces the skin under it, and faces across the
    hairline become the ramp from skin to hair."""
    lo, hi = thickness_m
    wave = rng.normal(size=3)
    thickness = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.tanh(verts @ wave / 0.04)
    out = verts.copy()
    out[hair] += vertex_normals_np(verts, faces)[hair] * thickness[hair, None]
    return out


def hair_surface(assets: FlameAssets, truth: np.ndarray, rng: np.random.Generator, *,
                 target_faces: int = STRESS_FACES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole subject a camera photographs, before any scanner defect: steps 1-2 of :func:`stress_scan`
    (the detailed truth subdivided to ``target_faces``, the :func:`hair_cap` on; no holes, eyeballs and the
    back of the head kept). Returns (V, 3) vertices, (F, 3) faces and the (V,) hair mask.

    Why: a layout with photos must show the hair its stress scan has. :func:`stress_scan` draws the
    hairline and the hair thickness before anything else, so a twin of the generator it is given
    (``copy.deepcopy(rng)`` before the call, same ``target_faces``) gives here the very surface that scan
    is cut from (pipeline/synth/facescape_mview.py renders it).
    """
    verts, faces = ss.subdivide_until(truth, assets.model.faces, target_faces)
    hair = hair_mask(verts, truth, np.asarray(assets.masks.get("scalp", []), dtype=np.int64), rng)
    return hair_cap(verts, faces, hair, rng), faces, hair


def rig_cameras(centre: np.ndarray, distance_m: float = 0.8, fov_deg: float = 30.0,
                image_size: tuple[int, int] = (256, 256)) -> Cameras:
    """21 float64 cameras around the front and sides of ``centre`` (FLAME frame): 7 yaws from -100 to
    100 degrees at pitches -30, 0 and 30 degrees (below, level, above), looking at ``centre``."""
    yaw, pitch = np.meshgrid(np.radians(np.linspace(-100.0, 100.0, 7)), np.radians([-30.0, 0.0, 30.0]))
    return orbit(centre, yaw.ravel(), pitch.ravel(), distance_m, fov_deg, image_size)


def visible_faces(verts: np.ndarray, faces: np.ndarray, cams: Cameras, tol_m: float = 0.002,
                  min_cos: float = 0.05) -> np.ndarray:
    """(F,) bool: faces some camera of ``cams`` sees.

    A face is seen by a camera when a pixel ray hits it first, or when its centroid projects into the
    image, faces the camera (cosine > ``min_cos``) and lies within ``tol_m`` of the depth buffer there
    (so faces smaller than a pixel count too).
    """
    caster = RayCaster(verts, faces)
    centroid = verts[faces].mean(axis=1)
    normal = face_normals_np(verts, faces)
    seen = np.zeros(len(faces), dtype=bool)
    height, width = cams.image_size
    for i in range(cams.batch_size):
        hits = caster.cast(cams[i])
        seen[hits.face_id[hits.mask]] = True
        K, R, t = cams.K[i].numpy(), cams.R[i].numpy(), cams.t[i].numpy()
        x = centroid @ R.T + t
        z = np.maximum(x[:, 2], 1e-9)
        col = np.rint(x[:, 0] / z * K[0, 0] + K[0, 2]).astype(np.int64)
        row = np.rint(x[:, 1] / z * K[1, 1] + K[1, 2]).astype(np.int64)
        inside = (x[:, 2] > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        centre = -R.T @ t
        view = centre[None] - centroid
        facing = np.einsum("ij,ij->i", normal, view) > min_cos * np.linalg.norm(view, axis=1)
        depth = np.full(len(faces), -np.inf)
        depth[inside] = hits.depth[row[inside], col[inside]]
        seen |= inside & facing & (x[:, 2] <= depth + tol_m)
    return seen


def hole_centres(assets: FlameAssets, truth: np.ndarray, rng: np.random.Generator,
                 n_random: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 3) and radii (N,) of the holes a scanner leaves: under the chin (the downward-facing
    truth vertex nearest a point 1.5 cm below and 2 cm behind the chin landmark, 8-12 mm), both nostrils
    (3-5 mm, needs landmarks) and ``n_random`` random truth vertices (5-12 mm)."""
    centres, radii = [], []
    if assets.landmarks is not None:
        lmk = frontal_landmarks(assets, truth)
        normals = vertex_normals_np(truth, assets.model.faces)
        below = np.flatnonzero(normals[:, 1] < -0.5)
        target = lmk[8] + np.array([0.0, -0.015, -0.02])
        if len(below):
            centres.append(truth[below[np.argmin(np.linalg.norm(truth[below] - target, axis=1))]])
        else:
            centres.append(target)
        radii.append(rng.uniform(0.008, 0.012))
        centres += [0.5 * (lmk[31] + lmk[32]), 0.5 * (lmk[34] + lmk[35])]
        radii += list(rng.uniform(0.003, 0.005, 2))
    used = np.unique(assets.model.faces)
    centres += list(truth[rng.choice(used, size=n_random)])
    radii += list(rng.uniform(0.005, 0.012, n_random))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 3), np.asarray(radii, dtype=np.float64)


def punch_holes(verts: np.ndarray, faces: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(F,) bool: the faces to keep, i.e. those whose centroid lies outside every ball (centres, radii)."""
    if not len(centres):
        return np.ones(len(faces), dtype=bool)
    tree = cKDTree(verts[faces].mean(axis=1))
    cut = np.zeros(len(faces), dtype=bool)
    for centre, radius in zip(centres, radii, strict=True):
        cut[tree.query_ball_point(centre, radius)] = True
    return ~cut


def cut_neck(verts: np.ndarray, faces: np.ndarray, y_cut: float) -> np.ndarray:
    """(F,) bool: the faces to keep, those whose centroid lies above the horizontal plane ``y = y_cut``."""
    return verts[faces][:, :, 1].mean(axis=1) > y_cut


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) directed edges (as in their face) that belong to exactly one face: the holes' rims."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(directed, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return directed[counts[inverse.ravel()] == 1]


def bridge_holes(verts: np.ndarray, faces: np.ndarray, rng: np.random.Generator,
                 max_perimeter_m: float = 0.04, fraction: float = 1.0 / 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Close about ``fraction`` of the holes with a rim shorter than ``max_perimeter_m`` by a flat fan
    (one new vertex at the rim's mean, a triangle per rim edge), as scanner software fills small holes.

    Rims are the connected components of the boundary edges. Returns the vertices and faces with the
    fans appended.
    """
    rim = boundary_edges(faces)
    if not len(rim):
        return verts, faces
    graph = coo_matrix((np.ones(len(rim)), (rim[:, 0], rim[:, 1])), shape=(len(verts), len(verts)))
    _, label = connected_components(graph, directed=False)
    loop = label[rim[:, 0]]
    ids, loop = np.unique(loop, return_inverse=True)
    length = np.linalg.norm(verts[rim[:, 0]] - verts[rim[:, 1]], axis=1)
    perimeter = np.bincount(loop, weights=length, minlength=len(ids))
    chosen = (perimeter < max_perimeter_m) & (rng.random(len(ids)) < fraction)
    if not chosen.any():
        return verts, faces
    fill = chosen[loop]
    new_index = np.full(len(ids), -1, dtype=np.int64)
    new_index[chosen] = len(verts) + np.arange(chosen.sum())
    counts = np.bincount(loop[fill], minlength=len(ids))[chosen]
    sums = np.stack([np.bincount(loop[fill], weights=verts[rim[fill, 0], c], minlength=len(ids))[chosen]
                     for c in range(3)], axis=1)
    fan = np.stack([rim[fill, 1], rim[fill, 0], new_index[loop[fill]]], axis=1)
    return np.concatenate([verts, sums / counts[:, None]]), np.concatenate([faces, fan])


def torso_bridge(verts: np.ndarray, faces: np.ndarray, y_cut: float, rng: np.random.Generator,
                 gap_m: tuple[float, float] = (0.015, 0.03)) -> tuple[np.ndarray, np.ndarray]:
    """Append a torso (:func:`scans._torso`) ``gap_m`` below the cut neck and join its top ring to the
    neck's rim (boundary vertices within 1 cm above ``y_cut``) with large triangles, matched by angle
    around the neck: one triangle per rim edge and one per ring edge."""
    rim = boundary_edges(faces)
    rim = rim[(verts[rim, 1] < y_cut + 0.01).all(axis=1)]
    neck = np.unique(rim)
    if len(neck) < 3:
        return verts, faces
    centre = verts[neck].mean(axis=0)
    base = np.array([centre[0], y_cut - rng.uniform(*gap_m), centre[2]])
    tv, tf = ss._torso(base, rng)
    n_around = 48
    ring = len(verts) + np.arange(n_around)
    ring_angle = np.linspace(0.0, 2 * np.pi, n_around, endpoint=False)

    def angle(points: np.ndarray) -> np.ndarray:
        return np.mod(np.arctan2(points[:, 0] - base[0], points[:, 2] - base[2]), 2 * np.pi)

    def nearest_ring(a: np.ndarray) -> np.ndarray:
        return ring[np.rint(a / (2 * np.pi / n_around)).astype(np.int64) % n_around]

    mid = 0.5 * (verts[rim[:, 0]] + verts[rim[:, 1]])
    from_rim = np.stack([rim[:, 1], rim[:, 0], nearest_ring(angle(mid))], axis=1)
    neck_angle = angle(verts[neck])
    ring_mid = np.mod(ring_angle + np.pi / n_around, 2 * np.pi)
    gap = np.abs(np.angle(np.exp(1j * (ring_mid[:, None] - neck_angle[None]))))
    closest = neck[np.argmin(gap, axis=1)]
    from_ring = np.stack([ring, np.roll(ring, -1), closest], axis=1)
    faces = np.concatenate([faces, tf + len(verts), from_rim, from_ring])
    return np.concatenate([verts, tv]), faces


def fragments(points: np.ndarray, normals: np.ndarray, rng: np.random.Generator, n: int | None = None,
              size_m: tuple[float, float] = (0.004, 0.012), offset_m: tuple[float, float] = (0.01, 0.04)
              ) -> tuple[np.ndarray, np.ndarray]:
    """Small floating patches near the head (dust, stray hair, reflections): ``n`` (3-6) randomly
    rotated 3 x 3 vertex grids of side ``size_m``, each ``offset_m`` out along the normal of a random
    head point. Returns their (9n, 3) vertices and (8n, 3) faces (indices from 0)."""
    n = int(rng.integers(3, 7)) if n is None else n
    g = np.linspace(-0.5, 0.5, 3)
    grid = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    grid = np.concatenate([grid, np.zeros((9, 1))], axis=1)
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    pick = rng.integers(len(points), size=n)
    centre = points[pick] + normals[pick] * rng.uniform(*offset_m, n)[:, None]
    size = rng.uniform(*size_m, n)
    verts = np.einsum("nij,pj->npi", q, grid) * size[:, None, None] + centre[:, None]
    cell = ss._grid_faces(3, 3, wrap=False)
    faces = (cell[None] + 9 * np.arange(n)[:, None, None]).reshape(-1, 3)
    return verts.reshape(-1, 3), faces


def decimate(verts: np.ndarray, faces: np.ndarray, target_faces: int = MAX_FACES) -> tuple[np.ndarray, np.ndarray]:
    """About ``target_faces`` faces when there are more: quadric error decimation (`fast_simplification`),
    as scanner software reduces a dense reconstruction: flat regions lose most vertices, edges and folds keep
    theirs."""
    import fast_simplification

    if len(faces) <= target_faces:
        return verts, faces
    v, f = fast_simplification.simplify(verts, faces, target_reduction=1.0 - target_faces / len(faces))
    return np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)


def normal_noise(verts: np.ndarray, faces: np.ndarray, rng: np.random.Generator, sigma_m: float = 0.2e-3) -> np.ndarray:
    """(V, 3) the vertices moved along their normals by N(0, ``sigma_m``)."""
    return verts + vertex_normals_np(verts, faces) * rng.normal(0.0, sigma_m, len(verts))[:, None]


def stress_scan(assets: FlameAssets, truth: np.ndarray, rng: np.random.Generator, *,
                target_faces: int = STRESS_FACES, max_faces: int = MAX_FACES) -> tuple[np.ndarray, np.ndarray]:
    """A raw-scan-like mesh of the detailed FLAME-topology ``truth`` (metres, FLAME frame): the steps of
    the module docstring in order. Returns (P, 3) float64 metres and (F, 3) int64 faces, shuffled."""
    flame_faces = assets.model.faces
    verts, faces = ss.subdivide_until(truth, flame_faces, target_faces)
    hair = hair_mask(verts, truth, np.asarray(assets.masks.get("scalp", []), dtype=np.int64), rng)
    verts = hair_cap(verts, faces, hair, rng)
    centre = truth.mean(axis=0) + np.array([0.0, 0.0, 0.03])
    keep = visible_faces(verts, faces, rig_cameras(centre))
    keep &= punch_holes(verts, faces, *hole_centres(assets, truth, rng))
    y_cut = truth[:, 1].min() + rng.uniform(0.01, 0.025)
    keep &= cut_neck(verts, faces, y_cut)
    verts, faces = drop_unused_vertices(verts, faces[keep])
    verts, faces = bridge_holes(verts, faces, rng)
    verts, faces = decimate(verts, faces, max_faces)
    head_normals = vertex_normals_np(verts, faces)
    verts, faces = torso_bridge(verts, faces, y_cut, rng)
    fv, ff = fragments(verts[: len(head_normals)], head_normals, rng)
    faces = np.concatenate([faces, ff + len(verts)])
    verts = np.concatenate([verts, fv])
    verts = normal_noise(verts, faces, rng)
    perm = rng.permutation(len(verts))
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return verts[perm], inverse[faces]
