"""FLAME fit to a pre-aligned scan: shape, expression, joint poses, translation and a global scale.

Everything is in the "aligned frame": the scan mapped through the inverse of the initial similarity,
so it is FLAME-sized metres up to the residual scale exp(log_scale). Model vertices in that frame are
exp(log_scale) * FLAME(...).vertices. Correspondences come from KD-trees (scipy) rebuilt every few
steps; between rebuilds each Adam step is one FLAME forward/backward (float32, CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from p3dmm.flame.mesh import vertex_normals_np
from p3dmm.flame.model import FLAME

from .config import RegistrationConfig


@dataclass(frozen=True)
class FitData:
    """Scan side of the fit, aligned frame.

    Args:
        points: (P, 3) float64 scan points (subsampled).
        normals: (P, 3) unit normals, or None for unknown orientation.
        tree: cKDTree over `points`.
        landmarks: (68, 3) float64 or None; NaN rows are skipped.
    """

    points: np.ndarray
    normals: np.ndarray | None
    tree: cKDTree
    landmarks: np.ndarray | None


@dataclass(frozen=True)
class FitResult:
    """Fitted parameters (numpy float64) and the fitted mesh in the aligned frame.

    Args:
        shape: (n_shape,), expression: (n_expression,), pose: (15,) axis-angle, translation: (3,) metres.
        log_scale: scalar, aligned-frame units per FLAME metre = exp(log_scale).
        vertices: (V, 3) aligned frame. converged: the loss stopped improving by > 1e-4 relative.
        loss: final loss.
    """

    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    translation: np.ndarray
    log_scale: float
    vertices: np.ndarray
    converged: bool
    loss: float


def _geman_mcclure(r2: torch.Tensor, sigma: float) -> torch.Tensor:
    """rho(r) / sigma^2 = r^2 / (r^2 + sigma^2): ~ (r/sigma)^2 for small r, 1 for outliers."""
    return r2 / (r2 + sigma**2)


def _pairs(
    verts: np.ndarray, normals: np.ndarray, data: FitData, region: np.ndarray, skin: np.ndarray,
    gate: float, min_dot: float,
) -> tuple[np.ndarray, ...]:
    """Correspondences both ways. Returns (scan idx, model vertex idx, model normals) for scan->model and
    (model vertex idx, scan idx, scan normals) for model->scan, all gated by distance and normals."""
    skin_tree = cKDTree(verts[skin])
    d, j = skin_tree.query(data.points, distance_upper_bound=gate)
    ok = np.isfinite(d)
    vj = skin[np.minimum(j, len(skin) - 1)]
    ok &= region[vj]
    if data.normals is not None:
        ok &= np.einsum("pi,pi->p", data.normals, normals[vj]) > min_dot
    s_idx, m_idx = np.nonzero(ok)[0], vj[ok]
    reg = np.nonzero(region)[0]
    d2, j2 = data.tree.query(verts[reg], distance_upper_bound=gate)
    ok2 = np.isfinite(d2)
    j2 = np.minimum(j2, len(data.points) - 1)
    if data.normals is not None:
        ok2 &= np.einsum("pi,pi->p", data.normals[j2], normals[reg]) > min_dot
        n2 = data.normals[j2[ok2]]
    else:
        n2 = normals[reg[ok2]]
    return s_idx, m_idx, normals[m_idx], reg[ok2], j2[ok2], n2


def fit_flame(
    flame: FLAME, data: FitData, region: np.ndarray, skin: np.ndarray, config: RegistrationConfig,
    fit_scale: bool,
) -> FitResult:
    """Minimise robust point-to-plane distances both ways + landmarks + Gaussian priors with Adam.

    flame: float32 FLAME with the fitted component counts. region: (V,) bool data vertices (face,
    forehead, nose...); skin: (M,) int64 vertices that are not eyeballs (scan points closest to a skin
    vertex outside `region`, e.g. scalp, are not pulled onto the face). The first third of the steps
    fits only the global similarity, jaw and the first 10 shape components (coarse to fine).
    """
    torch.manual_seed(config.seed)
    faces = flame.faces.cpu().numpy()
    p = {
        "shape": torch.zeros(1, flame.n_shape, requires_grad=True),
        "expression": torch.zeros(1, flame.n_expression, requires_grad=True),
        "pose": torch.zeros(1, 15, requires_grad=True),
        "translation": torch.zeros(1, 3, requires_grad=True),
        "log_scale": torch.zeros(1, requires_grad=True),
    }
    lr = config.fit_lr
    opt = torch.optim.Adam([
        {"params": [p["shape"], p["expression"]], "lr": lr},
        {"params": [p["pose"]], "lr": lr * 0.1},
        {"params": [p["translation"]], "lr": lr * 0.01},
        {"params": [p["log_scale"]], "lr": lr * 0.02 if fit_scale else 0.0},
    ])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.fit_iterations, eta_min=lr * 0.05)
    lmk = None
    if data.landmarks is not None and flame.has_landmarks:
        lmk_ok = torch.as_tensor(np.isfinite(data.landmarks).all(axis=1))
        lmk = torch.as_tensor(np.nan_to_num(data.landmarks), dtype=torch.float32)
    pts = torch.as_tensor(data.points, dtype=torch.float32)
    coarse_mask = torch.zeros(1, flame.n_shape)
    coarse_mask[:, :10] = 1.0
    pose_mask_coarse = torch.zeros(1, 15)
    pose_mask_coarse[:, [0, 1, 2, 6, 7, 8]] = 1.0
    sigma = config.robust_scale
    history: list[float] = []
    pairs = None
    n_coarse = config.fit_iterations // 3
    for it in range(config.fit_iterations):
        coarse = it < n_coarse
        shape = p["shape"] * coarse_mask if coarse else p["shape"]
        expression = p["expression"] * 0.0 if coarse else p["expression"]
        pose = p["pose"] * pose_mask_coarse if coarse else p["pose"]
        out = flame(shape=shape, expression=expression, pose=pose, translation=p["translation"])
        verts = out.vertices[0] * torch.exp(p["log_scale"])
        if it % config.fit_update_every == 0:
            frac = it / max(config.fit_iterations - 1, 1)
            gate = config.fit_gate + (config.fit_gate_final - config.fit_gate) * frac
            v_np = verts.detach().double().numpy()
            pairs = _pairs(v_np, vertex_normals_np(v_np, faces), data, region, skin, gate, 0.3)
            pairs = [torch.as_tensor(x, dtype=torch.float32 if x.dtype.kind == "f" else torch.int64) for x in pairs]
        assert pairs is not None
        s_idx, m_idx, m_n, r_idx, c_idx, c_n = pairs
        loss = torch.zeros(())
        if len(s_idx):
            diff = pts[s_idx] - verts[m_idx]
            r2 = (diff * m_n).sum(-1) ** 2 + 0.01 * (diff**2).sum(-1)
            loss = loss + config.w_scan_to_model * _geman_mcclure(r2, sigma).mean()
        if len(r_idx):
            diff = verts[r_idx] - pts[c_idx]
            r2 = (diff * c_n).sum(-1) ** 2 + 0.01 * (diff**2).sum(-1)
            loss = loss + config.w_model_to_scan * _geman_mcclure(r2, sigma).mean()
        if lmk is not None and out.landmarks is not None:
            r2 = ((out.landmarks[0] * torch.exp(p["log_scale"]) - lmk) ** 2).sum(-1)[lmk_ok]
            loss = loss + config.w_landmarks * _geman_mcclure(r2, 5 * sigma).mean()
        loss = loss + config.w_shape * (shape**2).sum() + config.w_expression * (expression**2).sum()
        loss = loss + config.w_pose * (pose[:, 3:] ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        out = flame(shape=p["shape"], expression=p["expression"], pose=p["pose"], translation=p["translation"])
        verts = (out.vertices[0] * torch.exp(p["log_scale"])).double().numpy()
    tail = history[-10:]
    converged = len(tail) > 1 and (max(tail) - min(tail)) <= 1e-2 * max(abs(tail[-1]), 1e-12) + 1e-6
    return FitResult(
        shape=p["shape"].detach().double().numpy()[0],
        expression=p["expression"].detach().double().numpy()[0],
        pose=p["pose"].detach().double().numpy()[0],
        translation=p["translation"].detach().double().numpy()[0],
        log_scale=float(p["log_scale"].detach()),
        vertices=verts,
        converged=bool(converged),
        loss=history[-1] if history else float("nan"),
    )
