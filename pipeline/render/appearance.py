"""Photo-like RGB renders of a textured scan: random lights, material, camera response and background.

The network must learn geometry from photos, not from renders of normals, so every rendered input
varies what a photo varies: light directions, colours and softness; skin shininess; exposure, white
balance, gamma, sensor noise, blur and vignetting; and a cluttered background. Shading is done in
linear light on the scan's own albedo (texture or vertex colours) and encoded to sRGB at the end.
All randomness comes from the `rng` passed in, so a shard is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

from p3dmm.flame.render import RayHits, interpolate

DEFAULT_SKIN = (0.78, 0.58, 0.47)


@dataclass(frozen=True)
class Look:
    """One view's randomised appearance (recorded in the sample's metadata)."""

    light_dirs: list  # unit directions from the surface towards each light, camera frame (OpenCV axes)
    light_colors: list  # linear RGB intensity per light
    ambient: list  # linear RGB
    wrap: float  # soft diffuse: 0 Lambert, 0.5 very soft (subsurface-like)
    specular: float
    shininess: float
    albedo_gain: list  # per-channel multiplier of the albedo (skin tone and texture white balance)
    exposure: float
    white_balance: list
    gamma: float
    noise: float  # sensor noise std in [0, 1] sRGB units
    blur: float  # Gaussian blur sigma in pixels
    vignette: float

    def to_dict(self) -> dict:
        return asdict(self)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def sample_look(rng: np.random.Generator) -> Look:
    """A random photographic setting: 1-3 lights (a key light from the front hemisphere)."""
    n_lights = int(rng.integers(1, 4))
    dirs = []
    for k in range(n_lights):
        d = rng.normal(0.0, 1.0, 3)
        d[2] = -abs(d[2]) - (0.6 if k == 0 else 0.0)  # lights on the camera's side (it looks along +z)
        dirs.append(_unit(d))
    temperature = rng.uniform(-1.0, 1.0, n_lights)  # warm (+) or cool (-) light
    tint = np.stack([1.0 + 0.18 * temperature, np.ones(n_lights), 1.0 - 0.18 * temperature], axis=1)
    strength = rng.uniform(0.5, 1.2, n_lights) * np.array([1.0] + [0.5] * (n_lights - 1))
    ambient = rng.uniform(0.08, 0.35) * (1.0 + rng.normal(0.0, 0.05, 3))
    return Look(
        light_dirs=np.stack(dirs).tolist(),
        light_colors=(tint * strength[:, None]).tolist(),
        ambient=np.clip(ambient, 0.0, None).tolist(),
        wrap=float(rng.uniform(0.0, 0.45)),
        specular=float(rng.uniform(0.0, 0.25)),
        shininess=float(rng.uniform(8.0, 60.0)),
        albedo_gain=np.clip(rng.normal(1.0, 0.08, 3), 0.7, 1.3).tolist(),
        exposure=float(np.exp(rng.normal(0.0, 0.25))),
        white_balance=np.clip(rng.normal(1.0, 0.05, 3), 0.85, 1.15).tolist(),
        gamma=float(rng.uniform(2.0, 2.4)),
        noise=float(rng.uniform(0.0, 0.025)),
        blur=float(rng.choice([0.0, rng.uniform(0.3, 1.2)])),
        vignette=float(rng.uniform(0.0, 0.3)),
    )


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _upsample(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a small (h, w, 3) float image to (size, size, 3) float32 (PIL: fast)."""
    return np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
        (size, size), Image.BILINEAR)) for c in range(image.shape[2])], axis=-1)


