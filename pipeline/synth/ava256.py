"""Synthetic Ava-256 captures: zipped tracked meshes, head poses, 3D keypoints, transposed calibration.

Why: Ava-256 has no raw scans, only per-frame tracked meshes of its own topology, stored inside zips,
in head-local mm, with faces shipped separately (``assets/face_topology.obj`` in the code repo), head
poses to a world frame, world-frame keypoints and a calibration whose K and T are stored transposed at a
resolution the released images do not have. Each of these is a way to load a frame wrongly; this
generator reproduces them around a FLAME head whose truth we keep.

Frames (column vectors):
    head-local mm = 1000 x_flame (FLAME axes; the FLAME translation parameter is the head-local offset).
    world mm: x_world = H[:, :3] v + H[:, 3] (``head_pose/<frame>.txt``, H random per frame).
    camera: x_cam = R x_world + t (mm), stored as T = [[R, t], [0, 1]]^T; K stored as K^T at 4096 (H) x
    2668 (W); images are written at (4096, 2668) / image_downscale with u' + 0.5 = s (u + 0.5).

Topology: FLAME's skin faces subdivided once (a different vertex count and order than FLAME); FLAME's
eyeball vertices stay in the vertex array but no face uses them, as Ava-256's eyeballs and mouth interior.
Keypoints: ids 0..67 are the 68 iBUG points (FLAME's frontal landmarks, in the truth file), ids 68.. are other surface points; rows are
shuffled. One listed frame per capture has no files (as ~0.1% of real frames).

Stress setting (``stress=True``, docs/datasets.md "Stress setting"): hard parameters, the detailed truth, and
of :func:`p3dmm.pipeline.synth.stress.stress_scan` what a tracked mesh can have (:func:`stress_frame`): the
hair cap and the normal noise. Holes, unseen parts, the neck cut, bridges, torso, fragments, decimation and
a shuffled vertex order would each change the vertex count or the faces, which every frame shares with
``face_topology.obj``; a tracker's output has none of them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation

from p3dmm.flame.assets import FlameAssets, UVLayout
from p3dmm.flame.cameras import Cameras, look_at
from p3dmm.flame.files import write_uv_obj
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.render import render_shaded
from p3dmm.pipeline.synth import stress as st
from p3dmm.pipeline.synth.scans import (
    HAIR_COLORS,
    add_detail,
    posed_truth,
    sample_params,
    skin_colors,
    write_truth,
)

from .facescape_mview import distort_image

CALIBRATION_SIZE = (4096, 2668)
"""(H, W) the calibration's K refers to."""
BACKGROUND = (40, 190, 70)
N_EXTRA_KEYPOINTS = 20


