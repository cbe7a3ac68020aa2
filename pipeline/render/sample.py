"""All samples of one registered scan: rendered views and real (photo) views, encoded to shard members.

Everything is expressed in the FLAME frame of the registration (the similarity found by registration
is undone), so cameras in the metadata are metric FLAME-frame cameras like the ones fitting uses.
The raw scan (with its texture, hair and clutter) gives the RGB of rendered views and the occlusion
flags; the registration gives the targets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.cameras import Cameras
from p3dmm.flame.render import RayCaster, RayHits, pixel_normals
from p3dmm.flame.scan import ScanGeometry
from p3dmm.pipeline.registered import Registered
from p3dmm.pipeline.render.appearance import linear_texture, pixel_albedo, render_photo, sample_look
from p3dmm.pipeline.render.photos import face_crop_intrinsics, read_image, resample_photo
from p3dmm.pipeline.render.targets import TargetMaps, render_targets
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


class SampleRequest(Protocol):
    """One planned sample, as rendering needs it (the render job's SampleSpec)."""

    @property
    def key(self) -> str: ...
    @property
    def kind(self) -> str: ...  # "render" (a rendered view) or "photo" (a calibrated photo crop)
    @property
    def index(self) -> int: ...  # view index, or photo index among the chosen photos
    @property
    def split(self) -> str: ...
    @property
    def subject(self) -> str: ...


class SampleSettings(Protocol):
    """The render settings samples depend on (the render job's RenderConfig)."""

    @property
    def size(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def photos(self) -> int: ...
    @property
    def view(self) -> dict: ...  # ViewConfig fields


@dataclass(frozen=True)
class ScanContext:
    """What every sample of one scan shares, built once per scan; all in the registration's FLAME frame."""

    reg: Registered
    scan: ScanGeometry
    assets: FlameAssets
    region_faces: np.ndarray
    reg_caster: RayCaster
    scan_caster: RayCaster | None  # None for a point cloud
    texture: np.ndarray | None  # linear texture of the scan, if it has one
    face_points: np.ndarray  # registered vertices of the face region
    centre: np.ndarray
    extent: float
    view_config: ViewConfig
    photos: list[tuple[int, np.ndarray, np.ndarray]]  # from choose_photos


@dataclass(frozen=True)
class View:
    """The camera of one sample and what comes with it: a photo crop brings its own pixels."""

    camera: Cameras
    extra: dict  # meta.json entries of the view
    rgb: np.ndarray | None = None  # the photo crop; None: shade the scan
    outside: np.ndarray | None = None  # crop pixels outside the photo


def choose_photos(cameras: Sequence, reg: Registered, count: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Up to `count` photos that see the face, spread evenly over yaw: [(camera index, R, t) FLAME frame]."""
    centre = reg.vertices.mean(axis=0)
    forward = reg.head_rotation[:, 2]
    sim = reg.to_scan
    usable = []
    for i, cam in enumerate(cameras):
        R, t = sim.camera_in_source(cam.R, cam.t)
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


def scan_context(reg: Registered, scan: ScanGeometry, assets: FlameAssets, region_faces: np.ndarray,
                 settings: SampleSettings, with_photos: bool) -> ScanContext:
    """Casters, texture, face centre and extent, and the chosen photos of one scan (photos only when asked:
    choosing them needs the scan's cameras)."""
    faces = assets.model.faces
    face_points = reg.vertices[np.unique(faces[region_faces])]
    scan_caster = None
    if scan.faces is not None:
        scan_caster = RayCaster(reg.to_scan.invert_points(scan.vertices), scan.faces)
    record = scan.record
    texture = linear_texture(read_image(record.texture)) if record.texture and scan.uv is not None else None
    return ScanContext(
        reg=reg, scan=scan, assets=assets, region_faces=region_faces, reg_caster=RayCaster(reg.vertices, faces),
        scan_caster=scan_caster, texture=texture, face_points=face_points, centre=face_points.mean(axis=0),
        extent=float(np.max(face_points.max(axis=0) - face_points.min(axis=0))),
        view_config=ViewConfig(**settings.view),
        photos=choose_photos(scan.cameras, reg, settings.photos) if with_photos else [])


def _rendered_view(ctx: ScanContext, rng: np.random.Generator, size: int) -> View:
    camera, angles = sample_views(rng, 1, ctx.centre, ctx.reg.head_rotation, ctx.extent, size, ctx.view_config)
    return View(camera, {"angles": angles[0].tolist()})


def _photo_view(ctx: ScanContext, index: int, rng: np.random.Generator, size: int) -> View:
    """The chosen photo `index`, cropped around the face at a random fill, with its FLAME-frame camera."""
    camera_index, R, t = ctx.photos[index]
    photo = ctx.scan.cameras[camera_index]
    fill = rng.uniform(*ctx.view_config.fill)
    K_crop = face_crop_intrinsics(np.asarray(photo.K), R, t, ctx.face_points, size, fill)
    camera = Cameras(K=torch.from_numpy(K_crop)[None], R=torch.from_numpy(R)[None], t=torch.from_numpy(t)[None],
                     image_size=(size, size))
    rgb, inside = resample_photo(read_image(photo.image), np.asarray(photo.K), photo.distortion, K_crop, size)
    return View(camera, {"photo": photo.image}, rgb, ~inside)


def _occlusion(ctx: ScanContext, camera: Cameras, targets: TargetMaps) -> tuple[RayHits | None, np.ndarray | None]:
    """(scan hits, occluded pixels): where the raw scan (hair, hands) lies in front of the FLAME surface.
    (None, None) for a point cloud, which cannot hide anything."""
    if ctx.scan_caster is None:
        return None, None
    hits = ctx.scan_caster.cast(camera)
    return hits, hits.mask & targets.mask & (hits.depth < targets.depth - OCCLUSION_MARGIN_M)


def _shaded_rgb(ctx: ScanContext, camera: Cameras, scan_hits: RayHits | None, rng: np.random.Generator
                ) -> tuple[np.ndarray, dict]:
    """(RGB, look) of a rendered view: the scan in its own colours, or the registration for a point cloud."""
    if scan_hits is not None:
        caster, hits = ctx.scan_caster, scan_hits
        albedo = pixel_albedo(hits, caster.faces, face_uv=ctx.scan.uv, texture=ctx.texture,
                              vertex_colors=ctx.scan.vertex_colors)
    else:
        caster = ctx.reg_caster
        hits = caster.cast(camera)
        albedo = pixel_albedo(hits, ctx.assets.model.faces)
    look = sample_look(rng)
    return render_photo(hits, pixel_normals(hits, caster.vertex_normals, caster.faces), albedo, look, rng), look.to_dict()


def _sample_meta(ctx: ScanContext, spec: SampleRequest, camera: Cameras, extra: dict) -> dict:
    record = ctx.scan.record
    return {"scan_id": record.scan_id, "dataset": record.dataset, "subject": spec.subject,
            "expression": record.expression, "flame": _flame_meta(ctx.reg.params),
            "head_rotation": ctx.reg.head_rotation.tolist(), "key": spec.key, "split": spec.split,
            "kind": spec.kind, "index": spec.index, "camera": _camera_meta(camera), **extra}


def render_sample(ctx: ScanContext, spec: SampleRequest, settings: SampleSettings) -> tuple[str, dict[str, bytes]]:
    """(key, shard members) of one sample; its randomness derives from the seed and its key alone."""
    rng = _seed(settings.seed, spec.key)
    if spec.kind == "photo":
        view = _photo_view(ctx, spec.index, rng, settings.size)
    else:
        view = _rendered_view(ctx, rng, settings.size)
    uv = ctx.assets.uv
    targets = render_targets(ctx.reg_caster, view.camera, ctx.reg.head_rotation, uv.vt, uv.ft, ctx.region_faces)
    scan_hits, occluded = _occlusion(ctx, view.camera, targets)
    rgb, extra = view.rgb, dict(view.extra)
    if rgb is None:
        rgb, extra["look"] = _shaded_rgb(ctx, view.camera, scan_hits, rng)
    flags = encode_flags(targets.mask, targets.face_mask, occluded, view.outside)
    meta = _sample_meta(ctx, spec, view.camera, extra)
    return spec.key, encode_sample(spec.key, rgb, targets.normal, targets.uv, flags, targets.depth, meta)


def render_scan_samples(specs: Sequence[SampleRequest], reg: Registered, scan: ScanGeometry, assets: FlameAssets,
                        region_faces: np.ndarray, settings: SampleSettings
                        ) -> tuple[Iterator[tuple[str, dict[str, bytes]]], list[str]]:
    """(samples, skipped keys) of one scan: the samples are rendered in spec order as the iterator is consumed
    (a shard streams them to disk); a photo spec beyond the photos that see the face is skipped."""
    ctx = scan_context(reg, scan, assets, region_faces, settings, any(s.kind == "photo" for s in specs))
    skipped = [s.key for s in specs if s.kind == "photo" and s.index >= len(ctx.photos)]
    usable = [s for s in specs if s.key not in skipped]
    return (render_sample(ctx, s, settings) for s in usable), skipped
