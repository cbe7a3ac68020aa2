"""`p3dmm eval`: fitted meshes against ground truth, posed and neutral, as a table, error maps and an HTML page.

Default protocol: pairs `PRED/<id>.posed.ply` with `GT/<id>.posed.ply` (or `GT/<id>.ply`) and
`PRED/<id>.neutral.ply` with `GT/<id>.neutral.ply`. Ground truth in FLAME topology (synthetic data) is aligned
by the face-region vertices, then ICP; ground truth of any other topology needs `GT/<id>.landmarks.npy`
((68, 3) iBUG points, metres), matched with the fitted mesh's FLAME landmarks. Metrics: fitting.metrics.

NoW protocol (Sanyal et al. 2019): `GT/<id>.ply` (or .obj) is a scan with its 7 landmarks in
`GT/<id>.now_landmarks.npy` (or .txt), (7, 3), in NoW's order (NOW_IBUG), both in metres. Both the posed and the
neutral fit are measured against that one scan: NoW's face crop of the scan (a ball from its landmarks), rigid
landmark alignment, rigid scan-to-mesh ICP (with scale under `similarity`, as the original NoW challenge), then
the median, mean and std of the cropped scan points' distances to the fitted surface.

Error maps (OUT/maps/<id>.<kind>.png): the surface whose distances were measured, coloured by them, next to the
other surface in grey, after the alignment the metrics used (fitting.error_maps).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from p3dmm.fitting.error_maps import error_map, face_axes, front_camera, write_error_map
from p3dmm.fitting.metrics import (
    AlignedFace,
    GeometryMetrics,
    ScanMetrics,
    align_face,
    align_to_scan,
    compare_surfaces,
    now_face_crop,
    surface_distances,
)
from p3dmm.flame.assets import FlameAssets
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.cameras import Cameras
from p3dmm.flame.landmarks import frontal_landmarks
from p3dmm.flame.mesh import MeshError, load_mesh

KINDS = ("posed", "neutral")
PROTOCOLS = ("default", "now")
FIELDS = {"default": list(GeometryMetrics.__dataclass_fields__), "now": list(ScanMetrics.__dataclass_fields__)}
NOW_IBUG = (36, 39, 42, 45, 33, 48, 54)
"""iBUG-68 indices of NoW's 7 landmarks, in NoW's order: right eye outer corner (36), right eye inner (39),
left eye inner (42), left eye outer (45), nose bottom (33), right mouth corner (48), left mouth corner (54)."""
MAP_SIZE = 256


class RowError(Exception):
    """One image and kind cannot be evaluated: its row says why, the others go on."""


@dataclass(frozen=True)
class Flame:
    """What every row needs from the FLAME folder: assets, faces, face-region vertex and face masks."""

    assets: FlameAssets
    faces: np.ndarray
    face_vertices: np.ndarray
    face_region: np.ndarray


def load_flame(flame_dir: str | os.PathLike) -> Flame:
    """Load the FLAME folder once per evaluation (its face mask is the measured region)."""
    from p3dmm.flame.files import load_assets

    assets = load_assets(flame_dir)
    faces = assets.model.faces
    face_v = np.zeros(assets.model.num_vertices, bool)
    face_v[assets.masks["face"]] = True
    return Flame(assets, faces, face_v, face_v[faces].all(1))


def _first_file(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def _gt_path(gt: Path, name: str, kind: str) -> Path | None:
    posed = [gt / f"{name}.posed.ply", gt / f"{name}.ply"]
    return _first_file(posed if kind == "posed" else [gt / f"{name}.neutral.ply"])


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A mesh, or a RowError saying why not (one bad file must not stop the evaluation)."""
    try:
        return load_mesh(path)
    except MeshError as e:
        raise RowError(str(e)) from None


def _camera(flame: Flame, pred_vertices: np.ndarray) -> Cameras:
    """The front view of an aligned prediction: face axes from its landmarks (FLAME's x, y without them)."""
    if flame.assets.landmarks is not None:
        right, up = face_axes(frontal_landmarks(flame.assets, pred_vertices))
    else:
        right, up = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    return front_camera(pred_vertices[flame.face_vertices], right, up, MAP_SIZE)


