"""FLAME fit to a pre-aligned scan: shape, expression, joint poses, translation and a global scale.

Everything is in the "aligned frame": the scan mapped through the inverse of the initial similarity,
so it is FLAME-sized metres up to the residual scale exp(log_scale). Model vertices in that frame are
exp(log_scale) * FLAME(...).vertices.

The solver is Levenberg-Marquardt on iteratively reweighted least squares. FLAME is nearly linear in
its coefficients, so each step solves the whole problem around the current fit (one (P, P) system,
P ~ 170) where first-order steps crawl along the ill-conditioned identity directions; that is what
lets a head at FLAME's own identity scale be reached from the template. Correspondences (KD-trees) are
rebuilt every step. The robust loss is graduated: stages go from a wide robust scale and search radius
(the template may start centimetres from the scan) to tight ones (hair and torso drop out), and each
stage runs until the cost stops falling, not for a fixed step count.

Units: data costs are in (residual / 1 mm)^2 for inliers, averaged per term, so the priors
(`w_shape` etc., per unit coefficient in the model's sigma units, per radian) mean the same whatever
the robust scale of the stage and the number of scan points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from p3dmm.flame.jacobian import flame_jacobian, jacobian_basis
from p3dmm.flame.mesh import vertex_normals_np
from p3dmm.flame.model import FLAME

from .config import RegistrationConfig

DATA_UNIT = 1e-3
"""A residual of this length costs 1 (inliers): the unit the priors are weighed against."""
COARSE_SHAPE = 10
"""Identity components free in the first (widest) stage, with the rigid pose, scale and jaw."""
NORMAL_DOT = 0.3
"""Minimum cos angle between model and scan normals for a correspondence of the fit."""
POINT_WEIGHT = 0.01
"""Point-to-point share next to point-to-plane in every pair (keeps sliding in check)."""
RECHECK_MIN_CHANGE = 0.15
"""The jaw re-check runs when the fit's jaw ends at least this far (radians) below the re-check opening."""


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
        vertices: (V, 3) aligned frame. converged: the last stage stopped because the cost settled
            (relative decrease below `fit_tolerance`), not because it ran out of iterations.
        loss: final cost. iterations: LM steps taken over all stages.
        rival_cost_ratio, rival_p95_mm: the jaw re-check's other fit (see `fit_flame`): its cost over the
            kept one's, and the p95 distance between the two over the data vertices (FLAME mm); nan when
            no re-check ran.
    """

    shape: np.ndarray
    expression: np.ndarray
    pose: np.ndarray
    translation: np.ndarray
    log_scale: float
    vertices: np.ndarray
    converged: bool
    loss: float
    iterations: int = 0
    rival_cost_ratio: float = float("nan")
    rival_p95_mm: float = float("nan")


def robust_cost(r2: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Geman-McClure in data units and its IRLS weight: rho = s^2 r^2 / (r^2 + s^2) / u^2 (~ (r/u)^2 for
    r << s, bounded by (s/u)^2 for outliers) and d rho / d r^2, with u = DATA_UNIT."""
    s2 = sigma * sigma
    denom = r2 + s2
    return s2 * r2 / denom / DATA_UNIT**2, (s2 / denom) ** 2 / DATA_UNIT**2


