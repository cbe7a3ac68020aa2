"""What every dataset adapter produces: scan records (cheap, picklable) and loaded scan geometry.

An adapter walks a dataset root and yields :class:`ScanRecord` without reading meshes, so a driver can
list tens of thousands of scans in seconds and ship records to workers. `load_scan(record)` (per
adapter) then reads one scan and returns :class:`ScanGeometry` in FLAME's frame and units:
metres, right-handed, +y up, the face looking along +z (+x = the subject's left).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class ScanError(ValueError):
    """A scan that cannot be used (missing, corrupt, empty, NaN, wrong units). The message starts with
    the path; a batch run records it and goes on. Never retried."""


@dataclass(frozen=True)
class CameraView:
    """One calibrated photo: OpenCV convention (see p3dmm.flame.cameras), world = the scan's FLAME frame.

    K: (3, 3) pixels for the image as stored; R: (3, 3), t: (3,) metres, x_cam = R x + t;
    distortion: (k1, k2, p1, p2[, k3]) or empty; size: (H, W).
    """

    image: str
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    distortion: tuple[float, ...]
    size: tuple[int, int]


@dataclass(frozen=True)
class ScanRecord:
    """One scan to register. Paths are strings (records travel to Ray workers).

    Args:
        scan_id: unique and stable across runs, e.g. "nphm/017/000"; used as the output name.
        dataset: layout name ("nphm", "facescape", "facescape-mview", "ava256", "generic").
        subject, expression: as the dataset names them.
        geometry: path of the mesh / point cloud, or "zip::member" for files inside a zip.
        texture: path of the texture image, or None.
        to_flame_scale: multiply stored coordinates by this to get metres (NPHM 0.25, mm 0.001), applied
            before `to_flame` (None: the adapter's loader knows the frame, e.g. a head pose per frame).
        extra: adapter-specific small values (paths of sidecar files, a frame id, ...).
    """

    scan_id: str
    dataset: str
    subject: str
    expression: str
    geometry: str
    texture: str | None = None
    to_flame_scale: float | None = 1.0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ScanGeometry:
    """A loaded scan in FLAME's frame and units.

    Args:
        vertices: (P, 3) float64 metres. For point clouds, the points.
        faces: (F, 3) int64 or None for a point cloud. Vertices no face uses are allowed.
        landmarks: (68, 3) float64 metres (iBUG order; NaN rows for missing points) or None.
        frame_known: True when the adapter put the scan in FLAME's frame (only a small residual pose
            remains); False when orientation/scale are arbitrary (registration must initialise robustly).
        metric: True when distances are true metres. False for scale-normalised data (FaceScape TU
            models are scaled to a mean inter-pupil distance): registration then fits a global scale
            even when the frame is known.
        vertex_colors: (P, 3) uint8 or None. uv: optional per-face-corner UVs (F, 3, 2) for textures.
        cameras: calibrated photos, if the dataset has them.
        init_vertices: (V, 3) float64 metres, FLAME topology, same frame as `vertices`: a FLAME fit the
            dataset ships (NPHM's ``flame.ply``), or None. Registration starts from it with
            ``RegistrationConfig(init="dataset")``.
    """

    record: ScanRecord
    vertices: np.ndarray
    faces: np.ndarray | None
    landmarks: np.ndarray | None = None
    frame_known: bool = True
    metric: bool = True
    vertex_colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    cameras: tuple[CameraView, ...] = ()
    init_vertices: np.ndarray | None = None


def check_geometry(path: str | Path, vertices: np.ndarray, faces: np.ndarray | None) -> None:
    """Refuse what no registration can use, with a one-line ScanError naming the file."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ScanError(f"{path}: no vertices (empty or truncated)")
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices).all(axis=1)).sum())
        raise ScanError(f"{path}: {bad} of {len(vertices)} vertices are NaN or infinite")
    if faces is not None:
        if len(faces) == 0:
            raise ScanError(f"{path}: 0 faces (empty or truncated)")
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise ScanError(f"{path}: face indices out of range for {len(vertices)} vertices")


def check_head_size(path: str | Path, vertices_m: np.ndarray) -> None:
    """Catch wrong units: a head (with some clutter) spans roughly 0.1 to 1 m once converted."""
    extent = float(np.max(np.ptp(vertices_m, axis=0)))
    if not 0.08 <= extent <= 1.5:
        raise ScanError(
            f"{path}: extent {extent:.3g} m after unit conversion does not look like a head "
            "(wrong units? NPHM is FLAME x 4, FaceScape and Ava256 are in mm)"
        )


def read_member(spec: str) -> bytes:
    """Bytes of ``"<zip path>::<member>"``; ScanError naming both when missing or corrupt (bad CRC...)."""
    path, _, member = spec.partition("::")
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read(member)
    except KeyError as err:
        raise ScanError(f"{spec}: no such member in the zip") from err
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ScanError(f"{spec}: cannot read zip member ({type(err).__name__}: {err})") from err
