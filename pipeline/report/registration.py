"""QA page for a registration run: per-scan overlays and heat maps, error distributions, the failed list.

`write_register_report(OUT)` reads what `p3dmm register` wrote (job.json, manifest.jsonl,
registered/*.npz), reloads each scan through its adapter, and writes `OUT/report/index.html` with one
row per scan (worst first): scan | registration | both overlaid | scan coloured by its distance to the
registration over the face region (grey = not scored: hair, torso, background). A histogram of
per-scan medians and p95s and a table of failures head the page. Nothing here knows registration maths.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import torch

from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.cameras import Cameras, intrinsics_from_fov, look_at, project
from p3dmm.flame.grid import image_grid, save_png
from p3dmm.flame.render import DEFAULT_BACKGROUND, raycast, shade
from p3dmm.flame.rotations import axis_angle_to_matrix
from p3dmm.pipeline.jobs.manifest import Manifest
from p3dmm.pipeline.registered import load_registered

SCAN_ALBEDO = (0.80, 0.80, 0.80)
REG_ALBEDO = (0.86, 0.62, 0.52)
UNSCORED = (0.62, 0.62, 0.62)
HEAT_MAX_MM = 3.0


def heat_colors(values_mm: np.ndarray, vmax: float = HEAT_MAX_MM) -> np.ndarray:
    """(N, 3) albedo in [0, 1]: blue (0 mm) -> green -> yellow -> red (>= vmax); NaN -> grey (unscored)."""
    stops = np.array([[0.15, 0.25, 0.85], [0.15, 0.75, 0.35], [0.95, 0.85, 0.15], [0.85, 0.12, 0.10]])
    x = np.clip(np.nan_to_num(values_mm, nan=0.0) / vmax, 0.0, 1.0) * (len(stops) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(stops) - 2)
    frac = (x - lo)[:, None]
    colors = stops[lo] * (1 - frac) + stops[lo + 1] * frac
    colors[~np.isfinite(values_mm)] = UNSCORED
    return colors


def colorbar(width: int, height: int = 14, vmax: float = HEAT_MAX_MM) -> np.ndarray:
    """(height, width, 3) uint8 strip of :func:`heat_colors` from 0 to vmax."""
    row = heat_colors(np.linspace(0.0, vmax, width), vmax)
    return np.repeat((row * 255).astype(np.uint8)[None], height, axis=0)


def face_camera(reg_vertices: np.ndarray, face_idx: np.ndarray, params: dict, size: int,
                yaw_deg: float = 25.0, pitch_deg: float = 8.0) -> Cameras:
    """A 3/4 portrait camera of the registered head, in the scan's frame.

    The head's forward and up directions come from the registration's similarity and global pose, so the
    view is frontal whatever frame the scan came in (FaceScape MVS, rotated generic scans).
    """
    rotation = np.asarray(params["rotation"], np.float64) @ axis_angle_to_matrix(
        torch.tensor(params["pose"][:3], dtype=torch.float64)).numpy()
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    forward = rotation @ np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
    up = rotation @ np.array([0.0, 1.0, 0.0])
    face = reg_vertices[face_idx]
    centre = face.mean(axis=0)
    extent = float(np.linalg.norm(face.max(axis=0) - face.min(axis=0)))
    fov = 20.0
    dist = 0.75 * extent / np.tan(np.radians(fov / 2))
    eye = centre + dist * forward
    R, t = look_at(torch.tensor(eye)[None], torch.tensor(centre)[None], torch.tensor(up)[None])
    return Cameras(K=intrinsics_from_fov(fov, (size, size), dtype=torch.float64), R=R, t=t, image_size=(size, size))


def splat_points(points: np.ndarray, colors: np.ndarray, camera: Cameras, radius: int = 1) -> np.ndarray:
    """Point-cloud preview: z-buffered square splats, (H, W, 3) uint8 (colours in [0, 1])."""
    height, width = camera.image_size
    uv, depth = project(torch.as_tensor(points, dtype=camera.R.dtype)[None], camera)
    uv, depth = uv[0].numpy(), depth[0].numpy()
    image = np.empty((height, width, 3), np.uint8)
    image[:] = DEFAULT_BACKGROUND
    zbuf = np.full((height, width), np.inf)
    order = np.argsort(-depth)  # far first, near overwrite
    cols = np.clip(np.rint(np.asarray(colors) * 255), 0, 255).astype(np.uint8)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            x = np.rint(uv[order, 0]).astype(int) + dx
            y = np.rint(uv[order, 1]).astype(int) + dy
            ok = (depth[order] > 0) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
            for i, xx, yy in zip(order[ok], x[ok], y[ok], strict=True):
                if depth[i] < zbuf[yy, xx]:
                    zbuf[yy, xx] = depth[i]
                    image[yy, xx] = cols[i]
    return image


def render_mesh_or_points(vertices: np.ndarray, faces: np.ndarray | None, colors: np.ndarray,
                          camera: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, depth (H, W) metres, inf on background) of a mesh or point cloud."""
    if faces is None:
        image = splat_points(vertices, colors, camera)
        mask = np.any(image != np.asarray(DEFAULT_BACKGROUND, np.uint8), axis=2)
        depth = np.where(mask, 0.0, np.inf)
        return image, depth
    hits = raycast(vertices, faces, camera)
    return shade(hits, vertices, faces, vertex_colors=colors), hits.depth