def _default_alignment(flame: Flame, p_v: np.ndarray, g_v: np.ndarray, g_f: np.ndarray, gt_file: Path,
                       lmk_file: Path, *, similarity: bool, samples: int) -> AlignedFace:
    """FLAME-topology ground truth aligns by its face vertices; any other by its 68 landmarks."""
    if len(g_v) == len(p_v):  # FLAME topology: the face vertices correspond
        fv = flame.face_vertices
        return align_face(p_v, g_v, flame.faces, flame.face_region, p_v[fv], g_v[fv], similarity=similarity,
                          samples=samples)
    if not lmk_file.is_file() or flame.assets.landmarks is None:
        raise RowError(f"{gt_file}: other topology needs {lmk_file.name} and FLAME landmarks")
    return align_face(p_v, g_v, (flame.faces, g_f), (flame.face_region, None), frontal_landmarks(flame.assets, p_v),
                      np.load(lmk_file), similarity=similarity, samples=samples)


def _default_row(flame: Flame, p_v: np.ndarray, gt: Path, name: str, kind: str, *, similarity: bool,
                 samples: int) -> tuple[dict, np.ndarray]:
    """Metrics of one fit against its ground-truth mesh, and its error map (the prediction coloured)."""
    gt_file = _gt_path(gt, name, kind)
    if gt_file is None:
        raise RowError(f"no ground truth for {name} ({kind})")
    g_v, g_f = _load(gt_file)
    aligned = _default_alignment(flame, p_v, g_v, g_f, gt_file, gt / f"{name}.landmarks.npy",
                                 similarity=similarity, samples=samples)
    metrics = asdict(compare_surfaces(*aligned.meshes(), samples))
    measured = np.unique(aligned.pred_faces)
    dist_mm = np.full(len(p_v), np.nan)
    dist_mm[measured] = surface_distances(aligned.pred_vertices[measured], g_v, aligned.gt_faces) * 1000
    labels = (f"fit ({kind}): distance to ground truth", "ground truth")
    picture = error_map((aligned.pred_vertices, flame.faces, dist_mm), (g_v, g_f), _camera(flame, aligned.pred_vertices),
                        labels, caption="distance from the fit to the ground-truth surface, mm")
    return metrics, picture


def _now_landmarks(gt: Path, name: str) -> np.ndarray:
    """The scan's 7 NoW landmarks (metres), or a RowError naming the file and what is wrong."""
    npy, txt = gt / f"{name}.now_landmarks.npy", gt / f"{name}.now_landmarks.txt"
    if npy.is_file():
        lmk = np.load(npy)
    elif txt.is_file():
        lmk = np.loadtxt(txt)
    else:
        raise RowError(f"{npy} (or {txt.name}) missing: the NoW protocol needs the scan's 7 landmarks")
    lmk = np.asarray(lmk, np.float64)
    if lmk.shape != (7, 3) or not np.isfinite(lmk).all():
        raise RowError(f"{npy if npy.is_file() else txt}: need (7, 3) finite points (metres), got {lmk.shape}")
    if np.linalg.norm(lmk[0] - lmk[3]) > 1.0:  # the outer eye corners are ~0.1 m apart
        raise RowError(f"{npy if npy.is_file() else txt}: eye corners {np.linalg.norm(lmk[0] - lmk[3]):.0f} apart: "
                       "millimetres (NoW's unit)? scans and landmarks must be in metres")
    return lmk


