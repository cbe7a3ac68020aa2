"""`p3dmm eval`: fitted meshes against ground truth (table, error maps, HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from p3dmm.commands import CommandError


def run(*, pred: Path, gt: Path, out: Path | None = None, flame: Path | None = None, similarity: bool = False,
        protocol: Literal["default", "now"] = "default") -> int:
    """Measure posed and neutral geometry of `p3dmm fit` outputs against ground-truth meshes or NoW scans.

    Args:
        pred: a `p3dmm fit` output folder (<id>.posed.ply, <id>.neutral.ply).
        gt: ground truth. Default protocol: <id>.posed.ply (or <id>.ply) and <id>.neutral.ply; other
            topologies need <id>.landmarks.npy (68 x 3, metres). NoW protocol: the scan <id>.ply (or .obj)
            and its 7 NoW landmarks <id>.now_landmarks.npy (or .txt; 7 x 3), both in metres.
        out: where eval.json, eval.csv, index.html and the error maps (maps/<id>.<kind>.png) go (default:
            PRED/eval).
        flame: FLAME folder; default: $P3DMM_FLAME_DIR.
        similarity: align with scale (default: rigid), in the landmark initialisation and the ICP. With
            --protocol now: rigid is NoW's metrical protocol, similarity the original NoW challenge's.
        protocol: "default": face-region Chamfer, normal consistency and F-scores against a mesh; "now": the
            NoW benchmark's scan-to-mesh distances (NoW's face crop of the scan, landmark alignment, then
            scan-to-mesh ICP), the posed and the neutral fit each against the one scan.
    """
    from p3dmm.commands.flame import _load
    from p3dmm.fitting.evaluate import evaluate_dir, write_report

    folder, _ = _load(flame)
    out = out or pred / "eval"
    try:
        result = evaluate_dir(pred, gt, folder, similarity=similarity, protocol=protocol, out=out)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    page = write_report(result, out, pred)
    for kind, s in result["summary"].items():
        print(_line(kind, s, result["summary_mean"][kind], protocol))
    print(f"report: {page}")
    return 0


def _line(kind: str, median: dict, mean: dict, protocol: str) -> str:
    """One console line per kind: the medians over images (and for NoW the means too)."""
    if protocol == "now":
        return (f"{kind:8s} {median['images']} images: scan-to-mesh median {median['median_mm']:.3f} mm, mean "
                f"{median['mean_mm']:.3f} mm, std {median['std_mm']:.3f} mm (medians over images; means over "
                f"images: {mean['median_mm']:.3f}, {mean['mean_mm']:.3f}, {mean['std_mm']:.3f} mm)")
    return (f"{kind:8s} {median['images']} images: Chamfer L1 {median['chamfer_l1_mm']:.3f} mm, L2 "
            f"{median['chamfer_l2_mm']:.3f} mm, NC {median['normal_consistency']:.3f}, F@1mm "
            f"{median['fscore_1mm']:.3f}, F@5mm {median['fscore_5mm']:.3f} (medians)")
