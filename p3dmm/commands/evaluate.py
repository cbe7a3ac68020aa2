"""`p3dmm eval`: fitted meshes against ground truth (table + HTML)."""

from __future__ import annotations

from pathlib import Path

from p3dmm.cli import CommandError


def run(*, pred: Path, gt: Path, out: Path | None = None, flame: Path | None = None, similarity: bool = False) -> int:
    """Measure posed and neutral geometry of `p3dmm fit` outputs against ground-truth meshes.

    Args:
        pred: a `p3dmm fit` output folder (<id>.posed.ply, <id>.neutral.ply).
        gt: ground truth: <id>.posed.ply (or <id>.ply) and <id>.neutral.ply; other topologies need
            <id>.landmarks.npy (68 x 3, metres).
        out: where eval.json, eval.csv and index.html go (default: PRED/eval).
        flame: FLAME folder; default: $P3DMM_FLAME_DIR.
        similarity: align with scale (default: rigid), after landmark initialisation and ICP.
    """
    from p3dmm.commands.flame import _load
    from p3dmm.fitting.evaluate import evaluate_dir, write_report

    folder, _ = _load(flame)
    try:
        result = evaluate_dir(pred, gt, folder, similarity=similarity)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    page = write_report(result, out or pred / "eval", pred)
    for kind, s in result["summary"].items():
        print(f"{kind:8s} {s['images']} images: Chamfer L1 {s['chamfer_l1_mm']:.3f} mm, L2 {s['chamfer_l2_mm']:.3f} mm, "
              f"NC {s['normal_consistency']:.3f}, F@1mm {s['fscore_1mm']:.3f}, F@5mm {s['fscore_5mm']:.3f} (medians)")
    print(f"report: {page}")
    return 0
