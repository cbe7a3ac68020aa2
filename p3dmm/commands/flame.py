"""`p3dmm flame ...`: check real FLAME files, write the synthetic head, preview either."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from jsonargparse.typing import PositiveInt

from p3dmm.commands import CommandError


def _load(flame: Path | None):
    from p3dmm.flame.assets import FlameFileError
    from p3dmm.flame.files import load_assets, resolve_flame_dir

    try:
        folder = resolve_flame_dir(flame)
        return folder, load_assets(folder)
    except FlameFileError as e:
        raise CommandError(str(e)) from None


def check(*, flame: Path | None = None) -> int:
    """Load a FLAME folder and print what it holds; exit 2 on a bad or missing file.

    Args:
        flame: folder with generic_model.pkl (or flame2023*.pkl), landmark_embedding.npy,
            FLAME_masks.pkl and head_template.obj; default: $P3DMM_FLAME_DIR.
    """
    import numpy as np

    from p3dmm.flame.files import find_flame_files
    from p3dmm.flame.mirror import mirror_map, uv_mirror_axis

    folder, assets = _load(flame)
    m = assets.model
    found = find_flame_files(folder)
    print(f"FLAME folder: {folder}")
    for role, path in found.items():
        print(f"  {role:<10} {path if path is not None else '(absent)'}")
    print(f"vertices: {m.num_vertices}  faces: {len(m.faces)}")
    print(f"components: {m.num_shape} shape + {m.num_expression} expression; pose correctives: "
          f"{m.posedirs.shape[2]}; joints: {m.weights.shape[1]} (parents {m.parents.tolist()})")
    joints = m.j_regressor @ m.v_template
    size = m.v_template.max(axis=0) - m.v_template.min(axis=0)
    print(f"template extent (m): {np.round(size, 3).tolist()}; rest joints (m): {np.round(joints, 3).tolist()}")
    if assets.landmarks is not None:
        lm = assets.landmarks
        print(f"landmarks: {len(lm.static_faces)} static + {lm.dynamic_faces.shape[1]} dynamic contour "
              f"x {lm.dynamic_faces.shape[0]} rows ({len(lm.full_faces)} frontal)")
    else:
        print("landmarks: (absent)")
    if assets.masks:
        print("masks: " + ", ".join(f"{k} {len(v)}" for k, v in assets.masks.items()))
    else:
        print("masks: (absent)")
    if assets.uv is not None:
        print(f"uv: {len(assets.uv.vt)} texture coordinates for {m.num_vertices} vertices", end="")
        try:
            mirror = mirror_map(m.v_template, tol=1e-3)
            axis, spread = uv_mirror_axis(assets.uv.vertex_uv, mirror, assets.masks.get("face"))
            print(f"; mirror axis u = {axis:.4f} (+- {spread:.4f})")
        except ValueError:
            print("; template is not mirror-symmetric within 1 mm")
    else:
        print("uv: (absent)")
    if m.num_shape:
        from p3dmm.flame.spread import identity_spread_mm

        k = min(100, m.num_shape)
        median, p95 = identity_spread_mm(assets, n=k)
        print(f"identity spread (shape ~ N(0, 1) on {k} components, skin vertices): median {median:.1f} mm, "
              f"p95 {p95:.1f} mm from the template (real FLAME 2020: about 12 and 23 mm)")
    return 0


def synth(*, out: Path, vertices: PositiveInt = 5023, seed: int = 0,
          identity: Literal["easy", "flame"] = "easy") -> int:
    """Write a synthetic head in the official FLAME file formats (no licensed data).

    Args:
        out: folder to write generic_model.pkl, landmark_embedding.npy, FLAME_masks.pkl,
            head_template.obj and synthetic.json into.
        vertices: approximate vertex count (FLAME has 5023; tests use 1000-2000).
        seed: random seed; the same seed and size give the same bytes.
        identity: identity spread: "easy" (narrow, median 3.7 mm from the template) or "flame"
            (real FLAME's scale, median about 11-12 mm); see docs/flame.md.
    """
    from p3dmm.flame.synth import write_synthetic_flame

    if vertices < 600:
        raise CommandError(f"--vertices must be at least 600 for a recognisable head, got {vertices}")
    start = time.perf_counter()
    result = write_synthetic_flame(out, n_vertices=vertices, seed=seed, identity=identity)
    m = result.assets.model
    print(f"wrote synthetic FLAME to {out}: {m.num_vertices} vertices, {len(m.faces)} faces, "
          f"{m.num_shape}+{m.num_expression} components, identity {identity} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def preview(*, out: Path, flame: Path | None = None, identities: int = 6, expressions: int = 24,
            size: PositiveInt = 224, seed: int = 0) -> int:
    """Render template, poses, random identities and expression components into one PNG grid.

    Args:
        out: PNG to write.
        flame: FLAME folder (real or synthetic); default: $P3DMM_FLAME_DIR.
        identities: number of random identities.
        expressions: number of expression components, each shown at +2.5 sigma.
        size: pixels per panel.
        seed: seed of the random identities.
    """
    from p3dmm.flame.preview import write_preview

    folder, assets = _load(flame)
    start = time.perf_counter()
    path = write_preview(assets, out, folder=folder, n_identities=identities, n_expressions=expressions,
                         size=size, seed=seed)
    print(f"wrote {path} ({time.perf_counter() - start:.1f} s)")
    return 0
