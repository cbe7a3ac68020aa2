"""Five facial landmarks of a raw scan, found on renders of it and lifted to 3-D by ray casting.

For a layout without landmark files (NPHM, a folder of meshes), `p3dmm register --landmarks detect` finds
them the way NPHM's authors describe: render the textured scan from virtual cameras, run a 2-D face
detector on the renders and cast each detected pixel's ray onto the scan mesh. The detector is the one
the project ships (libfacedetection, :mod:`p3dmm.fitting.detect`); it gives the eye centres, the nose
tip and the mouth corners. Two stages:

1. Search. A scan in FLAME's frame (``frame_known``) is rendered from the front and from 25 degrees
   either side; a scan in an unknown frame from `DetectConfig.search_directions` directions around it,
   each at four in-plane rolls (the detector wants an upright face). The most confident face wins; the
   ray through its box centre gives the face's 3-D centre and its box the face's size.
2. Refine. Frontal-ish views (`DetectConfig.view_offsets_deg`) around FLAME's +z for a scan in its frame,
   else around the best search camera's direction, framed so the face box covers `DetectConfig.face_fill`
   of the image; then the same views again, straight at the face those found (its forward and up from the
   detected eyes and mouth corners: a turned head gets frontal views). Each point a view detects is lifted to
   the first front-facing hit of its ray; where the ray finds a hole (no hit, a back face, or a surface
   far behind its neighbours: a synthetic scan has no eyeballs) it is placed on the ray at the median
   depth of the surface around it. Each landmark is the median of its lifted points over the views.

The result is a (68, 3) iBUG-ordered array (scan frame and units, NaN rows elsewhere) whose rows follow
`p3dmm.flame.landmarks.FIVE_POINT_ROWS`: the nose tip and mouth corners are iBUG points (30, 48, 54), but an eye centre is no
iBUG point, so by this module's convention row 36 holds the subject's right eye centre and row 42 the
left one; their model counterparts are the means of iBUG rows 36-41 and 42-47. A scan whose landmarks
come from here says so in ``record.extra[LANDMARK_SOURCE_KEY] == DETECTED_SOURCE`` so that registration
can pick those counterparts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from p3dmm.fitting.detect import FaceDetector, FacePoints
from p3dmm.flame.cameras import Cameras, look_at
from p3dmm.flame.render import RayCaster, RayHits, pixel_normals
from p3dmm.flame.scan import ScanGeometry
from p3dmm.pipeline.render.appearance import Look, camera_response, linear_texture, pixel_albedo, shade_linear
from p3dmm.pipeline.render.photos import read_image

DETECTOR_ROWS = (36, 42, 30, 48, 54)
"""The iBUG row each of the detector's five points fills, in `p3dmm.fitting.detect.LANDMARK_NAMES` order:
image-left eye (the subject's right), image-right eye, nose tip, image-left and image-right mouth corner."""
LANDMARK_SOURCE_KEY = "landmark_source"
DETECTED_SOURCE = "detected-5"
"""``record.extra[LANDMARK_SOURCE_KEY]`` of a scan whose landmarks were detected here."""

NEUTRAL_LOOK = Look(
    light_dirs=[[-0.35, -0.45, -0.82], [0.6, -0.1, -0.8]], light_colors=[[0.75] * 3, [0.3] * 3],
    ambient=[0.22] * 3, wrap=0.2, specular=0.05, shininess=20.0, albedo_gain=[1.0] * 3, exposure=1.0,
    white_balance=[1.0] * 3, gamma=2.2, noise=0.0, blur=0.0, vignette=0.0)
"""A studio-like, noise-free look: a key light from the upper left and a fill, so renders are deterministic."""
BACKGROUND = 0.35
"""Linear grey of the background."""
HOLE_RADIANCE = 0.1
"""Back faces seen through holes are darkened to this share, as the inside of a real scan would look."""


@dataclass(frozen=True)
class DetectConfig:
    """How the scan is looked at. Angles in degrees.

    Args:
        size: square render side in pixels (the detector runs at ~11 ms per 256 px image).
        fov_deg: field of view of the search cameras (they see the whole scan).
        face_fill: share of the image side the detected face box covers in the refined views.
        view_offsets_deg: (yaw, pitch) of each refined view relative to the best search view.
        search_directions: camera directions tried for a scan in an unknown frame (a Fibonacci sphere).
        min_score: detections scored below this (0-1) are ignored.
        hole_depth_m: a hit this far behind the median depth around it is seen through a hole.
    """

    size: int = 256
    fov_deg: float = 30.0
    face_fill: float = 0.55
    view_offsets_deg: tuple[tuple[float, float], ...] = ((0.0, 0.0), (12.0, 0.0), (-12.0, 0.0), (0.0, 10.0),
                                                          (0.0, -10.0))
    search_directions: int = 20
    min_score: float = 0.5
    hole_depth_m: float = 0.02


@dataclass(frozen=True)
class ScanLandmarks:
    """What detection found on one scan.

    Args:
        landmarks: (68, 3) float64 in the scan's frame and units, rows `DETECTOR_ROWS` filled (NaN where no
            view lifted that point), or None when no face was detected.
        views: refined views with a detection, of `total_views`. score: the best search detection's score.
        note: what happened, for the task result's "landmarks" entry ("5 points detected in 5/5 views",
            "none detected (no face in any view)").
    """

    landmarks: np.ndarray | None
    views: int
    total_views: int
    score: float
    note: str


@dataclass(frozen=True)
class _Scene:
    """One scan ready to render: its caster and albedo source."""

    caster: RayCaster
    face_uv: np.ndarray | None
    texture: np.ndarray | None
    vertex_colors: np.ndarray | None


@dataclass(frozen=True)
class _Detection:
    """The best face of one view, with the view's camera and hits."""

    face: FacePoints
    camera: Cameras
    hits: RayHits


def _scene(scan: ScanGeometry) -> _Scene:
    """Caster and colours of a meshed scan; the texture is read here (a ScanError names a corrupt one)."""
    record = scan.record
    texture = None
    if record.texture and scan.uv is not None:
        texture = linear_texture(read_image(record.texture))
    return _Scene(RayCaster(scan.vertices, scan.faces), scan.uv, texture, scan.vertex_colors)


def render(scene: _Scene, camera: Cameras) -> tuple[np.ndarray, RayHits]:
    """(H, W, 3) uint8 photo-like render of the scan in its own colours, and the hits it was shaded from."""
    caster = scene.caster
    hits = caster.cast(camera)
    albedo = pixel_albedo(hits, caster.faces, face_uv=scene.face_uv, texture=scene.texture,
                          vertex_colors=scene.vertex_colors)
    radiance = shade_linear(hits, pixel_normals(hits, caster.vertex_normals, caster.faces), albedo, NEUTRAL_LOOK)
    radiance[hits.mask & ~hits.front_facing] *= HOLE_RADIANCE
    radiance[~hits.mask] = BACKGROUND
    return camera_response(radiance, NEUTRAL_LOOK, np.random.default_rng(0)), hits


def _cameras(eye: np.ndarray, target: np.ndarray, up: np.ndarray, focal: np.ndarray, size: int) -> Cameras:
    """float64 pinhole cameras at `eye` (N, 3) looking at `target` (N, 3) with `up` (N, 3) upwards."""
    R, t = look_at(torch.as_tensor(eye), torch.as_tensor(target), torch.as_tensor(up))
    K = torch.zeros(len(eye), 3, 3, dtype=torch.float64)
    K[:, 0, 0] = K[:, 1, 1] = torch.as_tensor(focal, dtype=torch.float64)
    K[:, 0, 2] = K[:, 1, 2] = (size - 1) / 2.0
    K[:, 2, 2] = 1.0
    return Cameras(K=K, R=R, t=t, image_size=(size, size))


def _fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _perpendicular(direction: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to `direction` (an up vector for a camera looking along it)."""
    helper = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    up = helper - direction * (helper @ direction)
    return up / np.linalg.norm(up)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """`v` rotated about the unit `axis` by `angle` radians (Rodrigues)."""
    c, s = np.cos(angle), np.sin(angle)
    return v * c + np.cross(axis, v) * s + axis * (axis @ v) * (1.0 - c)


def search_cameras(scan: ScanGeometry, config: DetectConfig) -> Cameras:
    """Cameras that each see the whole scan: frontal and +-25 degrees of yaw for a scan in FLAME's frame
    (face along +z, y up); else `search_directions` directions times four in-plane rolls. The scan's box
    spans the 1st to 99th percentile of its vertices, so a few far fragments do not shrink the face."""
    low, high = np.percentile(np.asarray(scan.vertices, np.float64), [1.0, 99.0], axis=0)
    centre = (low + high) / 2.0
    radius = float(np.linalg.norm(high - low)) / 2.0
    half = np.radians(config.fov_deg) / 2.0
    distance = radius / np.sin(half)
    if scan.frame_known:
        yaw = np.radians([0.0, 25.0, -25.0])
        directions = np.stack([np.sin(yaw), np.zeros(3), np.cos(yaw)], axis=1)
        ups = np.tile([0.0, 1.0, 0.0], (3, 1))
    else:
        directions, ups = [], []
        for d in _fibonacci_sphere(config.search_directions):
            up = _perpendicular(d)
            for roll in (0.0, 0.5 * np.pi, np.pi, 1.5 * np.pi):
                directions.append(d)
                ups.append(_rotate(up, d, roll))
        directions, ups = np.asarray(directions), np.asarray(ups)
    eye = centre + distance * directions
    focal = np.full(len(eye), (config.size / 2.0) / np.tan(half))
    return _cameras(eye, np.broadcast_to(centre, eye.shape).copy(), ups, focal, config.size)


def _best_face(detector: FaceDetector, scene: _Scene, cameras: Cameras, min_score: float) -> _Detection | None:
    """The most confident face over `cameras` (None when no view has one scored at least `min_score`)."""
    best = None
    for i in range(cameras.batch_size):
        camera = cameras[i]
        rgb, hits = render(scene, camera)
        faces = [f for f in detector.landmarks(rgb) if f.score >= min_score]
        if faces and (best is None or faces[0].score > best.face.score):
            best = _Detection(faces[0], camera, hits)
    return best


def _ray(camera: Cameras, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre, direction with camera z = 1) of the ray through pixel position `uv` = (x, y): the point at
    depth z is centre + z * direction."""
    K, R, t = (x[0].numpy() for x in (camera.K, camera.R, camera.t))
    local = np.array([(uv[0] - K[0, 2]) / K[0, 0], (uv[1] - K[1, 2]) / K[1, 1], 1.0])
    return -R.T @ t, R.T @ local


def _cast_one(caster: RayCaster, camera: Cameras, uv: np.ndarray) -> tuple[float, bool]:
    """(depth, front-facing) of the first hit of the ray through sub-pixel `uv` (inf, False on a miss): a
    one-pixel camera whose only pixel centre is `uv`."""
    K = camera.K.clone()
    K[0, 0, 2] -= float(uv[0])
    K[0, 1, 2] -= float(uv[1])
    hits = caster.cast(Cameras(K=K, R=camera.R, t=camera.t, image_size=(1, 1)))
    return float(hits.depth[0, 0]), bool(hits.front_facing[0, 0])


def lift(caster: RayCaster, view: _Detection, uv: np.ndarray, radius_px: float, hole_depth: float
         ) -> np.ndarray | None:
    """3-D point of pixel position `uv` of `view`: its ray's first front-facing hit, or, across a hole, the
    ray at the median depth of the front-facing surface within `radius_px`; None with no surface near."""
    hits = view.hits
    height, width = hits.depth.shape
    rows, cols = np.ogrid[:height, :width]
    near = (rows - uv[1]) ** 2 + (cols - uv[0]) ** 2 <= radius_px**2
    around = hits.depth[near & hits.mask & hits.front_facing]
    if around.size == 0:
        return None
    local = float(np.median(around))
    depth, front = _cast_one(caster, view.camera, uv)
    if not front or depth > local + hole_depth:
        depth = local
    centre, direction = _ray(view.camera, uv)
    return centre + depth * direction


def _face_frame(caster: RayCaster, best: _Detection, hole_depth: float) -> tuple[np.ndarray, float] | None:
    """(3-D centre, size in scan units) of the best search face: its box centre lifted, its box width at
    that depth."""
    x0, y0, x1, y1 = best.face.box
    centre = lift(caster, best, np.array([(x0 + x1) / 2, (y0 + y1) / 2]), 0.25 * (x1 - x0), hole_depth)
    if centre is None:
        return None
    cam_point = best.camera.R[0].numpy() @ centre + best.camera.t[0].numpy()
    return centre, float((x1 - x0) * cam_point[2] / best.camera.K[0, 0, 0])


def refine_cameras(centre: np.ndarray, forward: np.ndarray, up: np.ndarray, face_size: float,
                   config: DetectConfig) -> Cameras:
    """Frontal-ish views of a face at `centre` looking along `forward` with `up` upwards: the frontal
    direction turned by each (yaw, pitch) offset, four face sizes away (mild perspective, like a portrait),
    focal set so the face box fills `face_fill` of the image."""
    forward = forward / np.linalg.norm(forward)
    up = up - forward * (up @ forward)
    up = up / np.linalg.norm(up)
    right = np.cross(up, forward)  # the subject's left: image right in a frontal view
    distance = 4.0 * face_size
    eyes, ups = [], []
    for yaw, pitch in config.view_offsets_deg:
        turned = _rotate(forward, up, np.radians(yaw))
        axis = _rotate(right, up, np.radians(yaw))
        eyes.append(centre + distance * _rotate(turned, axis, -np.radians(pitch)))
        ups.append(_rotate(up, axis, -np.radians(pitch)))
    eye = np.asarray(eyes)
    focal = np.full(len(eye), config.face_fill * config.size * distance / face_size)
    return _cameras(eye, np.broadcast_to(centre, eye.shape).copy(), np.asarray(ups), focal, config.size)


def _first_direction(scan: ScanGeometry, best: _Detection, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, up) to look at the face from first: FLAME's +z and +y for a scan in FLAME's frame, else the
    best search camera's direction and up."""
    if scan.frame_known:
        return np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])
    position = best.camera.centers[0].numpy()
    return position - centre, -best.camera.R[0].numpy()[1]


