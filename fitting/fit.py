"""Batched FLAME fitting to predicted normals and UV: a batch of images is one optimisation problem.

Per image: expression, jaw/neck/eye rotations, global rotation and translation (FLAME's own), focal
length and principal-point offset; shape per image or shared by the images of one subject
(`subject_index`). The camera is fixed (OpenCV, at the FLAME origin + 1 m looking back at the face).
One FLAME forward and one rasterisation of the whole batch per step. Every term is a per-image mean
summed over the batch, so an image's gradients do not depend on the other images (a shared shape sums
its images' gradients): a batch fits like its images one at a time (a test checks it).

Stages: (1) initialisation from the correspondences alone (rotation, translation, focal; no
rendering); (2) joint: UV-to-2D-vertex loss on gated correspondences (UV distance, distance to the
projected vertex, visibility), L1 normal loss in the head frame with outlier rejection, Gaussian priors
on shape, expression, jaw, neck and eyes, and mirror symmetry of the unposed mesh. Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from p3dmm.fitting.correspondences import Correspondences, find_correspondences
from p3dmm.flame.cameras import Cameras, project, to_pytorch3d
from p3dmm.flame.fragments import pixel_normals
from p3dmm.flame.mesh import vertex_normals
from p3dmm.flame.model import FLAME
from p3dmm.flame.rotations import head_rotation

CAMERA_DISTANCE_M = 1.0
"""The fitting camera sits this far from the FLAME origin on +z, looking back at the face."""
VISIBILITY_MARGIN_M = 0.01
"""A fitted vertex is visible at its matched pixel when it is at most this far behind the rendered depth."""


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings. Weights follow the structure of Pixel3DMM's tracker (see docs/fitting.md).

    Args:
        init_steps, steps: Adam steps of the initialisation and the joint stage.
        raster_size: side of the rendered normal map (the predictions are resized to it).
        n_shape, n_expression: FLAME components optimised.
        focal_init: initial focal length as a multiple of the raster size (2000/512 ~ 3.9, ~28 deg FOV).
        uv_gate: largest UV distance of a correspondence; pixel_gate: largest distance (fraction of the
            image side) between the matched pixel and the projected vertex (joint stage).
        normal_outlier: pixels whose mean absolute normal error exceeds this are ignored.
        w_uv, w_normal, w_shape, w_expression, w_jaw, w_neck, w_eyes, w_symmetry, w_pp, w_focal: loss weights
            (w_focal: a log-normal prior on the focal length around focal_init).
        lr: Adam learning rate of the joint stage (per-parameter multipliers inside).
        fit_shape: False keeps the FLAME mean shape (only pose, expression and camera are fitted): the
            baseline that tells what the identity fit adds.
        rasterizer: "auto", "pytorch3d" or "embree" (see `backend`).
    """

    init_steps: int = 150
    steps: int = 300
    raster_size: int = 256
    n_shape: int = 100
    n_expression: int = 50
    focal_init: float = 3.9
    uv_gate: float = 0.007
    pixel_gate: float = 0.04
    normal_outlier: float = 0.33
    w_uv: float = 2000.0
    w_normal: float = 10.0
    w_shape: float = 0.05
    w_expression: float = 0.05
    w_jaw: float = 0.01
    w_neck: float = 0.1
    w_eyes: float = 0.01
    w_symmetry: float = 500.0
    w_pp: float = 1.0
    w_focal: float = 1.0
    lr: float = 5e-3
    fit_shape: bool = True
    rasterizer: str = "auto"

    def backend(self, device: torch.device) -> str:
        """"pytorch3d" (differentiable coverage, fast on GPU) or "embree" (CPU: face ids and barycentrics by
        ray casting, ~100x faster there; gradients flow through the interpolated attributes only)."""
        if self.rasterizer == "auto":
            return "pytorch3d" if device.type == "cuda" else "embree"
        if self.rasterizer not in ("pytorch3d", "embree"):
            raise ValueError(f"FitConfig.rasterizer must be auto, pytorch3d or embree, got {self.rasterizer!r}")
        return self.rasterizer


