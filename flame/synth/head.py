"""The synthetic head's template mesh: a star-shaped surface sampled on a warped lat/long grid.

The surface is the zero level of a smooth CSG (:mod:`anatomy`), found by root finding along rays
from a centre inside the skull. Rows and columns are denser on the face, as FLAME's are. The grid
then gets FLAME's openings: two almond eye holes with separate eyeballs behind them, and a lip seam
(upper and lower lip are distinct vertices that touch at rest) so the jaw can open the mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p3dmm.flame.mesh import face_normals_np, vertex_normals_np
from p3dmm.flame.synth.anatomy import Anatomy, head_blobs
from p3dmm.flame.synth.latlong import density_warp, latlong_mesh
from p3dmm.flame.synth.sdf import Blob, evaluate

CENTRE = np.array([0.0, 0.0, 0.0])
UV_AXIS = 0.4964  # u of the face's symmetry line in the layout (FLAME's is near 0.4964 too)


@dataclass
class HeadMesh:
    """Template mesh with the labels the rig, bases, masks and landmarks are built from.

    verts (V, 3), faces (F, 3), vt (T, 2), ft (F, 3) as in FlameModelData / UVLayout.
    eyeball (V,) int8: 0 skin, 1 left eyeball (+x), 2 right eyeball.
    lip_side (V,) int8: +1 upper-lip seam vertex, -1 lower-lip seam vertex, 0 elsewhere.
    boundary (N,) int64: the open ring at the bottom of the neck.
    """

    verts: np.ndarray
    faces: np.ndarray
    vt: np.ndarray
    ft: np.ndarray
    eyeball: np.ndarray
    lip_side: np.ndarray
    boundary: np.ndarray
    anatomy: Anatomy
    blobs: list[Blob]


def directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit rays for azimuth theta (0 = forward, +pi/2 = subject's left) and elevation phi."""
    return np.stack([np.cos(phi) * np.sin(theta), np.sin(phi), np.cos(phi) * np.cos(theta)], axis=-1)


def ray_surface(blobs: list[Blob], dirs: np.ndarray, r_max_m: float = 0.24, step_m: float = 0.0025) -> np.ndarray:
    """Distance (metres) from CENTRE to the outermost surface crossing along each ray (P,): march inwards from
    r_max_m in steps of step_m, then bisect."""
    dirs = dirs.reshape(-1, 3)
    outside = np.full(len(dirs), r_max_m)
    inside = np.zeros(len(dirs))
    found = np.zeros(len(dirs), dtype=bool)
    r = r_max_m
    while r > 0 and not found.all():
        todo = ~found
        d = evaluate(blobs, CENTRE + r * dirs[todo])
        hit = d < 0
        idx = np.flatnonzero(todo)
        inside[idx[hit]] = r
        outside[idx[hit]] = r + step_m
        found[idx[hit]] = True
        r -= step_m
    for _ in range(32):
        mid = 0.5 * (inside + outside)
        d = evaluate(blobs, CENTRE + mid[:, None] * dirs)
        inside = np.where(d < 0, mid, inside)
        outside = np.where(d < 0, outside, mid)
    return 0.5 * (inside + outside)


def elevation_at_height(blobs: list[Blob], theta: np.ndarray, y: float, lo: float, hi: float) -> np.ndarray:
    """Elevation per azimuth where the surface reaches height y (the surface is star-shaped)."""
    lo = np.full(theta.shape, lo)
    hi = np.full(theta.shape, hi)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        p = CENTRE + ray_surface(blobs, directions(theta, mid))[:, None] * directions(theta, mid)
        below = p[:, 1] < y
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def grid_size(n_vertices: int) -> tuple[int, int, int]:
    """(rows, columns, vertices per eyeball) for about n_vertices in total."""
    per_eye = max(26, int(round(0.045 * n_vertices)))
    grid = n_vertices - 2 * per_eye
    cols = max(24, int(round(np.sqrt(grid * 1.3) / 2)) * 2)
    rows = max(14, int(round(grid / cols)))
    return rows, cols, per_eye