def random_background(rng: np.random.Generator, size: int, low: int = 32) -> np.ndarray:
    """(size, size, 3) float32 linear RGB: a smooth gradient plus blurred blobs, like an out-of-focus room.
    Drawn at low x low and upsampled: it is out of focus anyway, and this keeps it cheap at 512 px."""
    coarse = srgb_to_linear(rng.uniform(0.05, 0.95, (4, 4, 3)))
    image = zoom(coarse, (low / 4, low / 4, 1), order=1)[:low, :low]
    yy, xx = np.mgrid[:low, :low]
    for _ in range(int(rng.integers(0, 6))):
        centre = rng.uniform(0, low, 2)
        radius = rng.uniform(0.05, 0.3) * low
        blob = np.exp(-(((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * radius**2)))
        image = image * (1 - 0.7 * blob[..., None]) + 0.7 * blob[..., None] * srgb_to_linear(rng.uniform(0, 1, 3))
    return np.clip(_upsample(image, size), 0.0, 1.0)


def linear_texture(texture: np.ndarray) -> np.ndarray:
    """uint8 sRGB texture image -> float32 linear RGB (convert once per scan, sample per view)."""
    return srgb_to_linear(np.asarray(texture, np.float32)[..., :3] / 255.0).astype(np.float32)


def pixel_albedo(hits: RayHits, faces: np.ndarray, *, face_uv: np.ndarray | None = None,
                 texture: np.ndarray | None = None, vertex_colors: np.ndarray | None = None,
                 default: tuple[float, float, float] = DEFAULT_SKIN) -> np.ndarray:
    """(H, W, 3) float32 linear albedo on foreground pixels: texture (per-face-corner UV, OBJ v up; a linear
    float image from :func:`linear_texture`), else vertex colours (uint8 sRGB), else a flat default skin."""
    height, width = hits.face_id.shape
    albedo = np.zeros((height, width, 3), np.float32)
    mask = hits.face_id >= 0
    if not mask.any():
        return albedo
    if texture is not None and face_uv is not None:
        corners = np.arange(3 * len(face_uv)).reshape(-1, 3)  # corner k of face f is row 3 f + k
        uv = interpolate(hits, np.asarray(face_uv, np.float64).reshape(-1, 2), corners)[mask]
        tex = texture
        th, tw = tex.shape[:2]
        rows = (1.0 - uv[:, 1]) * th - 0.5
        cols = uv[:, 0] * tw - 0.5
        albedo[mask] = np.stack([map_coordinates(tex[..., c], [rows, cols], order=1, mode="nearest")
                                 for c in range(3)], axis=1)
    elif vertex_colors is not None:
        colors = srgb_to_linear(np.asarray(vertex_colors, np.float64) / 255.0)
        albedo[mask] = interpolate(hits, colors, faces)[mask]
    else:
        albedo[mask] = srgb_to_linear(np.asarray(default, np.float64))
    return albedo


def shade_linear(hits: RayHits, normals_world: np.ndarray, albedo: np.ndarray, look: Look) -> np.ndarray:
    """(H, W, 3) linear radiance: wrapped Lambert + Blinn-Phong per light + ambient; 0 on background."""
    mask = hits.face_id >= 0
    out = np.zeros(albedo.shape, np.float32)
    if not mask.any():
        return out
    R = hits.cam_R.astype(np.float32)
    n = normals_world[mask].astype(np.float32) @ R.T  # camera frame
    view = -(hits.ray_dirs[mask] @ R.T)
    flip = np.einsum("ij,ij->i", n, view) < 0  # back faces and silhouette artefacts face the viewer
    n[flip] *= -1.0
    a = albedo[mask] * np.asarray(look.albedo_gain, np.float32)
    radiance = a * np.asarray(look.ambient, np.float32)
    for direction, color in zip(look.light_dirs, look.light_colors, strict=True):
        light = np.asarray(direction, np.float32)
        cos = n @ light
        diffuse = np.clip((cos + look.wrap) / (1.0 + look.wrap), 0.0, None)
        half = _unit(light[None] + view)
        spec = look.specular * np.clip(np.einsum("ij,ij->i", n, half), 0.0, None) ** look.shininess * (cos > 0)
        radiance += (a * diffuse[:, None] + spec[:, None]) * np.asarray(color, np.float32)
    out[mask] = radiance
    return out


def camera_response(linear: np.ndarray, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Linear RGB -> uint8 sRGB-like photo: exposure, white balance, vignette, blur, tone curve, noise."""
    height, width = linear.shape[:2]
    image = linear.astype(np.float32) * np.float32(look.exposure) * np.asarray(look.white_balance, np.float32)
    if look.vignette > 0:
        ry = ((np.arange(height, dtype=np.float32) - height / 2) / (0.5 * max(height, width))) ** 2
        rx = ((np.arange(width, dtype=np.float32) - width / 2) / (0.5 * max(height, width))) ** 2
        image *= (1.0 - np.float32(look.vignette) * (ry[:, None] + rx[None, :]))[..., None]
    if look.blur > 0:
        image = gaussian_filter(image, sigma=(look.blur, look.blur, 0))
    image = np.clip(image, 0.0, None)
    image = image / (1.0 + 0.15 * image)  # soft highlight roll-off
    image = np.clip(image, 0.0, 1.0) ** (1.0 / look.gamma)
    image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(look.noise)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def render_photo(hits: RayHits, normals_world: np.ndarray, albedo: np.ndarray, look: Look,
                 rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: the shaded scan over a random background through a random camera response."""
    height, width = hits.face_id.shape
    radiance = shade_linear(hits, normals_world, albedo, look)
    background = random_background(rng, max(height, width))[:height, :width]
    mask = (hits.face_id >= 0)[..., None]
    return camera_response(np.where(mask, radiance, background), look, rng)