@dataclass
class FitResult:
    """Per image (B): FLAME parameters, camera and meshes (FLAME metres, model frame)."""

    shape: torch.Tensor  # (B, n_shape)
    expression: torch.Tensor  # (B, n_expression)
    pose: torch.Tensor  # (B, 15) axis-angle
    translation: torch.Tensor  # (B, 3)
    focal_px: torch.Tensor  # (B,) at raster_size
    principal_point_px: torch.Tensor  # (B, 2) at raster_size
    vertices: torch.Tensor  # (B, V, 3) posed
    neutral: torch.Tensor  # (B, V, 3) template + shape only
    losses: dict[str, float]


def fixed_camera(batch: int, size: int, focal_px: torch.Tensor, pp_px: torch.Tensor) -> Cameras:
    """The fitting camera, the one definition every fitting output uses (json, overlays, oracle cues).

    At CAMERA_DISTANCE_M on the FLAME +z axis looking at the origin, image up = FLAME +y:
    x_cam = diag(1, -1, -1) x + (0, 0, CAMERA_DISTANCE_M); K = [[f, 0, c + pp_x], [0, f, c + pp_y], [0, 0, 1]]
    with c = (size - 1) / 2 (the image centre, project convention).

    Args:
        size: image side, pixels. focal_px: (B,); pp_px: (B, 2) principal-point offset from the image centre
            (the cameras take their dtype and device).
    """
    R = torch.diag(torch.tensor([1.0, -1.0, -1.0])).expand(batch, 3, 3).to(focal_px)
    t = torch.tensor([0.0, 0.0, CAMERA_DISTANCE_M]).expand(batch, 3).to(focal_px)
    K = torch.zeros(batch, 3, 3, dtype=focal_px.dtype, device=focal_px.device)
    K[:, 0, 0] = K[:, 1, 1] = focal_px
    K[:, 0, 2] = (size - 1) / 2 + pp_px[:, 0]
    K[:, 1, 2] = (size - 1) / 2 + pp_px[:, 1]
    K[:, 2, 2] = 1.0
    return Cameras(K=K, R=R, t=t, image_size=(size, size))


class _Params(torch.nn.Module):
    def __init__(self, batch: int, subjects: int, n_shape: int, n_expression: int, focal: float):
        super().__init__()
        self.shape = torch.nn.Parameter(torch.zeros(subjects, n_shape))
        self.expression = torch.nn.Parameter(torch.zeros(batch, n_expression))
        self.global_rot = torch.nn.Parameter(torch.zeros(batch, 3))
        self.local_pose = torch.nn.Parameter(torch.zeros(batch, 12))  # neck, jaw, left eye, right eye
        self.translation = torch.nn.Parameter(torch.zeros(batch, 3))
        self.log_focal = torch.nn.Parameter(torch.full((batch,), float(np.log(focal))))
        self.pp = torch.nn.Parameter(torch.zeros(batch, 2))

    def pose(self) -> torch.Tensor:
        return torch.cat([self.global_rot, self.local_pose], dim=1)


def _resize_maps(pred: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in pred.items():
        if v.shape[-1] != size:
            v = F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False)
        out[k] = F.normalize(v, dim=1) if k == "normal" else v
    return out


