"""The run report: OUT/report.html (and the same numbers in OUT/report.json) for every stage.

Everything shown is read back from the stages' own outputs (manifests, eval.json, index.json, the wandb
offline run, the fit manifests), never from what the driver remembers, so the page is right after a
rerun that reused stages. Pictures are linked by relative path, so the run folder can be moved or served.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from pathlib import Path

from p3dmm.flame.atomic import atomic_write
from p3dmm.pipeline.jobs.manifest import Manifest
from p3dmm.pipeline.run.config import STAGES, RunLayout

METRICS = (("chamfer_l1_mm", "Chamfer L1 (mm)"), ("chamfer_l2_mm", "Chamfer L2 (mm)"),
           ("normal_consistency", "normal consistency"), ("fscore_1mm", "F-score @1 mm"),
           ("fscore_5mm", "F-score @5 mm"))


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _manifest(path: Path) -> list[dict]:
    """Last entry per id of a manifest, as the jobs read it (a retried item counts once)."""
    return list(Manifest(path).entries.values()) if path.is_file() else []


def collect(p: RunLayout) -> dict:
    """The report's numbers, per stage, from the outputs on disk."""
    out = {"stages": {s: p.record(s) for s in STAGES}}
    registration = {}
    for ds in p.config.datasets:
        folder = p.registered_dir(ds)
        entries = _manifest(folder / "manifest.jsonl")
        status = Counter(e.get("status") for e in entries)
        row = {"scans": len(entries), "status": dict(status),
               "failed": [(e["id"], e.get("reason")) for e in entries if e.get("status") in ("failed", "error")]}
        truth = _json(folder / "eval.json")
        if truth:
            row["truth"] = truth["overall"]
        registration[ds.label] = row
    out["register"] = registration
    index = _json(p.out / "shards" / "index.json")
    if index:
        out["render"] = {"splits": {k: {"shards": v["shards"], "samples": v["samples"], "subjects": len(v["subjects"])}
                                    for k, v in index["splits"].items()},
                         "bytes": sum(e["bytes"] for e in index["shards"].values()),
                         "skipped_views": sum(len(e.get("skipped", [])) for e in _manifest(p.out / "shards" / "manifest.jsonl"))}
    out["train"] = _training(p)
    fits = {}
    for name in ("fit", "fit-baseline"):
        folder = p.out / name
        entries = _manifest(folder / "manifest.jsonl")
        if not entries:
            continue
        result = _json(folder / "eval" / "eval.json")
        fits[name] = {"images": len(entries), "fitted": sum(e["status"] == "ok" for e in entries),
                      "failed": [(e["id"], e.get("reason")) for e in entries if e["status"] != "ok"],
                      "summary": result["summary"] if result else None}
    out["fit"] = fits
    return out


def _training(p: RunLayout) -> dict | None:
    from p3dmm.training.wandb_offline import read_history

    runs = sorted((p.out / "train" / "wandb").glob("offline-run-*"))
    if not runs:
        return None
    rows = [row for run in runs for row in read_history(run)]  # a resumed training adds a run
    train = [(r["trainer/global_step"], r["train/loss"]) for r in rows if "train/loss" in r and "trainer/global_step" in r]
    steps = max((r["trainer/global_step"] for r in rows if "trainer/global_step" in r), default=0)
    val = [(r["trainer/global_step"], r) for r in rows if "val/loss" in r and "trainer/global_step" in r]
    last = val[-1][1] if val else {}
    return {"run": str(runs[0].parent), "steps": steps, "train_loss": train,
            "val": [(s, r["val/loss"]) for s, r in val],
            "last_val": {k: v for k, v in last.items() if k.startswith("val/all/") or k == "val/loss"}}


