"""The registration file, `<register out>/registered/<name>.npz`: one registered scan.

Holds the registered FLAME-topology vertices (scan frame), the FLAME parameters with the similarity from
the FLAME frame to the scan frame (y = s x R^T + t), the metrics, the verdict and the scan's record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from p3dmm.flame.rotations import head_rotation


def output_name(scan_id: str) -> str:
    """File stem of a scan's registration: the scan id with "/" made safe for a file name."""
    return scan_id.replace("/", "__")


@dataclass(frozen=True)
class Registered:
    """A registration in the FLAME frame."""

    vertices: np.ndarray  # (V, 3) float64 metres: FLAME(params) + offsets
    params: dict
    record: dict
    scale: float
    rotation: np.ndarray  # (3, 3) similarity FLAME -> scan frame
    translation: np.ndarray  # (3,)
    head_rotation: np.ndarray  # (3, 3) global @ neck

    def to_flame(self, points: np.ndarray) -> np.ndarray:
        """Scan-frame points -> FLAME frame (inverse of y = s x R^T + t)."""
        return (np.asarray(points, np.float64) - self.translation) @ self.rotation / self.scale


def load_registered(path: str) -> Registered:
    with np.load(path) as data:
        vertices = np.asarray(data["vertices"], np.float64)
        params = json.loads(str(data["params"]))
        record = json.loads(str(data["record"]))
    scale = float(params["scale"])
    rotation = np.asarray(params["rotation"], np.float64)
    translation = np.asarray(params["similarity_translation"], np.float64)
    head = head_rotation(torch.tensor(params["pose"], dtype=torch.float64)).numpy()
    return Registered(vertices=(vertices - translation) @ rotation / scale, params=params, record=record,
                      scale=scale, rotation=rotation, translation=translation, head_rotation=head)