def fit_batch(flame: FLAME, pred: dict[str, torch.Tensor], fit_vertices: np.ndarray, vertex_uv: np.ndarray,
              mirror: np.ndarray, config: FitConfig = FitConfig(), pixel_mask: torch.Tensor | None = None,
              subject_index: torch.Tensor | None = None) -> FitResult:
    """Fit FLAME to a batch of predicted maps.

    Args:
        flame: the model (float32, on the device to fit on).
        pred: {"normal": (B, 3, M, M) head frame, "uv": (B, 2, M, M) (u, 1 - v)} from the priors.
        fit_vertices: (K,) indices of the vertices to match (face and ears, no eyeballs).
        vertex_uv: (V, 2) template (u, 1 - v) of every vertex.
        mirror: (V,) twin index of every vertex (flame.mirror.mirror_map).
        pixel_mask: (B, M, M) bool pixels that may be matched/compared (default: all).
        subject_index: (B,) long; images with the same index share one shape (default: one each).
    """
    device = flame.v_template.device
    size = config.raster_size
    pred = _resize_maps({k: v.to(device) for k, v in pred.items()}, size)
    batch = pred["uv"].shape[0]
    if pixel_mask is None:
        pixel_mask = torch.ones(batch, size, size, dtype=torch.bool, device=device)
    elif pixel_mask.shape[-1] != size:
        pixel_mask = F.interpolate(pixel_mask[:, None].float(), size=(size, size), mode="nearest")[:, 0] > 0.5
    subject_index = torch.arange(batch, device=device) if subject_index is None else subject_index.to(device)
    subjects = int(subject_index.max()) + 1
    fit_idx = torch.as_tensor(fit_vertices, dtype=torch.long, device=device)
    target_uv = torch.as_tensor(vertex_uv, dtype=torch.float32, device=device)[fit_idx]
    corr = find_correspondences(pred["uv"], pixel_mask, target_uv, config.uv_gate)
    n_shape = min(config.n_shape, flame.n_shape) if config.fit_shape else 0
    n_expr = min(config.n_expression, flame.n_expression)
    params = _Params(batch, subjects, n_shape, n_expr, config.focal_init * size).to(device)

    def run_flame():
        shape = torch.zeros(batch, flame.n_shape, device=device)
        shape[:, :n_shape] = params.shape[subject_index]
        expr = torch.zeros(batch, flame.n_expression, device=device)
        expr[:, :n_expr] = params.expression
        return flame(shape=shape, expression=expr, pose=params.pose(), translation=params.translation), shape, expr

    # -- stage 1: rotation, translation, focal from the correspondences (no rendering) -------------
    _initialise(params, run_flame, corr, fit_idx, size, config)

    # -- stage 2: joint ------------------------------------------------------------------------------
    opt = torch.optim.Adam([
        {"params": [params.expression, params.local_pose], "lr": config.lr},
        {"params": [params.shape], "lr": config.lr * 0.4},
        {"params": [params.global_rot], "lr": config.lr},
        {"params": [params.translation], "lr": config.lr * 0.2},
        {"params": [params.log_focal], "lr": config.lr * 0.5},
        {"params": [params.pp], "lr": config.lr * 20},
    ])
    faces = flame.faces
    mirror_t = torch.as_tensor(mirror, dtype=torch.long, device=device)
    losses: dict[str, float] = {}
    for _ in range(config.steps):
        out, shape, expr = run_flame()
        cams = fixed_camera(batch, size, params.log_focal.exp(), params.pp)
        terms = _joint_losses(out.vertices, faces, cams, params, pred, pixel_mask, corr, fit_idx, size, config)
        terms["shape"] = config.w_shape * (params.shape**2).sum()
        terms["expression"] = config.w_expression * (params.expression**2).sum()
        local = params.local_pose.view(batch, 4, 3)
        terms["jaw"] = config.w_jaw * (local[:, 1] ** 2).sum()
        terms["neck"] = config.w_neck * (local[:, 0] ** 2).sum()
        terms["eyes"] = config.w_eyes * (local[:, 2:] ** 2).sum()
        shaped = out.vertices_shaped
        reflected = shaped[:, mirror_t] * torch.tensor([-1.0, 1.0, 1.0], device=device)
        terms["symmetry"] = config.w_symmetry * ((shaped - reflected) ** 2).sum(-1).mean(-1).sum()
        terms["pp"] = config.w_pp * ((params.pp / size) ** 2).sum()
        # depth, focal length and head size trade off in a single image: keep the focal near its prior
        terms["focal"] = config.w_focal * ((params.log_focal - float(np.log(config.focal_init * size))) ** 2).sum()
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses = {k: float(v.detach()) for k, v in terms.items()}

    with torch.no_grad():
        out, shape, expr = run_flame()
        neutral = flame(shape=shape).vertices
    return FitResult(shape=shape.detach(), expression=expr.detach(), pose=params.pose().detach(),
                     translation=params.translation.detach(), focal_px=params.log_focal.exp().detach(),
                     principal_point_px=params.pp.detach() + (size - 1) / 2, vertices=out.vertices.detach(),
                     neutral=neutral.detach(), losses=losses)