def build_head(anatomy: Anatomy, n_vertices: int) -> HeadMesh:
    blobs = head_blobs(anatomy)
    rows, cols, per_eye = grid_size(n_vertices)

    # columns: symmetric about theta = 0, denser on the face
    theta = density_warp(cols, -np.pi, np.pi, lambda t: 1 + 2.5 * np.exp(-((t / np.radians(55)) ** 2)), False)
    theta[cols // 2] = 0.0
    theta[1:] = 0.5 * (theta[1:] - theta[1:][::-1])  # exact mirror pairs j <-> cols - j

    # rows: constant elevation down to the chin, then per-column down to the neck's bottom ring
    phi_chin = np.radians(-58.0)
    phi_mouth = elevation_at_height(blobs, np.zeros(1), anatomy.mouth_y, np.radians(-50), np.radians(-5))[0]
    n_upper = int(round(rows * 0.82))
    upper = density_warp(n_upper + 1, np.pi / 2, phi_chin,
                         lambda p: 1 + 2.0 * np.exp(-(((p - np.radians(-12)) / np.radians(40)) ** 2)), True)[1:]
    k = int(np.argmin(np.abs(upper - phi_mouth)))
    upper = np.interp(upper, [phi_chin, upper[k], np.pi / 2], [phi_chin, phi_mouth, np.pi / 2])
    phi_bottom = elevation_at_height(blobs, theta, anatomy.neck_bottom_y, np.radians(-89), phi_chin)
    lower_t = np.linspace(0, 1, rows - n_upper + 1)[1:]
    phi = np.empty((rows, cols))
    phi[:n_upper] = upper[:, None]
    phi[n_upper:] = phi_chin + lower_t[:, None] * (phi_bottom[None] - phi_chin)

    dirs = directions(np.broadcast_to(theta, phi.shape), phi)
    rings = CENTRE + ray_surface(blobs, dirs).reshape(rows, cols, 1) * dirs
    top = CENTRE + ray_surface(blobs, np.array([[0.0, 1.0, 0.0]]))[0] * np.array([0.0, 1.0, 0.0])
    head = latlong_mesh(rings, top, None, (UV_AXIS - 0.49, UV_AXIS + 0.49, 0.22, 0.995), mirror_diagonals=theta < 0)
    verts, faces, ft = head.verts, head.faces, head.ft
    mouth_row = k

    # eye openings: drop the quads whose centre falls inside an almond in front of an eyeball
    centre = verts[faces].mean(axis=1)
    keep = np.ones(len(faces), dtype=bool)
    for sign in (1.0, -1.0):
        ex, ey, ez = anatomy.eye_centre[0] * sign, anatomy.eye_centre[1], anatomy.eye_centre[2]
        a, b = anatomy.eye_opening
        q = ((centre[:, 0] - ex) / a) ** 2 + ((centre[:, 1] - ey) / b) ** 2
        keep &= ~((q < 1.0) & (centre[:, 2] > ez))

    # lip seam: between the mouth corners, faces below the mouth row use duplicated vertices
    seam_cols = np.flatnonzero(np.abs(rings[mouth_row, :, 0]) < anatomy.mouth_half_width * 0.96)
    seam_cols = seam_cols[rings[mouth_row, seam_cols, 2] > 0]
    upper_ids = head.grid[mouth_row, seam_cols]
    lower_ids = len(verts) + np.arange(len(seam_cols))
    verts = np.concatenate([verts, verts[upper_ids] - [0.0, 0.0002, 0.0]])  # lips just apart, as FLAME's
    verts[upper_ids, 1] += 0.0002
    below = head.face_cell[:, 0] == mouth_row  # quads between mouth_row and mouth_row + 1
    remap = dict(zip(upper_ids.tolist(), lower_ids.tolist(), strict=True))
    faces = faces.copy()
    for f in np.flatnonzero(below):
        faces[f] = [remap.get(v, v) for v in faces[f]]

    # snap the stair-stepped rim of each opening onto its almond, on the surface
    rim = np.zeros(len(verts), dtype=bool)
    rim[faces[~keep].ravel()] = True
    rim &= np.isin(np.arange(len(verts)), faces[keep].ravel())
    for sign in (1.0, -1.0):
        ex, ey = anatomy.eye_centre[0] * sign, anatomy.eye_centre[1]
        a, b = anatomy.eye_opening
        side = rim & (np.sign(verts[:, 0]) == sign) & (verts[:, 2] > anatomy.eye_centre[2])
        dx, dy = (verts[side, 0] - ex) / a, (verts[side, 1] - ey) / b
        q = np.maximum(np.hypot(dx, dy), 1e-9)
        target = np.stack([ex + a * dx / q, ey + b * dy / q, verts[side, 2]], axis=-1)
        ray = target / np.linalg.norm(target, axis=1, keepdims=True)
        verts[side] = CENTRE + ray_surface(blobs, ray)[:, None] * ray
    faces, ft = faces[keep], ft[keep]
    lip_side = np.zeros(len(verts), dtype=np.int8)
    lip_side[upper_ids] = 1
    lip_side[lower_ids] = -1

    # eyelid rims: a soft 1 mm ridge around each opening
    normals = vertex_normals_np(verts, faces)
    for sign in (1.0, -1.0):
        ex, ey = anatomy.eye_centre[0] * sign, anatomy.eye_centre[1]
        a, b = anatomy.eye_opening
        q = np.sqrt(((verts[:, 0] - ex) / a) ** 2 + ((verts[:, 1] - ey) / b) ** 2)
        bump = 0.0011 * np.exp(-(((q - 1.0) / 0.3) ** 2)) * (verts[:, 2] > anatomy.eye_centre[2])
        verts = verts + bump[:, None] * normals

    # drop vertices no face uses any more (inside the eye openings) and renumber
    used = np.zeros(len(verts), dtype=bool)
    used[faces] = True
    new_index = np.cumsum(used) - 1
    verts, faces, lip_side = verts[used], new_index[faces], lip_side[used]
    bottom_ring = new_index[head.grid[-1]]

    # eyeballs after the skin, left (+x) then right, as in FLAME's vertex order
    vts, fts, eyeball = [head.vt], [ft], np.zeros(len(verts), dtype=np.int8)
    for label, sign, u_centre in ((1, 1.0, UV_AXIS + 0.2), (2, -1.0, UV_AXIS - 0.2)):
        centre_e = np.array(anatomy.eye_centre) * np.array([sign, 1.0, 1.0])
        eye = eyeball_mesh(centre_e, anatomy.eye_radius, per_eye, (u_centre - 0.12, u_centre + 0.12, 0.01, 0.2))
        faces = np.concatenate([faces, eye.faces + len(verts)])
        fts.append(eye.ft + sum(len(v) for v in vts))
        vts.append(eye.vt)
        verts = np.concatenate([verts, eye.verts])
        lip_side = np.concatenate([lip_side, np.zeros(len(eye.verts), dtype=np.int8)])
        eyeball = np.concatenate([eyeball, np.full(len(eye.verts), label, dtype=np.int8)])
    return HeadMesh(
        verts=verts, faces=faces.astype(np.int64), vt=np.concatenate(vts), ft=np.concatenate(fts),
        eyeball=eyeball, lip_side=lip_side, boundary=bottom_ring, anatomy=anatomy, blobs=blobs,
    )


def eyeball_mesh(centre: np.ndarray, radius: float, n: int, uv_rect):
    """A UV sphere of about n vertices whose front pole looks along +z (the gaze)."""
    n_lat = max(3, int(round(np.sqrt(n / 2))))
    n_lon = max(6, (n - 2) // n_lat // 2 * 2)  # even, so the mirror image of a vertex is a vertex
    polar = np.linspace(0, np.pi, n_lat + 2)[1:-1]  # from the front pole (+z) backwards
    azim = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    p, a = np.meshgrid(polar, azim, indexing="ij")
    # seen from the front (+z) the azimuth turns so rings are counter-clockwise outward
    rings = centre + radius * np.stack([np.sin(p) * np.cos(a), np.sin(p) * np.sin(a), np.cos(p)], axis=-1)
    front = centre + np.array([0.0, 0.0, radius])
    back = centre - np.array([0.0, 0.0, radius])
    mesh = latlong_mesh(rings, front, back, uv_rect)
    _orient_outward(mesh, centre)
    return mesh


def _orient_outward(mesh, centre: np.ndarray) -> None:
    n = face_normals_np(mesh.verts, mesh.faces)
    flip = np.einsum("fi,fi->f", n, mesh.verts[mesh.faces].mean(axis=1) - centre) < 0
    mesh.faces[flip] = mesh.faces[flip][:, ::-1]
    mesh.ft[flip] = mesh.ft[flip][:, ::-1]