def _now_row(flame: Flame, p_v: np.ndarray, gt: Path, name: str, kind: str, *,
             similarity: bool) -> tuple[dict, np.ndarray]:
    """NoW scan-to-mesh distances of one fit over the scan's face crop, and its error map (the scan coloured)."""
    scan_file = _first_file([gt / f"{name}.ply", gt / f"{name}.obj"])
    if scan_file is None:
        raise RowError(f"no scan for {name}: {gt / name}.ply (or .obj)")
    s_lmk = _now_landmarks(gt, name)
    s_v, s_f = _load(scan_file)
    crop = now_face_crop(s_v, s_lmk)
    if crop.sum() < 100:
        raise RowError(f"{scan_file}: {int(crop.sum())} scan points within NoW's face crop of its landmarks "
                       "(landmarks of another scan, or not in metres?)")
    p_lmk = frontal_landmarks(flame.assets, p_v)[list(NOW_IBUG)]
    aligned = align_to_scan(p_v, flame.faces, p_lmk, s_v[crop], s_lmk, similarity=similarity)
    dist_mm = np.full(len(s_v), np.nan)
    dist_mm[crop] = aligned.distances * 1000
    labels = (f"scan: distance to the fit ({kind})", f"fit ({kind}), aligned")
    picture = error_map((s_v, s_f, dist_mm), (aligned.pred_vertices, flame.faces), _camera(flame, aligned.pred_vertices),
                        labels, caption="distance from the scan to the fitted surface, mm")
    return {**asdict(aligned.metrics()), "scan_points": int(crop.sum())}, picture


def _row(flame: Flame, pred: Path, gt: Path, name: str, kind: str, protocol: str, out: Path | None, *,
         similarity: bool, samples: int) -> dict:
    """One table row: metrics (and the map's path under OUT), or {"error": reason}."""
    try:
        p_v, _ = _load(pred / f"{name}.{kind}.ply")
        if len(p_v) != flame.assets.model.num_vertices:
            raise RowError(f"{pred / name}.{kind}.ply: {len(p_v)} vertices, not FLAME's "
                           f"{flame.assets.model.num_vertices} (a fit of another FLAME model?)")
        if protocol == "now":
            row, picture = _now_row(flame, p_v, gt, name, kind, similarity=similarity)
        else:
            row, picture = _default_row(flame, p_v, gt, name, kind, similarity=similarity, samples=samples)
    except RowError as e:
        return {"error": str(e)}
    if out is not None:
        map_name = f"maps/{name}.{kind}.png"
        write_error_map(out / map_name, picture)
        row["map"] = map_name
    return row


def _summary(images: dict, fields: list[str], reduce) -> dict:
    """{kind: {metric: reduce over the images that have it, "images": count}}."""
    summary = {}
    for kind in KINDS:
        rows = [r[kind] for r in images.values() if "error" not in r[kind]]
        if rows:
            summary[kind] = {k: float(reduce([r[k] for r in rows])) for k in fields} | {"images": len(rows)}
    return summary