def face_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(forward, up) of a face from its detected eyes and mouth corners (rows 36, 42, 48, 54), or None when
    one is missing: up from the mouth to the eyes, forward = the subject's left x up."""
    rows = landmarks[[36, 42, 48, 54]]
    if not np.isfinite(rows).all():
        return None
    eye_r, eye_l, mouth_r, mouth_l = rows
    left = (eye_l - eye_r) + (mouth_l - mouth_r)
    up = (eye_r + eye_l - mouth_r - mouth_l) / 2.0
    forward = np.cross(left, up)
    norm = np.linalg.norm(forward)
    return (forward / norm, up) if norm > 0 else None


def _lift_views(detector: FaceDetector, scene: _Scene, cameras: Cameras, config: DetectConfig
                ) -> tuple[np.ndarray, int]:
    """(68, 3) median lifted points over the views of `cameras` (NaN rows where none), and the views with a face."""
    lifted: list[list[np.ndarray]] = [[] for _ in DETECTOR_ROWS]
    views = 0
    for i in range(cameras.batch_size):
        camera = cameras[i]
        rgb, hits = render(scene, camera)
        faces = [f for f in detector.landmarks(rgb) if f.score >= config.min_score]
        if not faces:
            continue
        views += 1
        view = _Detection(faces[0], camera, hits)
        radius = 0.1 * (faces[0].box[2] - faces[0].box[0])
        for k, uv in enumerate(faces[0].points):
            point = lift(scene.caster, view, uv, radius, config.hole_depth_m)
            if point is not None:
                lifted[k].append(point)
    landmarks = np.full((68, 3), np.nan)
    for row, points in zip(DETECTOR_ROWS, lifted, strict=True):
        if points:
            landmarks[row] = np.median(np.asarray(points), axis=0)
    return landmarks, views


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the renders' torch ops on one thread, then give the caller back its count. They are tiny, and the
    detector switches OpenMP to one thread around each call: with two torch threads on 2 busy cores the
    80-view search of an unknown frame took 9 s instead of 1.8 s."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _none(total: int, score: float, why: str) -> ScanLandmarks:
    return ScanLandmarks(None, 0, total, score, f"none detected ({why})")


