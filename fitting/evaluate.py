"""`p3dmm eval`: fitted meshes against ground truth, posed and neutral, as a table and an HTML page.

Pairs `PRED/<id>.posed.ply` with `GT/<id>.posed.ply` (or `GT/<id>.ply`) and `PRED/<id>.neutral.ply` with
`GT/<id>.neutral.ply`. Ground truth in FLAME topology (synthetic data) is aligned by the face-region
vertices, then ICP; ground truth of any other topology needs `GT/<id>.landmarks.npy` ((68, 3) iBUG
points, metres), matched with the fitted mesh's FLAME landmarks. Metrics: fitting.metrics.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from p3dmm.fitting.metrics import GeometryMetrics, evaluate_face
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.mesh import MeshError, load_mesh

KINDS = ("posed", "neutral")


def _gt_path(gt: Path, name: str, kind: str) -> Path | None:
    for candidate in ([gt / f"{name}.posed.ply", gt / f"{name}.ply"] if kind == "posed" else [gt / f"{name}.neutral.ply"]):
        if candidate.is_file():
            return candidate
    return None


def evaluate_dir(pred: str | os.PathLike, gt: str | os.PathLike, flame_dir: str | os.PathLike, *,
                 similarity: bool = False, samples: int = 20000) -> dict:
    """{"images": {id: {kind: metrics dict | {"error": reason}}}, "summary": {kind: {metric: median}}}."""
    from p3dmm.flame.files import load_assets

    pred, gt = Path(pred), Path(gt)
    assets = load_assets(flame_dir)
    faces = assets.model.faces
    face_v = np.zeros(assets.model.num_vertices, bool)
    face_v[assets.masks["face"]] = True
    region = face_v[faces].all(1)
    names = sorted(p.name[: -len(".posed.ply")] for p in pred.glob("*.posed.ply"))
    if not names:
        raise FileNotFoundError(f"{pred}: no <id>.posed.ply files (not a `p3dmm fit` output folder)")
    images: dict[str, dict] = {}
    for name in names:
        row = {}
        for kind in KINDS:
            gt_file = _gt_path(gt, name, kind)
            if gt_file is None:
                row[kind] = {"error": f"no ground truth for {name} ({kind})"}
                continue
            try:
                p_v, _ = load_mesh(pred / f"{name}.{kind}.ply")
                g_v, g_f = load_mesh(gt_file)
            except MeshError as e:
                row[kind] = {"error": str(e)}
                continue
            if len(g_v) == len(p_v):  # FLAME topology: the face vertices correspond
                m = evaluate_face(p_v, g_v, faces, region, p_v[face_v], g_v[face_v], similarity=similarity,
                                  samples=samples)
            else:
                lmk_file = gt / f"{name}.landmarks.npy"
                if not lmk_file.is_file() or assets.landmarks is None:
                    row[kind] = {"error": f"{gt_file}: other topology needs {lmk_file.name} and FLAME landmarks"}
                    continue
                g_lmk = np.load(lmk_file)
                p_lmk = flame_landmarks(assets, p_v)
                m = evaluate_face(p_v, g_v, (faces, g_f), (region, None), p_lmk, g_lmk, similarity=similarity,
                                  samples=samples)
            row[kind] = asdict(m)
        images[name] = row
    summary = {}
    for kind in KINDS:
        rows = [r[kind] for r in images.values() if "error" not in r[kind]]
        if rows:
            summary[kind] = {k: float(np.median([r[k] for r in rows])) for k in GeometryMetrics.__dataclass_fields__}
            summary[kind]["images"] = len(rows)
    return {"images": images, "summary": summary, "alignment": "similarity" if similarity else "rigid"}


def flame_landmarks(assets, vertices: np.ndarray) -> np.ndarray:
    """(68, 3) iBUG landmarks of a FLAME-topology mesh through the frontal landmark embedding."""
    emb = assets.landmarks
    corners = vertices[assets.model.faces[emb.full_faces]]  # (68, 3, 3)
    return (corners * emb.full_bary[..., None]).sum(1)


def write_report(result: dict, out: str | os.PathLike, pred: str | os.PathLike | None = None) -> Path:
    """OUT/eval.json, OUT/eval.csv and OUT/index.html (table; the fit overlays when PRED is given)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "eval.json", (json.dumps(result, indent=1) + "\n").encode())
    fields = list(GeometryMetrics.__dataclass_fields__)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "kind", *fields, "error"])
    for name, row in result["images"].items():
        for kind, m in row.items():
            writer.writerow([name, kind, *[m.get(f, "") for f in fields], m.get("error", "")])
    atomic_write(out / "eval.csv", buffer.getvalue().encode())
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>p3dmm eval</title><style>"
             "body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse;font-size:13px}"
             "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>Geometry evaluation ({esc(result['alignment'])} alignment, face region)</h1>", "<table><tr><th>set</th>"]
    parts += [f"<th>{esc(f)}</th>" for f in fields] + ["<th>images</th></tr>"]
    for kind, s in result["summary"].items():
        parts.append(f"<tr><td>{kind} (median)</td>" + "".join(f"<td>{s[f]:.3f}</td>" for f in fields)
                     + f"<td>{s['images']}</td></tr>")
    parts.append("</table><h2>Per image</h2><table><tr><th>image</th><th>kind</th>"
                 + "".join(f"<th>{esc(f)}</th>" for f in fields) + "</tr>")
    for name, row in result["images"].items():
        for kind, m in row.items():
            cells = (f"<td colspan={len(fields)}>{esc(m['error'])}</td>" if "error" in m
                     else "".join(f"<td>{m[f]:.3f}</td>" for f in fields))
            parts.append(f"<tr><td>{esc(name)}</td><td>{kind}</td>{cells}</tr>")
    parts.append("</table>")
    if pred is not None:
        for name in result["images"]:
            overlay = Path(pred) / f"{name}.overlay.png"
            if overlay.is_file():
                parts.append(f"<h3>{esc(name)}</h3><img src='{esc(os.path.relpath(overlay, out))}'>")
    parts.append("</body></html>\n")
    atomic_write(out / "index.html", "\n".join(parts).encode())
    return out / "index.html"
