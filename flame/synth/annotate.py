"""Semantic annotations of the synthetic head: the 68 iBUG landmarks (static and dynamic contour) and
the 14 FLAME_masks regions, defined from the anatomy so they sit where a person would put them.

iBUG numbering with FLAME's axes: points 0..16 run along the jaw from the subject's right (-x) to
their left (+x); 17..21 right brow, 22..26 left brow, 27..35 nose, 36..41 right eye, 42..47 left eye,
48..59 outer lips, 60..67 inner lips.
"""

from __future__ import annotations

import numpy as np
import trimesh

from p3dmm.flame.assets import LandmarkEmbedding
from p3dmm.flame.synth.head import CENTRE, HeadMesh, ray_surface
from p3dmm.flame.synth.rig import jaw_weight

N_CONTOUR = 17
N_DYNAMIC_ROWS = 79


def _on_surface(head: HeadMesh, points: np.ndarray) -> np.ndarray:
    """Push anchor points radially onto the skin surface."""
    d = points - CENTRE
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return CENTRE + ray_surface(head.blobs, d)[:, None] * d


def _embed(mesh: trimesh.Trimesh, points: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(face index, barycentric) of the closest allowed face to each point."""
    sub = mesh.submesh([np.flatnonzero(allowed)], append=True)
    closest, _, tri = trimesh.proximity.closest_point(sub, points)
    faces = np.flatnonzero(allowed)[tri]
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[faces], closest)
    bary = np.clip(bary, 0.0, 1.0)
    return faces.astype(np.int64), bary / bary.sum(axis=1, keepdims=True)


def inner_landmark_points(head: HeadMesh) -> np.ndarray:
    """(51, 3) anchors of iBUG points 17..67 on the template."""
    a = head.anatomy
    ex, ey, ez = a.eye_centre
    ew, eh = a.eye_opening
    m, w = a.mouth_y, a.mouth_half_width
    tip = np.array(a.nose_tip)
    pts = []
    brow = [(-0.052, ey + 0.016), (-0.044, ey + 0.023), (-0.034, ey + 0.026), (-0.024, ey + 0.025),
            (-0.014, ey + 0.021)]
    pts += [(bx, by, 0.09) for bx, by in brow]
    pts += [(-bx, by, 0.09) for bx, by in brow[::-1]]
    for t in np.linspace(0, 1, 4):  # 27..30 bridge to tip
        pts.append((0.0, ey - 0.002 + t * (tip[1] + 0.002 - ey), 0.1))
    for dx, dy in ((-0.013, 0.0), (-0.007, -0.003), (0.0, -0.005), (0.007, -0.003), (0.013, 0.0)):
        pts.append((dx, tip[1] - 0.013 + dy, 0.1))

    def eye(cx, order):
        ring = {"outer": (cx + np.sign(cx) * ew * 1.02, ey), "inner": (cx - np.sign(cx) * ew * 1.02, ey)}
        up = lambda t: (cx + t * ew, ey + eh * 1.12 * np.sqrt(1 - t * t))  # noqa: E731
        dn = lambda t: (cx + t * ew, ey - eh * 1.12 * np.sqrt(1 - t * t))  # noqa: E731
        s = np.sign(cx)
        seq = {
            "right": [ring["outer"], up(-0.45 * -s), up(0.45 * -s), ring["inner"], dn(0.45 * -s), dn(-0.45 * -s)],
            "left": [ring["inner"], up(-0.45 * s), up(0.45 * s), ring["outer"], dn(0.45 * s), dn(-0.45 * s)],
        }[order]
        return [(px, py, ez + 0.03) for px, py in seq]

    pts += eye(-ex, "right") + eye(ex, "left")
    outer = [(-w, 0.0), (-0.6 * w, 0.0085), (-0.25 * w, 0.0115), (0.0, 0.0105), (0.25 * w, 0.0115),
             (0.6 * w, 0.0085), (w, 0.0), (0.6 * w, -0.012), (0.25 * w, -0.0155), (0.0, -0.016),
             (-0.25 * w, -0.0155), (-0.6 * w, -0.012)]
    inner = [(-0.88 * w, 0.0), (-0.45 * w, 0.0016), (0.0, 0.0016), (0.45 * w, 0.0016), (0.88 * w, 0.0),
             (0.45 * w, -0.0016), (0.0, -0.0016), (-0.45 * w, -0.0016)]
    pts += [(px, m + py, 0.1) for px, py in outer + inner]
    return _on_surface(head, np.asarray(pts, dtype=np.float64))


def contour_rings(head: HeadMesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Skin points and horizontal normals along the 17 jaw-contour levels, sampled over azimuth.

    Returns thetas (T,), frontal index (17,), points (17, T, 3) and normals (17, T, 3).
    """
    a = head.anatomy
    k = np.arange(N_CONTOUR)
    frontal_theta = np.radians(-78.0 + k * (156.0 / (N_CONTOUR - 1)))
    top, bottom = a.mouth_y + 0.045, a.chin[1] - 0.015
    heights = top - (top - bottom) * np.sin(np.pi * k / (N_CONTOUR - 1)) ** 0.8
    thetas = np.linspace(-np.pi * 0.75, np.pi * 0.75, 271)
    probe = np.stack(np.broadcast_arrays(np.sin(thetas)[None], heights[:, None] / 0.1, np.cos(thetas)[None]), -1)
    rings = _on_surface(head, probe.reshape(-1, 3)).reshape(N_CONTOUR, len(thetas), 3)
    normals = np.cross(np.array([0.0, -1.0, 0.0]), np.gradient(rings, axis=1))  # outward
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    frontal = np.argmin(np.abs(thetas[None] - frontal_theta[:, None]), axis=1)
    return thetas, frontal, rings, normals


def contour_points(rings_info, yaw_deg: float) -> np.ndarray:
    """(17, 3) jaw-contour points seen by a camera that the head has turned `yaw_deg` away from.

    A point stays at its frontal place while visible and slides to the silhouette once it would
    turn out of sight, which is what the dynamic contour rows of FLAME encode.
    """
    thetas, frontal, rings, normals = rings_info
    cam_theta = np.radians(-yaw_deg)
    view = np.array([np.sin(cam_theta), 0.0, np.cos(cam_theta)])
    out = np.empty((N_CONTOUR, 3))
    for i in range(N_CONTOUR):
        visible = normals[i] @ view > 0.05
        j = int(frontal[i])
        step = 1 if thetas[j] < cam_theta else -1
        while not visible[j] and 0 <= j + step < len(thetas):
            j += step
        out[i] = rings[i, j]
    return out


def dynamic_yaw(row: int) -> float:
    """The head yaw (degrees) that FLAME's dynamic-landmark rule maps to `row`."""
    return -float(row) if row <= 39 else float(row - 39)


def landmark_embedding(head: HeadMesh) -> LandmarkEmbedding:
    mesh = trimesh.Trimesh(head.verts, head.faces, process=False)
    skin_faces = (head.eyeball[head.faces] == 0).all(axis=1)
    # lip points must sit on the lip that carries them: upper lip with the head, lower with the jaw
    on_jaw = (jaw_weight(head)[head.faces] > 0.5).all(axis=1)
    off_jaw = (jaw_weight(head)[head.faces] < 0.5).all(axis=1)
    points = inner_landmark_points(head)
    static_faces = np.empty(len(points), dtype=np.int64)
    static_bary = np.empty((len(points), 3))
    lower_lip = np.array([i - 17 for i in (*range(55, 60), *range(65, 68))])
    upper_lip = np.array([i - 17 for i in (*range(49, 54), *range(61, 64))])
    rest = np.setdiff1d(np.arange(len(points)), np.concatenate([lower_lip, upper_lip]))
    for idx, allowed in ((lower_lip, skin_faces & on_jaw), (upper_lip, skin_faces & off_jaw), (rest, skin_faces)):
        static_faces[idx], static_bary[idx] = _embed(mesh, points[idx], allowed)
    # inner lip points sit on the contact line itself, whatever the mesh resolution
    for lm_ids, side, allowed in (((61, 62, 63), 1, off_jaw), ((65, 66, 67), -1, on_jaw)):
        seam = np.flatnonzero(head.lip_side == side)
        for i in lm_ids:
            vertex = seam[np.argmin(np.abs(head.verts[seam, 0] - points[i - 17, 0]))]
            candidates = np.flatnonzero((head.faces == vertex).any(axis=1) & allowed)
            face = candidates[np.argmin(np.abs(head.verts[head.faces[candidates]].mean(1)[:, 0] - points[i - 17, 0]))]
            static_faces[i - 17] = face
            static_bary[i - 17] = np.where(head.faces[face] == vertex, 0.9, 0.05)
    dyn_faces = np.empty((N_DYNAMIC_ROWS, N_CONTOUR), dtype=np.int64)
    dyn_bary = np.empty((N_DYNAMIC_ROWS, N_CONTOUR, 3))
    rings = contour_rings(head)
    points = np.concatenate([contour_points(rings, dynamic_yaw(row)) for row in range(N_DYNAMIC_ROWS)])
    faces, bary = _embed(mesh, points, skin_faces)
    dyn_faces[:], dyn_bary[:] = faces.reshape(N_DYNAMIC_ROWS, N_CONTOUR), bary.reshape(N_DYNAMIC_ROWS, N_CONTOUR, 3)
    return LandmarkEmbedding(
        static_faces=static_faces,
        static_bary=static_bary,
        dynamic_faces=dyn_faces,
        dynamic_bary=dyn_bary.astype(np.float32),
        full_faces=np.concatenate([dyn_faces[0], static_faces]),
        full_bary=np.concatenate([dyn_bary[0], static_bary]).astype(np.float32),
    )


def region_masks(head: HeadMesh) -> dict[str, np.ndarray]:
    """The 14 FLAME_masks regions as sorted int64 vertex indices."""
    v, a = head.verts, head.anatomy
    x, y, z = v.T
    skin = head.eyeball == 0
    front = skin & (z > 0.02)
    theta = np.degrees(np.arctan2(x, z))
    ex, ey, _ = a.eye_centre
    m = a.mouth_y
    tip = np.array(a.nose_tip)
    ear = {s: skin & (np.linalg.norm((v - np.array(a.ear_centre) * np.array([s, 1, 1])) / np.array(
        [0.02, 0.036, 0.024]), axis=1) < 1.0) & (s * x > 0.06) for s in (1, -1)}
    neck = skin & ((y < a.chin[1] - 0.012) | ((y < -0.07) & (z < 0.0)))
    eye_region = {s: front & (np.abs(x - s * ex) < 0.026) & (y > ey - 0.017) & (y < ey + 0.03) for s in (1, -1)}
    nose = front & (np.abs(x) < 0.022) & (y < ey + 0.006) & (y > tip[1] - 0.022) & (z > 0.075)
    lip_y = np.where(y > m, (y - m) / 0.0125, (m - y) / 0.0165)  # upper lip thinner than the lower
    lips = front & ((x / (a.mouth_half_width + 0.002)) ** 2 + lip_y**2 < 1.0) & (z > 0.07)
    forehead = front & (y > ey + 0.03) & (y < 0.095) & (np.abs(theta) < 45)
    face = skin & (np.abs(theta) < 84) & (y < 0.085) & ~neck & ~ear[1] & ~ear[-1]
    scalp = skin & ((y > 0.095) | ((np.abs(theta) > 100) & (y > -0.03)))
    boundary = np.zeros(len(v), dtype=bool)
    boundary[head.boundary] = True
    masks = {
        "eye_region": eye_region[1] | eye_region[-1] | (front & (np.abs(x) < 0.012) & (np.abs(y - ey - 0.01) < 0.02)),
        "neck": neck,
        "left_eyeball": head.eyeball == 1,
        "right_eyeball": head.eyeball == 2,
        "right_ear": ear[-1],
        "right_eye_region": eye_region[-1],
        "forehead": forehead,
        "lips": lips,
        "nose": nose,
        "scalp": scalp,
        "boundary": boundary,
        "face": face,
        "left_ear": ear[1],
        "left_eye_region": eye_region[1],
    }
    return {name: np.flatnonzero(mask).astype(np.int64) for name, mask in masks.items()}