def evaluate_dir(pred: str | os.PathLike, gt: str | os.PathLike, flame_dir: str | os.PathLike, *,
                 similarity: bool = False, samples: int = 20000, protocol: str = "default",
                 out: str | os.PathLike | None = None) -> dict:
    """{"images": {id: {kind: metrics dict | {"error": reason}}}, "summary": {kind: {metric: median over images}},
    "summary_mean": the same with means, "protocol", "alignment"}. With `out`, error maps go to OUT/maps."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    pred, gt = Path(pred), Path(gt)
    flame = load_flame(flame_dir)
    if protocol == "now" and flame.assets.landmarks is None:
        raise ValueError(f"{flame_dir}: the NoW protocol needs the FLAME landmark embedding (landmark_embedding.npy)")
    names = sorted(p.name[: -len(".posed.ply")] for p in pred.glob("*.posed.ply"))
    if not names:
        raise FileNotFoundError(f"{pred}: no <id>.posed.ply files (not a `p3dmm fit` output folder)")
    out = None if out is None else Path(out)
    images = {name: {kind: _row(flame, pred, gt, name, kind, protocol, out, similarity=similarity, samples=samples)
                     for kind in KINDS} for name in names}
    fields = FIELDS[protocol]
    alignment = "similarity" if similarity else "rigid"
    if protocol == "now":
        alignment += " (7 landmarks, then scan-to-mesh ICP)"
    return {"protocol": protocol, "images": images, "summary": _summary(images, fields, np.median),
            "summary_mean": _summary(images, fields, np.mean), "alignment": alignment}


def _write_csv(result: dict, path: Path, fields: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "kind", *fields, "error"])
    for name, row in result["images"].items():
        for kind, m in row.items():
            writer.writerow([name, kind, *[m.get(f, "") for f in fields], m.get("error", "")])
    atomic_write(path, buffer.getvalue().encode())


_STYLE = ("body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse;font-size:13px}"
          "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}"
          ".maps{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figcaption{font-size:13px}")


def _title(result: dict) -> str:
    if result.get("protocol") == "now":
        return f"Geometry evaluation (NoW protocol, {result['alignment']} alignment)"
    return f"Geometry evaluation ({result['alignment']} alignment, face region)"


def _note(result: dict) -> str:
    """What the numbers and the pictures are, in one paragraph under the title."""
    if result.get("protocol") == "now":
        return ("Distances (mm) from every scan point in NoW's face crop to the fitted surface. The posed and the "
                "neutral fit are each measured against the one scan. Error maps: the scan coloured by its distance "
                "(dark grey: outside the crop), next to the aligned fit.")
    return ("Point-to-surface metrics (mm) over the face region. Error maps: the aligned fit coloured by the "
            "distance of its face-region vertices to the ground-truth surface, next to the ground truth.")


def _summary_table(result: dict, fields: list[str]) -> list[str]:
    esc = html.escape
    parts = ["<table><tr><th>set</th>", *[f"<th>{esc(f)}</th>" for f in fields], "<th>images</th></tr>"]
    for key, how in (("summary", "median"), ("summary_mean", "mean")):
        for kind, s in result.get(key, {}).items():
            parts.append(f"<tr><td>{kind} ({how} over images)</td>" + "".join(f"<td>{s[f]:.3f}</td>" for f in fields)
                         + f"<td>{s['images']}</td></tr>")
    return [*parts, "</table>"]


def _rows_table(result: dict, fields: list[str]) -> list[str]:
    esc = html.escape
    parts = ["<h2>Per image</h2><table><tr><th>image</th><th>kind</th>"
             + "".join(f"<th>{esc(f)}</th>" for f in fields) + "</tr>"]
    for name, row in result["images"].items():
        for kind, m in row.items():
            cells = (f"<td colspan={len(fields)}>{esc(m['error'])}</td>" if "error" in m
                     else "".join(f"<td>{m[f]:.3f}</td>" for f in fields))
            parts.append(f"<tr><td><a href='#{esc(name)}'>{esc(name)}</a></td><td>{kind}</td>{cells}</tr>")
    return [*parts, "</table>"]


def _image_sections(result: dict, out: Path, pred: Path | None) -> list[str]:
    """Per image: its fit overlay (when PRED is given) and its error maps, posed and neutral."""
    esc = html.escape
    parts = []
    for name, row in result["images"].items():
        figures = []
        overlay = None if pred is None else Path(pred) / f"{name}.overlay.png"
        if overlay is not None and overlay.is_file():
            figures.append(f"<figure><img src='{esc(os.path.relpath(overlay, out))}'><figcaption>fit overlay"
                           "</figcaption></figure>")
        for kind, m in row.items():
            if "map" in m:
                figures.append(f"<figure><img src='{esc(m['map'])}'><figcaption>{kind}: error map"
                               "</figcaption></figure>")
        body = f"<div class=maps>{''.join(figures)}</div>" if figures else "<p>no error map (see its rows)</p>"
        parts.append(f"<h3 id='{esc(name)}'>{esc(name)}</h3>{body}")
    return parts


def write_report(result: dict, out: str | os.PathLike, pred: str | os.PathLike | None = None) -> Path:
    """OUT/eval.json, OUT/eval.csv and OUT/index.html (tables; per image the fit overlay when PRED is given
    and the error maps that evaluate_dir wrote under OUT/maps)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fields = FIELDS[result.get("protocol", "default")]
    atomic_write(out / "eval.json", (json.dumps(result, indent=1) + "\n").encode())
    _write_csv(result, out / "eval.csv", fields)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>p3dmm eval</title><style>{_STYLE}</style>"
             "</head><body>", f"<h1>{html.escape(_title(result))}</h1>",
             f"<p>{html.escape(_note(result))}</p>", *_summary_table(result, fields),
             *_rows_table(result, fields), *_image_sections(result, out, pred), "</body></html>\n"]
    atomic_write(out / "index.html", "\n".join(parts).encode())
    return out / "index.html"