@dataclass(frozen=True)
class _Pairs:
    """Correspondences of one step: model vertex `vertex[i]` against scan point `target[i]` with plane
    normal `normal[i]` and term weight `weight[i]` (the term's weight over its number of pairs)."""

    vertex: np.ndarray
    target: np.ndarray
    normal: np.ndarray
    weight: np.ndarray

    def residual2(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) offsets model - scan and (N,) squared residuals (n.d)^2 + POINT_WEIGHT |d|^2."""
        d = vertices[self.vertex] - self.target
        return d, np.einsum("ni,ni->n", d, self.normal) ** 2 + POINT_WEIGHT * np.einsum("ni,ni->n", d, d)


def _pairs(
    verts: np.ndarray, normals: np.ndarray, data: FitData, region: np.ndarray, skin: np.ndarray,
    gate: float, config: RegistrationConfig,
) -> _Pairs:
    """Correspondences both ways, gated by distance and normal agreement: every scan point whose nearest
    skin vertex is a `region` vertex (scan->model, plane of the model normal), and every region vertex
    to its nearest scan point (model->scan, plane of the scan normal)."""
    skin_tree = cKDTree(verts[skin])
    d, j = skin_tree.query(data.points, distance_upper_bound=gate)
    ok = np.isfinite(d)
    vj = skin[np.minimum(j, len(skin) - 1)]
    ok &= region[vj]
    if data.normals is not None:
        ok &= np.einsum("pi,pi->p", data.normals, normals[vj]) > NORMAL_DOT
    s_idx, m_idx = np.nonzero(ok)[0], vj[ok]
    reg = np.nonzero(region)[0]
    d2, j2 = data.tree.query(verts[reg], distance_upper_bound=gate)
    ok2 = np.isfinite(d2)
    j2 = np.minimum(j2, len(data.points) - 1)
    if data.normals is not None:
        ok2 &= np.einsum("pi,pi->p", data.normals[j2], normals[reg]) > NORMAL_DOT
        n2 = data.normals[j2[ok2]]
    else:
        n2 = normals[reg[ok2]]
    w1 = config.w_scan_to_model / max(len(s_idx), 1)
    w2 = config.w_model_to_scan / max(int(ok2.sum()), 1)
    return _Pairs(
        vertex=np.concatenate((m_idx, reg[ok2])),
        target=np.concatenate((data.points[s_idx], data.points[j2[ok2]])),
        normal=np.concatenate((normals[m_idx], n2)),
        weight=np.concatenate((np.full(len(s_idx), w1), np.full(int(ok2.sum()), w2))),
    )


class _Problem:
    """The fit's cost around one parameter vector x = [shape, expression, pose (15), translation (3),
    log_scale]: the FLAME forward, its Jacobian, the priors, and the cost at a trial x."""

    def __init__(self, flame: FLAME, landmarks: np.ndarray | None, config: RegistrationConfig):
        self.flame, self.config = flame, config
        self.basis = jacobian_basis(flame)
        self.n_shape, self.n_expr = flame.n_shape, flame.n_expression
        n = self.n_shape + self.n_expr
        prior = np.zeros(n + 19)
        prior[: self.n_shape] = config.w_shape
        prior[self.n_shape : n] = config.w_expression
        prior[n + 3 : n + 6] = config.w_neck  # the face is rigid above the neck: neck and global rotation trade
        prior[n + 6 : n + 9] = config.w_pose  # jaw; the global rotation is free
        prior[n + 9 : n + 15] = config.w_pose  # eyes: no data sees them (eyeballs are not fitted)
        prior[-1] = config.w_scale  # log scale: nearly degenerate with the identity's head-size components
        self.base_prior = prior
        self.prior = prior
        self.landmarks = None
        if landmarks is not None and flame.has_landmarks:
            ok = np.isfinite(landmarks).all(axis=1)
            self.landmarks = (np.nonzero(ok)[0], landmarks[ok])

    def graduate(self, sigma: float) -> None:
        """Set the priors of a stage with robust scale `sigma`: the identity and expression priors times
        (sigma / last stage's sigma) ** `prior_graduation`.

        A wide robust scale treats clutter within it (hair 5-20 mm out, a torso) as data; with the final
        stage's prior the identity explains that clutter and the fit settles in a wrong basin (measured:
        identity RMS 1.8 sigma after the second stage, 14 mm off, on a FaceScape-multiview stress scan).
        With the prior scaled like the robust scale's square, every stage weighs the identity as the last
        stage does against a residual of its own scale.
        """
        factor = (sigma / self.config.fit_sigmas[-1]) ** self.config.prior_graduation
        prior = self.base_prior.copy()
        prior[: self.n_shape + self.n_expr] *= factor
        self.prior = prior

    def split(self, x: np.ndarray) -> tuple[torch.Tensor, ...]:
        t = torch.as_tensor(x, dtype=self.flame.v_template.dtype)
        n = self.n_shape + self.n_expr
        return t[: self.n_shape], t[self.n_shape : n], t[n : n + 15], t[n + 15 : n + 18]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Model vertices (V, 3) and landmarks (68, 3) or None, aligned frame."""
        shape, expr, pose, trans = self.split(x)
        with torch.no_grad():
            out = self.flame(shape=shape[None], expression=expr[None], pose=pose[None], translation=trans[None])
        scale = float(np.exp(x[-1]))
        lmk = None if out.landmarks is None else out.landmarks[0].numpy() * scale
        return out.vertices[0].numpy() * scale, lmk

    def linearise(
        self, x: np.ndarray, rows: torch.Tensor,
    ) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor, torch.Tensor | None]:
        """Vertices (V, 3), landmarks (numpy) and the Jacobians of vertices[rows] (R, 3, P) and of the
        landmarks (68, 3, P) (torch float64), aligned
        frame. The linear algebra stays in torch: numpy's BLAS threads contend with torch's on small
        matrices (a 170 x 170 solve measured 100 ms instead of 0.5 ms)."""
        jac = flame_jacobian(self.flame, *self.split(x), basis=self.basis, rows=rows)
        scale = float(np.exp(x[-1]))
        verts_t = jac.vertices * scale
        d_verts = torch.cat((jac.d_vertices * scale, verts_t[rows, :, None]), -1)
        lmk = d_lmk = None
        if jac.landmarks is not None:
            lmk_t = jac.landmarks * scale
            d_lmk = torch.cat((jac.d_landmarks * scale, lmk_t[..., None]), -1)
            lmk = lmk_t.numpy()
        return verts_t.numpy(), lmk, d_verts, d_lmk

    def cost(self, x: np.ndarray, pairs: _Pairs, sigma: float) -> float:
        verts, lmk = self.forward(x)
        _, r2 = pairs.residual2(verts)
        total = float((pairs.weight * robust_cost(r2, sigma)[0]).sum())
        total += self._landmark_cost(lmk)[0]
        return total + float((self.prior * x * x).sum())

    def _landmark_cost(self, lmk: np.ndarray | None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """Cost, rows, offsets (L, 3) and IRLS weights (L,) of the landmark term (robust, wide scale)."""
        if self.landmarks is None or lmk is None:
            return 0.0, np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0)
        rows, target = self.landmarks
        d = lmk[rows] - target
        rho, w = robust_cost((d * d).sum(1), self.config.landmark_sigma)
        scale = self.config.w_landmarks / len(rows)
        return float(scale * rho.sum()), rows, d, scale * w

    def normal_equations(
        self, x: np.ndarray, verts: np.ndarray, lmk: np.ndarray | None, d_verts: torch.Tensor,
        row_of: np.ndarray, d_lmk: torch.Tensor | None, pairs: _Pairs, sigma: float,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Gauss-Newton system H dx = -g of the reweighted cost at x, and the cost itself.

        Pairs are folded per vertex first (sum of w * (n n^T + lam I) blocks), so the cost of building
        H grows with the vertices matched, not with the scan points.
        """
        d, r2 = pairs.residual2(verts)
        rho, w = robust_cost(r2, sigma)
        cost = float((pairs.weight * rho).sum())
        ww = pairs.weight * w
        blocks = ww[:, None, None] * (pairs.normal[:, :, None] * pairs.normal[:, None, :] + POINT_WEIGHT * np.eye(3))
        used, slot = np.unique(pairs.vertex, return_inverse=True)
        a = _sum_by(slot, blocks.reshape(len(slot), 9), len(used)).reshape(-1, 3, 3)
        b = _sum_by(slot, np.einsum("nij,nj->ni", blocks, d), len(used))
        jv = d_verts[torch.as_tensor(row_of[used])]  # (U, 3, P); row_of maps a vertex to its Jacobian row
        n_par = jv.shape[-1]
        a_jv = torch.einsum("uab,ubp->uap", torch.as_tensor(a), jv)
        h = jv.reshape(-1, n_par).T @ a_jv.reshape(-1, n_par)
        g = jv.reshape(-1, n_par).T @ torch.as_tensor(b).reshape(-1)
        l_cost, rows, ld, lw = self._landmark_cost(lmk)
        if len(rows) and d_lmk is not None:
            jl = d_lmk[torch.as_tensor(rows)]
            lw_t = torch.as_tensor(lw)
            h = h + torch.einsum("l,lap,laq->pq", lw_t, jl, jl)
            g = g + torch.einsum("l,lap,la->p", lw_t, jl, torch.as_tensor(ld))
        prior = torch.as_tensor(self.prior)
        h = h + torch.diag(prior)
        g = g + prior * torch.as_tensor(x)
        return h, g, cost + l_cost + float((self.prior * x * x).sum())


def _sum_by(slot: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """(n, C) sums of the rows of values (N, C) by slot (N,) in [0, n): np.add.at's result, ~3x faster
    (measured 2.9 -> 0.9 ms for 9k pairs on 5k vertices)."""
    return np.stack([np.bincount(slot, weights=values[:, c], minlength=n) for c in range(values.shape[1])], axis=1)


def _free_mask(n_shape: int, n_expr: int, coarse: bool, fit_scale: bool) -> np.ndarray:
    """Parameters a stage may change: coarse stages the rigid pose, jaw, scale and the first identity
    components (the low-frequency head shape); later stages everything but the eyes."""
    n = n_shape + n_expr
    free = np.zeros(n + 19, dtype=bool)
    if coarse:
        free[: min(COARSE_SHAPE, n_shape)] = True
        free[[n, n + 1, n + 2, n + 6, n + 7, n + 8]] = True
    else:
        free[:n] = True
        free[n : n + 9] = True
    free[n + 15 : n + 18] = True
    free[-1] = fit_scale
    return free


def _lm_step(
    problem: _Problem, x: np.ndarray, h: torch.Tensor, g: torch.Tensor, cost: float, free: np.ndarray,
    pairs: _Pairs, sigma: float, damping: float, d_region: torch.Tensor, max_step: float,
) -> tuple[np.ndarray, float, float]:
    """One Levenberg-Marquardt step on the free parameters: (new x, its cost, new damping). A step that
    does not lower the cost is retried with more damping; after 8 tries x stays.

    The step is shortened so that no data vertex moves more than `max_step` (predicted by the Jacobian
    `d_region` (U, 3, P)): the correspondences it was solved for only hold near the current fit, and a
    full Gauss-Newton jump from a far template lands in the wrong basin (a head turned the wrong way).
    """
    idx = torch.as_tensor(np.nonzero(free)[0])
    hf, gf = h[idx][:, idx], g[idx]
    diag = torch.diagonal(hf).clone()
    diag[diag <= 0] = 1.0
    d_free = d_region[:, :, idx]
    for _ in range(8):
        step, info = torch.linalg.solve_ex(hf + damping * torch.diag(diag), -gf)
        if int(info) != 0 or not bool(torch.isfinite(step).all()):
            damping *= 10.0
            continue
        moved = float(torch.linalg.norm(d_free @ step, dim=1).max()) if len(d_free) else 0.0
        if moved > max_step:
            step = step * (max_step / moved)
        trial = x.copy()
        trial[free] += step.numpy()
        trial_cost = problem.cost(trial, pairs, sigma)
        if np.isfinite(trial_cost) and trial_cost < cost:
            return trial, trial_cost, max(damping / 3.0, 1e-7)
        damping *= 4.0
    return x, cost, damping


@dataclass
class _Budget:
    """The fit's step budget: each stage may use its share of what the earlier ones left."""

    total: int
    n_stages: int
    used: int = 0

    def share(self, stage: int, ways: int = 1) -> int:
        return max(1, (self.total - self.used) // (self.n_stages - stage) // ways)


def _with(x: np.ndarray, index: int, value: float) -> np.ndarray:
    out = x.copy()
    out[index] = value
    return out


def _run_stage(
    problem: _Problem, x: np.ndarray, stage: tuple[float, float], k: int, steps: int, region: np.ndarray,
    core: np.ndarray | None, skin: np.ndarray, faces: np.ndarray, data: FitData, config: RegistrationConfig,
    fit_scale: bool,
) -> tuple[np.ndarray, float, bool, int]:
    """LM steps of stage k (robust scale, gate) until the cost settles or `steps` run out:
    (x, cost, converged, steps taken)."""
    sigma, gate = stage
    n_stages = len(config.fit_sigmas)
    flame = problem.flame
    free = _free_mask(flame.n_shape, flame.n_expression, coarse=k == 0, fit_scale=fit_scale)
    problem.graduate(sigma)
    stage_region = core if core is not None and k < n_stages - 2 else region
    region_idx = np.nonzero(region)[0]  # every stage's data vertices are a subset of these
    row_of = np.full(len(region), -1)
    row_of[region_idx] = np.arange(len(region_idx))
    rows = torch.as_tensor(region_idx)
    damping, cost = 1e-3, float("nan")
    for taken in range(1, steps + 1):
        verts, lmk, d_verts, d_lmk = problem.linearise(x, rows)
        pairs = _pairs(verts, vertex_normals_np(verts, faces), data, stage_region, skin, gate, config)
        h, g, cost = problem.normal_equations(x, verts, lmk, d_verts, row_of, d_lmk, pairs, sigma)
        x_new, new_cost, damping = _lm_step(problem, x, h, g, cost, free, pairs, sigma, damping,
                                            d_verts, config.fit_max_step * sigma)
        decrease = cost - new_cost
        x, cost = x_new, new_cost
        if decrease <= config.fit_tolerance * max(cost, 1e-12):
            return x, cost, True, taken
    return x, cost, False, steps


def fit_flame(
    flame: FLAME, data: FitData, region: np.ndarray, skin: np.ndarray, config: RegistrationConfig,
    fit_scale: bool, init: np.ndarray | None = None, core: np.ndarray | None = None,
) -> FitResult:
    """Minimise robust point-to-plane distances both ways + landmarks + Gaussian priors (LM, IRLS).

    flame: FLAME (float64 preferred) with the fitted component counts. region: (V,) bool data vertices
    (face, forehead, nose...); skin: (M,) int64 vertices that are not eyeballs (scan points closest to a
    skin vertex outside `region`, e.g. scalp, are not pulled onto the face). Stages follow
    `config.fit_sigmas` / `config.fit_gates`; the first fits only the rigid pose, scale, jaw and the
    first identity components; the first two stages run once from each jaw opening of
    `config.fit_jaw_starts` and the cheapest goes on; a fit that ends with a closed jaw runs the last two
    stages again from `config.fit_recheck_jaw` open, keeps the cheaper and reports the other as the rival
    (`FitResult.rival_*`, judged by `register.acceptance`). init: optional starting parameter vector (see
    `_Problem`; then one start). core: (V,) bool, the data vertices of the wide stages (all but the
    last two); None = `region`. The forehead
    is left out there: at a wide robust scale, hair over the hairline (5-20 mm out) would pull it and
    the identity with it; the tight stages see hair as the outlier it is.
    """
    faces = flame.faces.cpu().numpy()
    problem = _Problem(flame, data.landmarks, config)
    n_par = flame.n_shape + flame.n_expression + 19
    x = np.zeros(n_par) if init is None else np.asarray(init, dtype=np.float64).copy()
    stages = list(zip(config.fit_sigmas, config.fit_gates, strict=True))
    budget = _Budget(config.fit_iterations, len(stages))
    jaw = flame.n_shape + flame.n_expression + 6
    starts = [x] if init is not None else [_with(x, jaw, opening) for opening in config.fit_jaw_starts]
    # the two wide stages from every jaw opening, the cheapest goes on: a closed template does not find an
    # open mouth by itself (its lower lip settles on the scan's upper lip); the first stage's cost alone
    # does not tell them apart (measured: it preferred a closed jaw that ended 2.6 mm off, 0.7 mm open)
    n_wide = min(2, len(stages))
    best: tuple[np.ndarray, float, bool] | None = None
    iterations = 0
    for start in starts:
        x_k, cost, converged = start, float("nan"), False
        for k in range(n_wide):
            x_k, cost, converged, steps = _run_stage(problem, x_k, stages[k], k, budget.share(k, len(starts)),
                                                     region, core, skin, faces, data, config, fit_scale)
            iterations += steps
        if best is None or cost < best[1]:
            best = (x_k, cost, converged)
    assert best is not None
    x, cost, converged = best
    budget.used = iterations
    for k in range(n_wide, len(stages)):
        x, cost, converged, steps = _run_stage(problem, x, stages[k], k, budget.share(k), region, core, skin, faces,
                                               data, config, fit_scale)
        iterations += steps
        budget.used += steps
    rival = (float("nan"), float("nan"))
    if config.fit_recheck_jaw > 0 and x[jaw] < config.fit_recheck_jaw - RECHECK_MIN_CHANGE:
        # the tight stages again from an open jaw: the wide stages close an open mouth far from the template
        y, y_cost, y_converged = _with(x, jaw, config.fit_recheck_jaw), float("nan"), False
        for k in range(max(0, len(stages) - 2), len(stages)):
            y, y_cost, y_converged, steps = _run_stage(problem, y, stages[k], k, config.fit_recheck_steps, region,
                                                       core, skin, faces, data, config, fit_scale)
            iterations += steps
        if y_cost < cost:
            x, y, cost, y_cost, converged = y, x, y_cost, cost, y_converged
        moved = np.linalg.norm(problem.forward(x)[0][region] - problem.forward(y)[0][region], axis=1)
        rival = (float(y_cost / cost), float(np.quantile(moved, 0.95) / np.exp(x[-1]) * 1e3))
    verts, _ = problem.forward(x)
    n = flame.n_shape + flame.n_expression
    return FitResult(
        shape=x[: flame.n_shape].copy(), expression=x[flame.n_shape : n].copy(), pose=x[n : n + 15].copy(),
        translation=x[n + 15 : n + 18].copy(), log_scale=float(x[-1]), vertices=verts, converged=converged,
        loss=cost, iterations=iterations, rival_cost_ratio=rival[0], rival_p95_mm=rival[1],
    )


def fit_to_vertices(
    flame: FLAME, target: np.ndarray, mask: np.ndarray, config: RegistrationConfig, fit_scale: bool,
    iterations: int = 8,
) -> np.ndarray:
    """Parameter vector (as `fit_flame`'s `init`) of FLAME fitted to a mesh of its own topology (the fit a
    dataset ships, NPHM's ``flame.ply``): Gauss-Newton on the vertex offsets over `mask`, same priors.

    target: (V, 3) aligned frame. Vertex correspondences are known, so a few steps converge.
    """
    problem = _Problem(flame, None, config)
    rows_np = np.nonzero(mask)[0]
    rows = torch.as_tensor(rows_np)
    x = np.zeros(flame.n_shape + flame.n_expression + 19)
    free = _free_mask(flame.n_shape, flame.n_expression, coarse=False, fit_scale=fit_scale)
    idx = torch.as_tensor(np.nonzero(free)[0])
    weight = 1.0 / (len(rows_np) * DATA_UNIT**2)
    prior = torch.as_tensor(problem.prior)
    for _ in range(iterations):
        verts, _, d_verts, _ = problem.linearise(x, rows)
        r = torch.as_tensor(verts[rows_np] - target[rows_np]).reshape(-1)
        jac = d_verts.reshape(-1, d_verts.shape[-1])[:, idx]
        h = weight * jac.T @ jac + torch.diag(prior[idx])
        g = weight * jac.T @ r + prior[idx] * torch.as_tensor(x[free])
        step, info = torch.linalg.solve_ex(h + 1e-9 * torch.eye(len(idx), dtype=h.dtype), -g)
        if int(info) != 0:
            break
        x[free] += step.numpy()
    return x
