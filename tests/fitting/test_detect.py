"""Face detection for `p3dmm fit --detect` on a synthetic head rendered at test time, inside a larger photo."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from p3dmm.fitting.detect import FaceDetector
from p3dmm.fitting.fit import fixed_camera
from p3dmm.fitting.inputs import ImageError, load_image, square_crop
from p3dmm.flame.render import RayCaster, shade
from p3dmm.flame.synth.anatomy import Anatomy
from p3dmm.flame.synth.head import build_head

HEAD_PX = 192
CANVAS = (480, 640)
OFFSET = (380, 150)  # (x, y) of the head render's top-left corner in the canvas
SKIN = (0.82, 0.62, 0.50)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    """A frontal render of the synthetic template head (skin, white eyeballs), and its foreground mask."""
    mesh = build_head(Anatomy(), 1000)
    cam = fixed_camera(1, HEAD_PX, torch.tensor([3.0 * HEAD_PX], dtype=torch.float64),
                       torch.zeros(1, 2, dtype=torch.float64))
    hits = RayCaster(mesh.verts, mesh.faces).cast(cam)
    colors = np.where(mesh.eyeball[:, None] > 0, 0.92, np.array(SKIN))
    rgb = shade(hits, mesh.verts, mesh.faces, vertex_colors=colors, background=(90, 110, 140))
    return rgb, hits.face_id >= 0


def _noise(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (*CANVAS, 3)) * 0.5 + 64).astype(np.uint8)


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> np.ndarray:
    canvas = canvas.copy()
    canvas[y : y + image.shape[0], x : x + image.shape[1]] = image
    return canvas


def _head_mask(mask: np.ndarray) -> np.ndarray:
    """The head's foreground mask at its place in the canvas."""
    out = np.zeros(CANVAS, bool)
    x, y = OFFSET
    out[y : y + mask.shape[0], x : x + mask.shape[1]] = mask
    return out


def test_finds_the_head_in_a_larger_photo(detector, head):
    rgb, mask = head
    canvas = _paste(_noise(), rgb, *OFFSET)
    box = detector.detect(canvas)
    assert box is not None
    x0, y0, x1, y1 = box
    on_head = _head_mask(mask)
    assert on_head[round((y0 + y1) / 2), round((x0 + x1) / 2)], f"box {box} is not centred on the head"
    ys, xs = np.nonzero(on_head)
    assert 0.5 < (x1 - x0) / (xs.max() - xs.min()) < 1.2, f"box {box} vs head width {np.ptp(xs)}"
    assert xs.min() - 10 <= x0 and x1 <= xs.max() + 10 and ys.min() - 10 <= y0 and y1 <= ys.max() + 10
    crop = square_crop(on_head[..., None].astype(np.uint8), box)
    assert crop.sum() > 0.9 * on_head.sum(), "the x1.42 square crop of the box cuts off the head"


def test_boxes_are_in_input_pixels_when_the_image_is_shrunk(detector, head):
    canvas = _paste(_noise(), head[0], *OFFSET)
    full = np.array(detector.detect(canvas))
    shrunk = np.array(FaceDetector(max_side=320).detect(canvas))  # detected at half size
    assert np.abs(shrunk - full).max() < 0.1 * (full[2] - full[0])


def test_most_confident_of_several_faces(detector, head):
    small = np.asarray(Image.fromarray(head[0]).resize((HEAD_PX // 2, HEAD_PX // 2), Image.BILINEAR))
    canvas = _paste(_paste(_noise(), head[0], *OFFSET), small, 40, 60)
    faces = detector.faces(canvas)
    assert len(faces) == 2
    assert detector.detect(canvas) == max(faces, key=lambda f: f[0])[1]


@pytest.mark.parametrize("kind", ["noise", "flat", "gradient"])
def test_no_face_in_faceless_images(detector, kind):
    images = {"noise": np.random.default_rng(1).integers(0, 256, (*CANVAS, 3), dtype=np.uint8),
              "flat": np.full((*CANVAS, 3), (180, 140, 120), np.uint8),
              "gradient": np.broadcast_to(np.linspace(0, 255, CANVAS[1], dtype=np.uint8)[None, :, None], (*CANVAS, 3))}
    assert detector.detect(images[kind]) is None


def test_detect_box_names_the_file_when_there_is_no_face(detector, tmp_path):
    path = tmp_path / "noise.png"
    noise = np.random.default_rng(2).integers(0, 256, (*CANVAS, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    with pytest.raises(ImageError, match=rf"^{re.escape(str(path))}: no face found by libfacedetection"):
        detector.detect_box(path, np.asarray(Image.open(path)))


def test_detected_box_crops_the_image_file(detector, head, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(_paste(_noise(), head[0], *OFFSET)).save(path)
    box = detector.detect_box(path, np.asarray(Image.open(path).convert("RGB")))
    crop = load_image(path, 64, box)
    assert crop.shape == (64, 64, 3)


def test_grey_and_rgba_images_are_accepted_and_floats_refused(detector, head):
    canvas = _paste(_noise(), head[0], *OFFSET)
    rgba = np.concatenate([canvas, np.full((*CANVAS, 1), 255, np.uint8)], axis=2)
    assert detector.detect(rgba) == detector.detect(canvas)
    detector.faces(canvas.mean(axis=2).astype(np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detector.faces(canvas.astype(np.float32))