def detect_scan_landmarks(scan: ScanGeometry, detector: FaceDetector | None = None,
                          config: DetectConfig = DetectConfig()) -> ScanLandmarks:
    """Detect the five points on renders of `scan` and lift them onto its mesh (module docstring).

    A point cloud, or a scan on which no view shows a face, gives ``landmarks=None`` and a note saying why;
    only an unreadable texture raises (ScanError naming it).
    """
    if scan.faces is None:
        return _none(0, 0.0, "a point cloud cannot be ray cast")
    with _one_torch_thread():
        return _detect(scan, FaceDetector() if detector is None else detector, config)


def _detect(scan: ScanGeometry, detector: FaceDetector, config: DetectConfig) -> ScanLandmarks:
    """The two stages of the module docstring on a meshed scan."""
    scene = _scene(scan)
    best = _best_face(detector, scene, search_cameras(scan, config), config.min_score)
    if best is None:
        return _none(0, 0.0, "no face in any view")
    frame = _face_frame(scene.caster, best, config.hole_depth_m)
    if frame is None:
        return _none(0, best.face.score, "the face box lies off the mesh")
    centre, face_size = frame
    forward, up = _first_direction(scan, best, centre)
    total = len(config.view_offsets_deg)
    landmarks, views = _lift_views(detector, scene, refine_cameras(centre, forward, up, face_size, config), config)
    axes = face_axes(landmarks)
    if axes is not None:  # look again, straight at the face the first views found
        again, again_views = _lift_views(detector, scene, refine_cameras(centre, *axes, face_size, config), config)
        if again_views:
            landmarks, views = again, again_views
    if views == 0:
        return _none(total, best.face.score, f"no face in the {total} views around it")
    filled = int(np.isfinite(landmarks).all(axis=1).sum())
    return ScanLandmarks(landmarks, views, total, best.face.score,
                         f"{filled} points detected in {views}/{total} views")


def with_landmarks(scan: ScanGeometry, detector: FaceDetector | None = None, config: DetectConfig = DetectConfig(),
                   *, always: bool = False) -> tuple[ScanGeometry, str | None]:
    """`scan` with detected landmarks where its reader gave none (or `always`, replacing the reader's), and a
    note for the task result (None when no detection was needed). Detected landmarks mark the record
    (``extra[LANDMARK_SOURCE_KEY]``). When no face is found the scan keeps going with what the reader gave."""
    if scan.landmarks is not None and not always:
        return scan, None
    found = detect_scan_landmarks(scan, detector, config)
    if found.landmarks is None:
        kept = "; the reader's landmarks kept" if scan.landmarks is not None else ""
        return scan, found.note + kept
    record = dataclasses.replace(scan.record, extra={**scan.record.extra, LANDMARK_SOURCE_KEY: DETECTED_SOURCE})
    return dataclasses.replace(scan, landmarks=found.landmarks, record=record), found.note
