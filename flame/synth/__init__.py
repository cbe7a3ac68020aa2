"""A synthetic head in FLAME's formats: tests and the demo exercise the very loader real users need.

`synthesize_flame` builds everything in memory (template, identity/expression bases, pose
correctives, skinning, joint regressor, UV layout, 68 landmarks, 14 region masks);
`write_synthetic_flame` writes it with the official writers of :mod:`p3dmm.flame.files`, so the
folder looks exactly like a real FLAME download (no licensed data involved). Deterministic: the
same seed and size give the same bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p3dmm.flame.assets import FlameAssets, FlameModelData, UVLayout
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.synth.anatomy import Anatomy
from p3dmm.flame.synth.annotate import landmark_embedding, region_masks
from p3dmm.flame.synth.bases import expression_basis, pose_correctives, shape_basis
from p3dmm.flame.synth.head import HeadMesh, build_head
from p3dmm.flame.synth.rig import PARENTS, joint_regressor, skinning_weights

INFO_FILE = "synthetic.json"


@dataclass(frozen=True)
class SyntheticFlame:
    assets: FlameAssets
    head: HeadMesh
    expression_names: list[str]


def vertex_uv(vt: np.ndarray, ft: np.ndarray, faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """One UV per vertex: the first texture coordinate a face assigns to it."""
    out = np.full((n_vertices, 2), np.nan)
    flat_v, flat_t = faces.reshape(-1), ft.reshape(-1)
    first = np.unique(flat_v, return_index=True)
    out[first[0]] = vt[flat_t[first[1]]]
    return out


IDENTITIES = ("easy", "flame")


def synthesize_flame(n_vertices: int = 5023, seed: int = 0, identity: str = "easy") -> SyntheticFlame:
    """identity: "easy" (default, a narrow identity spread: median 3.7 mm from the template) or
    "flame" (real FLAME's spread: median about 11-12 mm); see docs/flame.md."""
    if identity not in IDENTITIES:
        raise ValueError(f"identity: expected one of {list(IDENTITIES)}, got {identity!r}")
    if n_vertices < 600:
        raise ValueError(f"n_vertices: need at least 600 for a recognisable head, got {n_vertices}")
    rng = np.random.default_rng(seed)
    anatomy = Anatomy().jittered(rng)
    head = build_head(anatomy, n_vertices)
    shapedirs = shape_basis(head, rng, identity=identity)
    exprdirs, names = expression_basis(head, rng)
    j_reg = joint_regressor(head)
    model = FlameModelData(
        v_template=head.verts,
        faces=head.faces,
        shapedirs=np.concatenate([shapedirs, exprdirs], axis=2),
        posedirs=pose_correctives(head, rng),
        j_regressor=j_reg.toarray(),
        weights=skinning_weights(head),
        parents=PARENTS.copy(),
    )
    uv = UVLayout(vt=head.vt, ft=head.ft, vertex_uv=vertex_uv(head.vt, head.ft, head.faces, len(head.verts)))
    assets = FlameAssets(model=model, landmarks=landmark_embedding(head), masks=region_masks(head), uv=uv)
    return SyntheticFlame(assets=assets, head=head, expression_names=names)


def write_synthetic_flame(out: str | os.PathLike, n_vertices: int = 5023, seed: int = 0,
                          identity: str = "easy") -> SyntheticFlame:
    """Write the official files (generic_model.pkl, landmark_embedding.npy, FLAME_masks.pkl,
    head_template.obj) and `synthetic.json` (seed, size, identity setting, expression names) into `out`.

    The default "easy" identity writes `synthetic.json` without an "identity" key, so its bytes are the
    ones written before the setting existed; "flame" records `"identity": "flame"`."""
    from p3dmm.flame.files import write_assets

    synth = synthesize_flame(n_vertices, seed, identity)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_assets(out, synth.assets)
    info = {
        "generator": "p3dmm flame synth",
        "seed": seed,
        "requested_vertices": n_vertices,
        "vertices": synth.assets.model.num_vertices,
        "faces": len(synth.assets.model.faces),
        **({} if identity == "easy" else {"identity": identity}),
        "expression_names": synth.expression_names,
        "note": "Synthetic FLAME-format head: no licensed FLAME data is involved.",
    }
    atomic_write(out / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode())
    return synth
