"""Batched FLAME fitting from predicted normals and UVs, and evaluation. Filled by the fitting issue."""
