"""All samples of one registered scan: rendered views and real (photo) views, encoded to shard members.

Everything is expressed in the FLAME frame of the registration (the similarity found by registration
is undone), so cameras in the metadata are metric FLAME-frame cameras like the ones fitting uses.
The raw scan (with its texture, hair and clutter) gives the RGB of rendered views and the occlusion
flags; the registration gives the targets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from p3dmm.flame.cameras import Cameras
from p3dmm.flame.render import RayCaster, interpolate
from p3dmm.flame.scan import ScanGeometry
from p3dmm.pipeline.registered import Registered
from p3dmm.pipeline.render.appearance import linear_texture, pixel_albedo, render_photo, sample_look
from p3dmm.pipeline.render.photos import face_crop_intrinsics, read_image, resample_photo
from p3dmm.pipeline.render.targets import render_targets
from p3dmm.pipeline.render.views import ViewConfig, sample_views
from p3dmm.pipeline.shards.format import encode_flags, encode_sample

OCCLUSION_MARGIN_M = 0.005
"""Scan surface this far in front of the FLAME surface (hair, hands) hides the target pixel."""
MAX_PHOTO_YAW_DEG = 75.0
"""Photos whose camera sees the face from further round than this are not used."""


def stable_unit(*parts: object) -> float:
    """A hash of `parts` mapped to [0, 1): the same on every machine and Python run."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _seed(global_seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([global_seed, int(stable_unit("sample", key) * 2**62)])


def _camera_meta(camera: Cameras) -> dict:
    return {"K": camera.K[0].tolist(), "R": camera.R[0].tolist(), "t": camera.t[0].tolist(),
            "size": list(camera.image_size)}


def _flame_meta(params: dict) -> dict:
    return {k: params[k] for k in ("shape", "expression", "pose", "translation")}


def _pixel_normals(caster: RayCaster | None, hits) -> np.ndarray | None:
    if caster is None:
        return None
    n = interpolate(hits, caster.vertex_normals, caster.faces)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def choose_photos(cameras: Sequence, reg: Registered, count: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Up to `count` photos that see the face, spread evenly over yaw: [(camera index, R, t) FLAME frame]."""
    centre = reg.vertices.mean(axis=0)
    forward = reg.head_rotation[:, 2]
    usable = []
    for i, cam in enumerate(cameras):
        R = np.asarray(cam.R) @ reg.rotation  # x_cam = R x_scan + t, x_scan = s R_sim x + t_sim
        t = (np.asarray(cam.R) @ reg.translation + np.asarray(cam.t)) / reg.scale
        position = -R.T @ t
        view = position - centre
        angle = np.degrees(np.arccos(np.clip(view @ forward / np.linalg.norm(view), -1, 1)))
        if angle <= MAX_PHOTO_YAW_DEG:
            side = np.sign((view @ reg.head_rotation[:, 0]) or 1.0)
            usable.append((side * angle, i, R, t))
    usable.sort(key=lambda u: u[0])
    if len(usable) > count:
        picks = np.linspace(0, len(usable) - 1, count).round().astype(int)
        usable = [usable[k] for k in picks]
    return [(i, R, t) for _, i, R, t in usable]


def render_scan_samples(specs: Sequence, reg: Registered, scan: ScanGeometry, assets, region_faces: np.ndarray,
                        config, skipped: list[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, members) for each spec of one scan, in order; a photo spec without a usable photo is skipped."""
    size = config.size
    faces = assets.model.faces
    record = scan.record
    reg_caster = RayCaster(reg.vertices, faces)
    scan_caster = RayCaster(reg.to_flame(scan.vertices), scan.faces) if scan.faces is not None else None
    texture = linear_texture(read_image(record.texture)) if record.texture and scan.uv is not None else None

    region_v = np.unique(faces[region_faces])
    face_points = reg.vertices[region_v]
    centre = face_points.mean(axis=0)
    extent = float(np.max(face_points.max(axis=0) - face_points.min(axis=0)))
    view_config = ViewConfig(**config.view)
    photos = choose_photos(scan.cameras, reg, config.photos) if any(s.kind == "photo" for s in specs) else []
    base_meta = {"scan_id": record.scan_id, "dataset": record.dataset, "subject": specs[0].subject,
                 "expression": record.expression, "flame": _flame_meta(reg.params),
                 "head_rotation": reg.head_rotation.tolist()}

    for spec in specs:
        rng = _seed(config.seed, spec.key)
        outside = None
        if spec.kind == "render":
            camera, angles = sample_views(rng, 1, centre, reg.head_rotation, extent, size, view_config)
            extra = {"angles": angles[0].tolist()}
        else:
            if spec.index >= len(photos):
                skipped.append(spec.key)
                continue
            index, R, t = photos[spec.index]
            view = scan.cameras[index]
            fill = rng.uniform(*view_config.fill)
            K_crop = face_crop_intrinsics(np.asarray(view.K), R, t, face_points, size, fill)
            camera = Cameras(K=torch.from_numpy(K_crop)[None], R=torch.from_numpy(R)[None],
                             t=torch.from_numpy(t)[None], image_size=(size, size))
            rgb, inside = resample_photo(read_image(view.image), np.asarray(view.K), view.distortion, K_crop, size)
            outside = ~inside
            extra = {"photo": view.image}
        targets = render_targets(reg_caster, camera, reg.head_rotation, assets.uv.vt, assets.uv.ft, region_faces)
        occluded = None
        if scan_caster is not None:
            hits = scan_caster.cast(camera)
            occluded = hits.mask & targets.mask & (hits.depth < targets.depth - OCCLUSION_MARGIN_M)
            if spec.kind == "render":
                albedo = pixel_albedo(hits, scan_caster.faces, face_uv=scan.uv, texture=texture,
                                      vertex_colors=scan.vertex_colors)
                look = sample_look(rng)
                rgb = render_photo(hits, _pixel_normals(scan_caster, hits), albedo, look, rng)
                extra["look"] = look.to_dict()
        elif spec.kind == "render":  # a point cloud: shade the registration instead
            hits = reg_caster.cast(camera)
            look = sample_look(rng)
            rgb = render_photo(hits, _pixel_normals(reg_caster, hits), pixel_albedo(hits, faces), look, rng)
            extra["look"] = look.to_dict()
        flags = encode_flags(targets.mask, targets.face_mask, occluded, outside)
        meta = {**base_meta, "key": spec.key, "split": spec.split, "kind": spec.kind, "index": spec.index,
                "camera": _camera_meta(camera), **extra}
        yield spec.key, encode_sample(spec.key, rgb, targets.normal, targets.uv, flags, targets.depth, meta)