def overlay(scan_image: np.ndarray, scan_depth: np.ndarray, reg_image: np.ndarray, reg_depth: np.ndarray,
            alpha: float = 0.55) -> np.ndarray:
    """The registration blended over the scan where it is in front or within 2 mm of it."""
    out = scan_image.copy()
    show = np.isfinite(reg_depth) & (reg_depth <= scan_depth + 0.002)
    out[show] = np.rint(alpha * reg_image[show] + (1 - alpha) * scan_image[show]).astype(np.uint8)
    return out


def scan_errors_mm(scan_points: np.ndarray, reg_vertices: np.ndarray, faces: np.ndarray, region_faces: np.ndarray,
                   mm_per_unit: float, gate_mm: float = 10.0) -> np.ndarray:
    """(P,) distance of each scan point to the registered region surface in mm; NaN where not scored."""
    from p3dmm.registration.metrics import scan_distances

    skin = np.ones(len(faces), bool)
    return scan_distances(scan_points, reg_vertices, faces, region_faces, skin, gate_mm / mm_per_unit) * mm_per_unit


def scan_panels(npz_path: Path, job: dict, assets, size: int) -> tuple[np.ndarray, dict]:
    """Render the four panels of one registered scan; returns (row image, summary dict)."""
    from p3dmm.pipeline.datasets import reader

    registered = load_registered(npz_path)
    reg, params, metrics, record = registered.scan_vertices, registered.params, registered.metrics, registered.record
    scan = reader(job["source"]).load_scan(record)
    faces = assets.model.faces
    face_idx = np.asarray(assets.masks["face"], np.int64)
    region_v = np.zeros(len(reg), bool)
    region_v[face_idx] = True
    region_faces = region_v[faces].all(axis=1)
    mm_per_unit = 1000.0 / float(params["scale"])  # scan units -> FLAME mm

    camera = face_camera(reg, face_idx, params, size)
    errors = scan_errors_mm(scan.vertices, reg, faces, region_faces, mm_per_unit)
    grey = np.broadcast_to(np.asarray(SCAN_ALBEDO), scan.vertices.shape)
    scan_img, scan_depth = render_mesh_or_points(scan.vertices, scan.faces, grey, camera)
    reg_img, reg_depth = render_mesh_or_points(reg, faces, np.broadcast_to(np.asarray(REG_ALBEDO), reg.shape), camera)
    heat_img, _ = render_mesh_or_points(scan.vertices, scan.faces, heat_colors(errors), camera)
    heat_img[-16:-2, 8:-8] = colorbar(size - 16)
    row = image_grid([scan_img, reg_img, overlay(scan_img, scan_depth, reg_img, reg_depth), heat_img], ncols=4,
                     labels=["scan", "registration", "overlay", f"scan -> registration, 0-{HEAT_MAX_MM:g} mm"])
    scored = errors[np.isfinite(errors)]
    summary = {
        "scan_id": record.scan_id, "accepted": registered.accepted, "reason": registered.reason,
        "median_mm": metrics.get("median_mm"), "p95_mm": metrics.get("p95_mm"),
        "fit_median_mm": metrics.get("fit_median_mm"), "coverage": metrics.get("coverage"),
        "scored_points": len(scored), "scan_points": len(scan.vertices),
    }
    return row, summary