def _curves_png(train: dict, path: Path) -> Path | None:
    """Training loss and validation loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not train or not train["train_loss"]:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(*zip(*train["train_loss"], strict=True), label="train loss", lw=1)
    if train["val"]:
        ax.plot(*zip(*train["val"], strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("masked L1")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def write_report(p: RunLayout) -> Path:
    """Write OUT/report.json and OUT/report.html; return the page's path."""
    data = collect(p)
    atomic_write(p.out / "report.json", (json.dumps(data, indent=1) + "\n").encode())
    (p.out / "report_assets").mkdir(exist_ok=True)
    curves = _curves_png(data["train"], p.out / "report_assets" / "training_curves.png") if data["train"] else None
    page = _html(p, data, curves)
    atomic_write(p.out / "report.html", page.encode())
    return p.out / "report.html"


# -- HTML ------------------------------------------------------------------------------------------------
esc = html.escape


def _img(p: RunLayout, path: Path, caption: str = "", width: str = "100%") -> str:
    if not path.is_file():
        return f"<p class='missing'>missing picture: {esc(str(path))}</p>"
    rel = os.path.relpath(path, p.out)
    return (f"<figure><a href='{esc(rel)}'><img src='{esc(rel)}' style='max-width:{width}'></a>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else esc(str(v))

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _failures(items: list) -> str:
    if not items:
        return ""
    lis = "".join(f"<li><b>{esc(str(i))}</b>: {esc(str(r))}</li>" for i, r in items)
    return f"<details open><summary>{len(items)} failure(s)</summary><ul>{lis}</ul></details>"


STYLE = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;line-height:1.4}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;font-size:14px;margin:8px 0}td,th{padding:4px 10px;border-bottom:1px solid #e3e3e3;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}figure{margin:10px 0}figcaption{color:#666;font-size:13px}
img{border:1px solid #ddd}.ok{color:#17803d}.failed{color:#b3261e}.missing{color:#b3261e}.row{display:flex;gap:12px;flex-wrap:wrap}
.row figure{flex:1 1 0;min-width:0}.note{color:#555;font-size:14px}"""


def _html(p: RunLayout, data: dict, curves: Path | None) -> str:
    stages = data["stages"]
    total = sum(r["seconds"] for r in stages.values() if r)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>p3dmm run report</title><style>{STYLE}</style>"
             "</head><body>", "<h1>p3dmm pipeline report</h1>",
             f"<p class='note'>{esc(str(p.out.resolve()))} &middot; stage time in all {total:.0f} s (time of each stage's "
             "last real run; reused stages keep theirs)</p>", "<h2>Stages</h2>"]
    rows = []
    for name, record in stages.items():
        if record is None:
            rows.append([name, "not run", ""])
        else:
            rows.append([name, record["status"], f"{record['seconds']:.1f} s", record.get("error", "")])
    parts.append(_table(["stage", "status", "time", "error"], rows))
    if (p.out / "flame_preview.png").is_file():
        parts += ["<h2>FLAME model</h2>", _img(p, p.out / "flame_preview.png",
                                               "the synthetic FLAME-format model: identities, jaw/eye/neck poses, "
                                               "expressions", width="75%")]
    parts += _registration_html(p, data)
    parts += _shards_html(p, data)
    parts += _training_html(p, data, curves)
    parts += _fitting_html(p, data)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _registration_html(p: RunLayout, data: dict) -> list[str]:
    parts = ["<h2>Registration</h2>",
             "<p class='note'>Raw scans registered non-rigidly to FLAME topology (one Ray task per scan). Error: distance "
             "of the registration to the true surface over the face, where the scans have ground truth.</p>"]
    rows, failures = [], []
    for label, row in data["register"].items():
        truth = row.get("truth") or {}
        rows.append([label, row["scans"], row["status"].get("ok", 0), len(row["failed"]),
                     f"{truth['accepted']}/{truth['scans']}" if truth else "-",
                     truth.get("median_mm", "-"), truth.get("p95_mm", "-")])
        failures += [(f"{label}: {i}", r) for i, r in row["failed"]]
    parts.append(_table(["dataset", "scans", "registered", "failed", "accepted by QA", "median error (mm)",
                         "p95 error (mm)"], rows))
    parts.append(_failures(failures))
    for ds in p.config.datasets:  # one row per dataset: error histograms | one scan's QA panel
        report = p.registered_dir(ds) / "report"
        figs = [_img(p, report / "errors.png", f"{ds.label}: per-scan error histograms (median, p95)")]
        figs += [_img(p, o, f"{ds.label} {o.stem}: scan | registration | overlay | error")
                 for o in sorted((report / "scans").glob("*.png"))[:1]]
        parts.append("<div class='row'>" + "".join(figs) + "</div>")
    return parts


def _shards_html(p: RunLayout, data: dict) -> list[str]:
    render = data.get("render")
    if not render:
        return ["<h2>Shards</h2><p class='missing'>no shards yet</p>"]
    rows = [[split, v["shards"], v["samples"], v["subjects"]] for split, v in render["splits"].items()]
    return ["<h2>Shards</h2>",
            "<p class='note'>Multiview renders and photo views of every registered scan with normal, UV, mask and depth "
            f"targets; {render['bytes'] / 1e6:.1f} MB in all, {render['skipped_views']} view(s) skipped.</p>",
            _table(["split", "shards", "samples", "subjects"], rows),
            _img(p, p.out / "shards_preview.png", "samples: input | normals | UV | masks")]


def _training_html(p: RunLayout, data: dict, curves: Path | None) -> list[str]:
    train = data.get("train")
    if not train:
        return ["<h2>Training</h2><p class='missing'>no training run found</p>"]
    parts = ["<h2>Training</h2>", f"<p class='note'>{train['steps']} steps; wandb offline runs in {esc(train['run'])}.</p>"]
    if curves:
        parts.append(_img(p, curves, "training and validation loss", width="640px"))
    if train["last_val"]:
        parts.append(_table(["last validation metric", "value"], [[k, float(v)] for k, v in sorted(train["last_val"].items())]))
    panels = sorted((p.out / "train" / "panels").glob("val-step*.png"))
    if panels:
        parts.append(_img(p, panels[-1], f"validation predictions ({panels[-1].stem})"))
    return parts


def _fitting_html(p: RunLayout, data: dict) -> list[str]:
    fits = data.get("fit") or {}
    if "fit" not in fits:
        return ["<h2>Fitting</h2><p class='missing'>no fits yet</p>"]
    parts = ["<h2>Fitting and evaluation</h2>",
             "<p class='note'>Held-out views fitted with the trained priors (shape, expression, pose, camera) and, as the "
             "baseline, with the FLAME mean shape (pose, expression and camera only) against the same cues. Geometry "
             "against the ground truth over the face after rigid alignment; medians over images.</p>"]
    rows = []
    for name, label in (("fit", "ours"), ("fit-baseline", "mean-shape baseline")):
        f = fits.get(name)
        if not f or not f["summary"]:
            continue
        for kind in ("posed", "neutral"):
            s = f["summary"].get(kind)
            if s:
                rows.append([label, kind, s["images"], *[float(s[k]) for k, _ in METRICS]])
    parts.append(_table(["fit", "mesh", "images", *[t for _, t in METRICS]], rows))
    ours = fits["fit"]
    parts.append(f"<p>{ours['fitted']} of {ours['images']} images fitted.</p>" + _failures(ours["failed"]))
    overlays = sorted((p.out / "fit").glob("*.overlay.png"))[:3]
    parts += [_img(p, o, o.name.replace(".overlay.png", "") + ": input | fit | predicted normals | fitted normals")
              for o in overlays]
    maps = sorted((p.out / "fit" / "eval" / "maps").glob("*.png"))[:4]
    if maps:
        parts.append("<div class='row'>" + "".join(_img(p, m, m.stem + ": error map") for m in maps) + "</div>")
    parts.append(f"<p><a href='{esc(os.path.relpath(p.out / 'fit' / 'eval' / 'index.html', p.out))}'>per-image "
                 "evaluation page</a></p>")
    return parts
