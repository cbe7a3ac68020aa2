"""p3dmm: Pixel3DMM-style 3D face reconstruction at cluster scale.

Stage packages: :mod:`p3dmm.flame` (shared FLAME, geometry, cameras, renderers),
:mod:`p3dmm.pipeline`, :mod:`p3dmm.registration`, :mod:`p3dmm.training`, :mod:`p3dmm.fitting`.
"""

__version__ = "0.1.0"