def error_histogram(summaries: list[dict], out: Path) -> None:
    """PNG histogram of per-scan median and p95 scan-to-registration distances (accepted and rejected)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    for ax, key, title in zip(axes, ("median_mm", "p95_mm"), ("median per scan", "p95 per scan"), strict=True):
        values = np.array([s[key] for s in summaries if s.get(key) is not None], float)
        values = values[np.isfinite(values)]
        if len(values):
            bins = np.linspace(0, max(float(values.max()) * 1.05, 0.5), 25)
            acc = [s[key] for s in summaries if s["accepted"] and s.get(key) is not None]
            rej = [s[key] for s in summaries if not s["accepted"] and s.get(key) is not None]
            ax.hist([acc, rej], bins=bins, stacked=True, color=["#3a7", "#d44"], label=["accepted", "rejected"])
            ax.legend(frameon=False, fontsize=8)
        ax.set_title(f"scan -> registration, {title}", fontsize=9)
        ax.set_xlabel("mm (FLAME scale)", fontsize=8)
        ax.set_ylabel("scans", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(out, buffer.getvalue())


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) and np.isfinite(value) else "-"


def write_register_report(out: str | os.PathLike, size: int = 256, limit: int | None = None,
                          progress: bool = True) -> Path:
    """Write OUT/report/index.html (+ PNGs) for a `p3dmm register` output folder; returns its path."""
    from tqdm import tqdm

    from p3dmm.flame.files import load_assets

    out = Path(out)
    job = json.loads((out / "job.json").read_text())
    assets = load_assets(job["flame_dir"])
    manifest = Manifest(out / "manifest.jsonl")
    report = out / "report"
    (report / "scans").mkdir(parents=True, exist_ok=True)

    paths = sorted((out / "registered").glob("*.npz"))
    summaries, broken = [], []
    for path in tqdm(paths[:limit], desc="report", unit="scan", disable=not progress):
        try:
            row, summary = scan_panels(path, job, assets, size)
        except Exception as e:  # a scan that cannot be re-read is listed, not fatal for the page
            broken.append((path.name, f"{type(e).__name__}: {e}"))
            continue
        image_name = f"scans/{path.stem}.png"
        save_png(report / image_name, row)
        summaries.append({**summary, "image": image_name})
    summaries.sort(key=lambda s: (s["accepted"], -(s["median_mm"] or 0.0)))
    error_histogram(summaries, report / "errors.png")
    failed = [e for e in manifest.entries.values() if e.get("status") == "failed"]
    page = _html(job, summaries, failed, broken)
    atomic_write(report / "index.html", page.encode())
    return report / "index.html"


def _html(job: dict, summaries: list[dict], failed: list[dict], broken: list[tuple[str, str]]) -> str:
    esc = html.escape
    accepted = sum(s["accepted"] for s in summaries)
    medians = np.array([s["median_mm"] for s in summaries if s["accepted"] and s["median_mm"] is not None], float)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>registration QA: {esc(job['source'])}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222}"
        "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
        "text-align:left}.bad{color:#b22}.ok{color:#282}img{max-width:100%}h2{margin-top:28px}</style>",
        "</head><body>",
        f"<h1>Registration QA: {esc(job['source'])}</h1>",
        f"<p>root <code>{esc(job['root'])}</code>, FLAME <code>{esc(job['flame_dir'])}</code></p>",
        f"<p><b>{len(summaries)}</b> registered scans, <b class='ok'>{accepted}</b> accepted, "
        f"<b class='bad'>{len(summaries) - accepted}</b> rejected, <b class='bad'>{len(failed)}</b> failed to load."
        + (f" Median of accepted per-scan medians: <b>{np.median(medians):.2f} mm</b>." if len(medians) else "")
        + "</p>",
        "<p>Distances are from scan points near the registered face region to the registration, in FLAME "
        "millimetres; hair, torso and background are not scored (grey in the heat map).</p>",
        "<img src='errors.png' alt='error distribution'>",
    ]
    if failed or broken:
        parts.append("<h2>Failed</h2><table><tr><th>scan</th><th>reason</th></tr>")
        for entry in sorted(failed, key=lambda e: e["id"]):
            parts.append(f"<tr><td>{esc(entry['id'])}</td><td class='bad'>{esc(str(entry.get('reason')))}</td></tr>")
        for name, reason in broken:
            parts.append(f"<tr><td>{esc(name)}</td><td class='bad'>report: {esc(reason)}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Scans (rejected first, then by median error)</h2><table><tr><th>scan</th><th>verdict</th>"
                 "<th>median mm</th><th>p95 mm</th><th>FLAME fit median mm</th><th>coverage</th></tr>")
    for s in summaries:
        verdict = "<span class='ok'>accepted</span>" if s["accepted"] else f"<span class='bad'>{esc(s['reason'])}</span>"
        parts.append(f"<tr><td><a href='#{esc(s['scan_id'])}'>{esc(s['scan_id'])}</a></td><td>{verdict}</td>"
                     f"<td>{_fmt(s['median_mm'])}</td><td>{_fmt(s['p95_mm'])}</td><td>{_fmt(s['fit_median_mm'])}</td>"
                     f"<td>{_fmt(s['coverage'])}</td></tr>")
    parts.append("</table>")
    for s in summaries:
        parts.append(f"<h3 id='{esc(s['scan_id'])}'>{esc(s['scan_id'])}: median {_fmt(s['median_mm'])} mm, "
                     f"p95 {_fmt(s['p95_mm'])} mm</h3><img src='{esc(s['image'])}' alt='{esc(s['scan_id'])}'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
