"""Batched FLAME fitting from predicted normals and UVs (inputs, correspondences, the fit, outputs), and
the evaluation of posed and neutral geometry against ground truth."""