def tracked_topology(assets: FlameAssets, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ava-like topology from FLAME: (order (V',) index map, faces (F', 3), uv (V', 2)).

    ``order`` maps tracked vertex i to a row of the once-subdivided FLAME vertex array, so
    ``subdivided(verts)[order]`` gives a frame's tracked mesh; eyeball rows are included but unreferenced.
    """
    model = assets.model
    eyes = np.concatenate([assets.masks.get(k, np.zeros(0, np.int64)) for k in ("left_eyeball", "right_eyeball")])
    skin = model.faces[~np.isin(model.faces, eyes).any(axis=1)]
    _, f_sub = trimesh.remesh.subdivide(model.v_template, skin)
    uv3 = np.concatenate([assets.uv.vertex_uv, np.zeros((model.num_vertices, 1))], axis=1)
    uv_sub, _ = trimesh.remesh.subdivide(uv3, skin)
    order = np.random.default_rng(seed).permutation(len(uv_sub))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return order, inverse[f_sub], uv_sub[order, :2]


def subdivided(verts: np.ndarray, assets: FlameAssets) -> np.ndarray:
    """The once-subdivided vertex array of a posed FLAME mesh (same edge order as :func:`tracked_topology`)."""
    eyes = np.concatenate([assets.masks.get(k, np.zeros(0, np.int64)) for k in ("left_eyeball", "right_eyeball")])
    skin = assets.model.faces[~np.isin(assets.model.faces, eyes).any(axis=1)]
    v_sub, _ = trimesh.remesh.subdivide(verts, skin)
    return v_sub


def eyeball_faces(assets: FlameAssets, order: np.ndarray) -> np.ndarray:
    """(E, 3) FLAME's eyeball faces in tracked vertex indices (``order`` from :func:`tracked_topology`).

    The tracked topology keeps the eyeball vertices (the once-subdivided array starts with FLAME's
    vertices) but no face uses them; photos of a stress frame still need eyes in the sockets.
    """
    eyes = np.concatenate([assets.masks.get(k, np.zeros(0, np.int64)) for k in ("left_eyeball", "right_eyeball")])
    faces = assets.model.faces[np.isin(assets.model.faces, eyes).any(axis=1)]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse[faces]


def stress_frame(assets: FlameAssets, truth: np.ndarray, order: np.ndarray, faces: np.ndarray,
                 photo_faces: np.ndarray, colors: np.ndarray, hair_color: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The tracked mesh of a stress frame (metres, head-local, tracked order) and the scene its photos render.

    A tracker fits its fixed topology to the surface the cameras reconstruct, hair included: the tracked
    vertices of the detailed ``truth`` get :func:`stress.hair_cap` over a ragged :func:`stress.hair_mask`
    (a new hairline per frame), then :func:`stress.normal_noise` (0.2 mm, tracking jitter; unused eyeball
    vertices have no normal and stay). The photos render the capped surface before the noise with
    ``photo_faces`` (the topology's faces plus the eyeballs), coloured from ``colors`` (V, 3) per FLAME
    vertex, hair vertices in ``hair_color``.
    """
    tracked = subdivided(truth, assets)[order]
    scalp = np.asarray(assets.masks.get("scalp", []), dtype=np.int64)
    hair = st.hair_mask(tracked, truth, scalp, rng)
    capped = st.hair_cap(tracked, faces, hair, rng)
    tracked_colors = subdivided(np.asarray(colors, dtype=np.float64), assets)[order]
    tracked_colors[hair] = hair_color
    return st.normal_noise(capped, faces, rng), (capped, photo_faces, tracked_colors)


def vertex_only_ply(verts: np.ndarray) -> bytes:
    """A binary little-endian PLY with only a vertex element (float32 x, y, z), as Ava-256 ships."""
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\nend_header\n")
    return header.encode("ascii") + np.asarray(verts, "<f4").tobytes()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _dome_cameras(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n world-mm cameras ~1 m from the origin, yaw ±45°: (K (n, 3, 3) at CALIBRATION_SIZE, R, t)."""
    yaw = np.radians(np.linspace(-45, 45, n) + rng.uniform(-5, 5, n))
    pitch = np.radians(rng.uniform(-10, 10, n))
    eye = 1000.0 * np.stack([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)], axis=1)
    R, t = look_at(torch.as_tensor(eye), torch.zeros(n, 3, dtype=torch.float64),
                   torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64).expand(n, 3))
    K = np.zeros((n, 3, 3))
    f = 0.6 * CALIBRATION_SIZE[0] * 1000.0 / 300.0 * rng.uniform(0.95, 1.05, n)
    K[:, 0, 0] = f
    K[:, 1, 1] = f
    K[:, 0, 2] = (CALIBRATION_SIZE[1] - 1) / 2 + rng.uniform(-20, 20, n)
    K[:, 1, 2] = (CALIBRATION_SIZE[0] - 1) / 2 + rng.uniform(-20, 20, n)
    K[:, 2, 2] = 1.0
    return K, R.numpy(), t.numpy()


def scale_intrinsics(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """K for an image resized from (H, W) ``from_size`` to ``to_size``: f' = s f, c' + 0.5 = s (c + 0.5)
    per axis (pixel centres at integers, image edges kept)."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    out = np.array(K, dtype=np.float64)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    return out


def write_synthetic(out: str | os.PathLike, assets: FlameAssets, *, subjects: int, expressions: int,
                    seed: int, stress: bool = False) -> list[str]:
    """The dataset registry's uniform writer: captures SYN000.. with `expressions` frames each."""
    return write_ava256(out, assets, [f"SYN{i:03d}" for i in range(subjects)], frames=expressions, seed=seed,
                        stress=stress)


def write_ava256(
    out: str | os.PathLike,
    assets: FlameAssets,
    subjects: Sequence[str],
    frames: int,
    seed: int,
    cameras: int = 3,
    image_downscale: int = 16,
    *,
    stress: bool = False,
) -> list[str]:
    """Write Ava-256-like captures ``<out>/20230308--1352--<SID>/decoder/`` and ``<out>/assets/face_topology.obj``.

    Args:
        out: root folder. Truth goes to ``<out>/_truth/ava256__<SID>__<frame:06d>.npz`` (FLAME frame,
            metres, i.e. the adapter's output frame).
        assets: a FLAME model with masks and UVs (the synthetic one in tests).
        subjects: capture ids such as "BDF920".
        frames: frames with files per capture; one more frame is listed in frame_list.csv without files.
        seed: all randomness.
        cameras: cameras in the calibration, each with an image zip.
        image_downscale: images are CALIBRATION_SIZE // this (4 gives the released 1024 x 667).
        stress: hard parameters (:func:`stress.stress_params`), the detailed truth, and :func:`stress_frame`:
            tracked meshes with a hair cap and 0.2 mm normal noise (instead of 0.1 mm isotropic noise),
            photos of the hair-capped head; per capture also a hair colour.

    Returns:
        scan ids "ava256/<SID>/<frame:06d>" of the frames with files.
    """
    if frames < 1 or cameras < 1 or image_downscale < 1:
        raise ValueError(f"write_ava256: frames, cameras and image_downscale must be >= 1, got "
                         f"{frames}, {cameras}, {image_downscale}")
    if assets.uv is None or not assets.masks:
        raise ValueError("write_ava256: assets need UVs and masks (load_assets of a full FLAME folder)")
    rng = np.random.default_rng(seed)
    out = Path(out)
    order, faces, uv = tracked_topology(assets, seed)
    image_size = (CALIBRATION_SIZE[0] // image_downscale, round(CALIBRATION_SIZE[1] / image_downscale))
    (out / "assets").mkdir(parents=True, exist_ok=True)
    template = subdivided(assets.model.v_template, assets)[order] * 1000.0
    photo_faces = np.concatenate([faces, eyeball_faces(assets, order)]) if stress else faces
    sample = st.stress_params if stress else sample_params
    write_uv_obj(out / "assets" / "face_topology.obj", template, faces,
                 UVLayout(vt=uv, ft=faces, vertex_uv=uv))
    ids = []
    for sid in subjects:
        decoder = out / f"20230308--1352--{sid}" / "decoder"
        for sub in ("kinematic_tracking", "head_pose", "keypoints_3d", "image"):
            (decoder / sub).mkdir(parents=True, exist_ok=True)
        K, R_w, t_w = _dome_cameras(rng, cameras)
        cam_ids = [str(401031 + 17 * i) for i in range(cameras)]
        dists = rng.uniform(-0.03, 0.03, (cameras, 4)) * np.array([1.0, 1.0, 0.05, 0.05])
        calib = {"KRT": [
            {"cameraId": cid, "K": K[i].T.tolist(), "distortion": dists[i].tolist(),
             "distortionModel": "radial-tangential",
             "T": np.block([[R_w[i], t_w[i][:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]).T.tolist()}
            for i, cid in enumerate(cam_ids)]}
        (decoder / "camera_calibration.json").write_text(json.dumps(calib, indent=1))

        identity = sample(rng, assets.model.num_shape, assets.model.num_expression)["shape"]
        colors = skin_colors(assets, assets.model.v_template, rng)
        offset = np.array([0.0, 0.03, -0.02]) + rng.uniform(-0.01, 0.01, 3)
        if stress:
            hair_color = np.asarray(HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))])
        frame_ids = [100 + 5 * i for i in range(frames + 1)]
        missing = frame_ids[len(frame_ids) // 2]
        with open(decoder / "frame_list.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["seg_id", "frame_id"])
            for i, fid in enumerate(frame_ids):
                writer.writerow(["EXP_neutral_peak" if i == 0 else "EXP_free_face", fid])
        zips = {name: zipfile.ZipFile(decoder / rel, "w", zipfile.ZIP_DEFLATED) for name, rel in (
            ("mesh", "kinematic_tracking/registration_vertices.zip"), ("pose", "head_pose/head_pose.zip"),
            ("kpt", "keypoints_3d/keypoints_3d.zip"))}
        images = {cid: zipfile.ZipFile(decoder / "image" / f"cam{cid}.zip", "w") for cid in cam_ids}
        try:
            for fid in frame_ids:
                if fid == missing:
                    continue
                params = sample(rng, assets.model.num_shape, assets.model.num_expression)
                params["shape"] = identity
                params["translation"] = offset
                truth = posed_truth(assets, params)
                if stress:
                    truth = add_detail(truth, assets.model.faces, rng)
                lmk = frontal_landmarks(assets, truth)
                scan_id = f"ava256/{sid}/{fid:06d}"
                write_truth(out, scan_id, truth, 1.0, params, landmarks=lmk)
                if stress:
                    local_m, scene = stress_frame(assets, truth, order, faces, photo_faces, colors, hair_color, rng)
                    local_mm = local_m * 1000.0
                else:
                    local_mm = subdivided(truth, assets)[order] * 1000.0
                    local_mm = local_mm + rng.normal(0.0, 0.1, local_mm.shape)
                    scene = (truth, assets.model.faces, colors)
                scene_v, scene_f, scene_c = scene  # what the photos show
                H_R = Rotation.from_rotvec(rng.uniform(-0.3, 0.3, 3)).as_matrix()
                H_t = rng.normal(0.0, 30.0, 3)
                zips["mesh"].writestr(f"{fid:06d}.ply", vertex_only_ply(local_mm))
                pose_txt = "\n".join(" ".join(f"{x:.9g}" for x in row) for row in np.c_[H_R, H_t]) + "\n"
                zips["pose"].writestr(f"{fid:06d}.txt", pose_txt)
                extra = truth[rng.choice(len(truth), N_EXTRA_KEYPOINTS, replace=False)]
                pts_local = np.concatenate([lmk, extra]) * 1000.0
                pts_world = pts_local @ H_R.T + H_t + rng.normal(0.0, 0.5, pts_local.shape)
                n = len(pts_world)
                rows = np.c_[np.arange(n), pts_world, rng.uniform(0.6, 1.0, n), rng.integers(3, 30, n)]
                zips["kpt"].writestr(f"{fid:06d}.npy", _npy_bytes(rows[rng.permutation(n)]))
                for i, cid in enumerate(cam_ids):
                    R = R_w[i] @ H_R
                    t = (R_w[i] @ H_t + t_w[i]) / 1000.0
                    k_small = scale_intrinsics(K[i], CALIBRATION_SIZE, image_size)
                    cam = Cameras(K=torch.as_tensor(k_small)[None], R=torch.as_tensor(R)[None],
                                  t=torch.as_tensor(t)[None], image_size=image_size)
                    image = render_shaded(scene_v, scene_f, cam, scene_c, background=BACKGROUND)
                    image = distort_image(image, k_small, dists[i], BACKGROUND)
                    buf = io.BytesIO()
                    Image.fromarray(image).save(buf, format="AVIF", quality=90)
                    images[cid].writestr(f"cam{cid}/{fid:06d}.avif", buf.getvalue())
                ids.append(scan_id)
        finally:
            for zf in (*zips.values(), *images.values()):
                zf.close()
    return ids