def _initialise(params: _Params, run_flame, corr: Correspondences, fit_idx: torch.Tensor, size: int,
                config: FitConfig) -> None:
    """Robust reprojection fit of rotation, translation and focal to the ungated correspondences."""
    if config.init_steps <= 0:
        return
    batch = corr.pixel.shape[0]
    opt = torch.optim.Adam([{"params": [params.global_rot], "lr": 2e-2}, {"params": [params.translation], "lr": 5e-3},
                            {"params": [params.log_focal], "lr": 1e-2}])
    weight = corr.valid.float()
    for step in range(config.init_steps):
        out, _, _ = run_flame()
        cams = fixed_camera(batch, size, params.log_focal.exp(), params.pp)
        uv, _ = project(out.vertices[:, fit_idx], cams)
        r = ((uv - corr.pixel) / size).norm(dim=-1)
        scale = 0.05 if step < config.init_steps // 2 else 0.02  # Geman-McClure, tightening
        loss = (((r**2 / (r**2 + scale**2)) * weight).sum(-1) / weight.sum(-1).clamp(min=1)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, cams: Cameras, backend: str
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(face ids (B, S, S) long, per-image, -1 on background; barycentrics (B, S, S, 3); depth (B, S, S) camera z,
    metres, inf on background) of a batch of meshes with shared faces, by either backend."""
    batch = vertices.shape[0]
    size = cams.image_size[0]
    if backend == "pytorch3d":
        from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
        from pytorch3d.structures import Meshes

        meshes = Meshes(verts=list(vertices), faces=[faces] * batch)
        settings = RasterizationSettings(image_size=size, faces_per_pixel=1, blur_radius=0.0,
                                         bin_size=None if vertices.is_cuda else 0)
        frags = MeshRasterizer(cameras=to_pytorch3d(cams), raster_settings=settings)(meshes)
        packed = frags.pix_to_face[..., 0]
        local = torch.where(packed >= 0, packed - torch.arange(batch, device=packed.device).view(-1, 1, 1) * len(faces),
                            packed)
        depth = torch.where(packed >= 0, frags.zbuf[..., 0], torch.inf)  # PyTorch3D's background is -1
        return local, frags.bary_coords[..., 0, :], depth
    from p3dmm.flame.render import RayCaster

    ids, barys, depths = [], [], []
    faces_np = faces.cpu().numpy()
    cams = Cameras(K=cams.K.detach().cpu(), R=cams.R.detach().cpu(), t=cams.t.detach().cpu(), image_size=cams.image_size)
    for b in range(batch):
        hits = RayCaster(vertices[b].detach().double().cpu().numpy(), faces_np).cast(cams[b])
        ids.append(torch.from_numpy(hits.face_id))
        barys.append(torch.from_numpy(hits.bary))
        depths.append(torch.from_numpy(hits.depth))
    dev = vertices.device
    return torch.stack(ids).to(dev), torch.stack(barys).to(dev).float(), torch.stack(depths).to(dev).float()


def _joint_losses(vertices: torch.Tensor, faces: torch.Tensor, cams: Cameras, params: _Params,
                  pred: dict[str, torch.Tensor], pixel_mask: torch.Tensor, corr: Correspondences,
                  fit_idx: torch.Tensor, size: int, config: FitConfig) -> dict[str, torch.Tensor]:
    batch = vertices.shape[0]
    face_id, bary, zbuf = rasterize(vertices, faces, cams, config.backend(vertices.device))
    covered = face_id >= 0
    terms: dict[str, torch.Tensor] = {}

    # head-frame normals, the training targets' definition (global and neck rotation undone)
    rendered = pixel_normals(vertex_normals(vertices, faces), faces, face_id, bary, head_rotation(params.pose()))
    target = pred["normal"].permute(0, 2, 3, 1)
    err = (rendered - target).abs()
    use = covered & pixel_mask & (err.mean(-1) < config.normal_outlier)
    terms["normal"] = config.w_normal * ((err.sum(-1) * use).sum((1, 2)) / use.sum((1, 2)).clamp(min=1)).sum()

    # UV -> 2D vertex, on correspondences gated by pixel distance and visibility
    uv_px, depth = project(vertices[:, fit_idx], cams)
    px = corr.pixel.round().long().clamp(0, size - 1)
    seen_depth = zbuf[torch.arange(batch)[:, None], px[..., 1], px[..., 0]]
    visible = torch.isfinite(seen_depth) & (depth <= seen_depth + VISIBILITY_MARGIN_M)
    near = ((uv_px - corr.pixel).abs().sum(-1) / size) < config.pixel_gate
    ok = (corr.valid & near & visible).float().detach()
    res = ((uv_px - corr.pixel) / size) ** 2
    terms["uv"] = config.w_uv * ((res.sum(-1) * ok).sum(-1) / ok.sum(-1).clamp(min=1)).sum()
    return terms
