"""How wide a FLAME model's identity space is, measured the way FLAME is used.

FLAME's shape coefficients are in units of each component's sigma, so identities are drawn as
shape ~ N(0, 1) on the first `n` components. `identity_spread_mm` reports how far such heads lie
from the template, per skin vertex (eyeballs excluded): real FLAME 2020 gives a median of about
12 mm and a p95 of about 23 mm; p3dmm's synthetic "easy" head about 3.7 mm. Works on any
:class:`~p3dmm.flame.assets.FlameAssets`, real or synthetic (`p3dmm flame check` prints it).
"""

from __future__ import annotations

import numpy as np

from p3dmm.flame.assets import FlameAssets


def skin_vertices(assets: FlameAssets) -> np.ndarray:
    """Indices of all vertices but the eyeballs (from the masks; all vertices when there are none)."""
    n = assets.model.num_vertices
    eyes = [assets.masks[k] for k in ("left_eyeball", "right_eyeball") if assets.masks and k in assets.masks]
    if not eyes:
        return np.arange(n)
    return np.setdiff1d(np.arange(n), np.concatenate(eyes))


def identity_spread_mm(assets: FlameAssets, n: int = 100, samples: int = 64, seed: int = 0) -> tuple[float, float]:
    """(median, p95) in mm of |v_i(shape) - template_i| over skin vertices and `samples` random
    identities, shape ~ N(0, 1) on the first `n` components (fewer if the model has fewer)."""
    m = assets.model
    k = min(n, m.num_shape)
    dirs = np.asarray(m.shapedirs[:, :, :k], dtype=np.float64)[skin_vertices(assets)]
    beta = np.random.default_rng(seed).standard_normal((samples, k))
    dist = np.linalg.norm(np.einsum("vck,sk->svc", dirs, beta), axis=-1)
    return float(np.median(dist) * 1e3), float(np.percentile(dist, 95) * 1e3)


def identity_folds(assets: FlameAssets, components: int = 10, sigma: float = 3.0) -> tuple[float, float, float]:
    """Each of the first `components` shape components alone at +-sigma: (the largest fraction of faces
    whose normal flips against the template's, the smallest and the largest ratio of enclosed signed
    volume to the template's). A plausible identity space keeps flips near 0 and volumes positive."""
    m = assets.model
    faces = np.asarray(m.faces)

    def normals_and_volume(v):
        tri = v[faces]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        return n, float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6)

    n0, vol0 = normals_and_volume(m.v_template)
    worst, ratios = 0.0, []
    for c in range(min(components, m.num_shape)):
        for s in (-sigma, sigma):
            n1, vol = normals_and_volume(m.v_template + s * m.shapedirs[:, :, c])
            worst = max(worst, float((np.einsum("ij,ij->i", n0, n1) < 0).mean()))
            ratios.append(vol / vol0)
    return worst, min(ratios), max(ratios)
