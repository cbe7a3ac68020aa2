"""Shared geometry: mesh I/O, normals, the camera convention vs PyTorch3D, mirror maps, ray casting.

Accuracy is checked against analytic ground truth in units (degrees, metres, pixels), and the embree
ray caster against PyTorch3D's rasteriser, so CPU targets and GPU fitting see the same pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.cameras import (
    Cameras,
    camera_ray_directions,
    intrinsics_from_fov,
    look_at,
    project,
    to_pytorch3d,
    world_to_camera,
)
from p3dmm.flame.fragments import interpolate_fragments, pixel_normals
from p3dmm.flame.grid import image_grid, save_png
from p3dmm.flame.mesh import (
    MeshError,
    face_normals,
    face_normals_np,
    load_mesh,
    save_mesh,
    vertex_normals,
    vertex_normals_np,
)
from p3dmm.flame.mirror import mirror_map, mirror_nearest, uv_mirror_axis
from p3dmm.flame.render import RayCaster, interpolate, raycast, render_shaded, shade

# ---------------------------------------------------------------- helpers


def _icosphere(subdivisions: int, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


def _camera(eye, target, size, fov=40.0, dtype=torch.float64, up=(0.0, 1.0, 0.0)) -> Cameras:
    R, t = look_at(
        torch.tensor([eye], dtype=dtype), torch.tensor([target], dtype=dtype), torch.tensor([up], dtype=dtype)
    )
    return Cameras(K=intrinsics_from_fov(fov, size, dtype=dtype), R=R, t=t, image_size=size)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def _ray_sphere_t(origin: np.ndarray, dirs: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Near intersection parameter of unit rays with a sphere at the world origin, and the discriminant."""
    b = dirs @ origin
    disc = b * b - (origin @ origin - radius**2)
    return -b - np.sqrt(np.maximum(disc, 0.0)), disc


# ---------------------------------------------------------------- mesh I/O


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_mesh_round_trip_keeps_order(tmp_path: Path, suffix: str) -> None:
    verts, faces = _icosphere(2, radius=0.1)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(verts))  # a non-trivial order that a merging loader would not keep
    verts = verts[perm]
    faces = np.argsort(perm)[faces]
    colors = rng.random((len(verts), 3))
    path = tmp_path / f"scan{suffix}"
    save_mesh(path, verts, faces, vertex_colors=colors)
    v2, f2 = load_mesh(path)
    assert v2.dtype == np.float64 and f2.dtype == np.int64
    np.testing.assert_array_equal(f2, faces)
    np.testing.assert_allclose(v2, verts, atol=1e-7)  # PLY stores float32: 1e-7 of 0.1 m
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def _ply_bytes(verts: np.ndarray, faces: np.ndarray) -> bytes:
    mesh = trimesh.Trimesh(verts, faces, process=False)
    return trimesh.exchange.ply.export_ply(mesh, encoding="ascii")


def test_load_mesh_errors_start_with_path(tmp_path: Path) -> None:
    verts, faces = _icosphere(1)
    cases = {}
    cases["missing.ply"] = None
    cases["empty.ply"] = b""
    full = trimesh.exchange.ply.export_ply(trimesh.Trimesh(verts, faces, process=False))
    cases["truncated.ply"] = full[: len(full) // 2]
    bad = verts.copy()
    bad[5] = np.nan
    cases["nan.ply"] = _ply_bytes(bad, faces)
    cases["nofaces.ply"] = (
        b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        b"element face 0\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n"
    )
    cases["range.ply"] = cases["nofaces.ply"].replace(b"face 0", b"face 1") + b"3 0 1 9\n"
    expected = {
        "missing.ply": "no such file",
        "empty.ply": "empty file (0 bytes)",
        "truncated.ply": "cannot read mesh",
        "nan.ply": "1 of 42 vertices have non-finite coordinates (first: vertex 5",
        "nofaces.ply": "0 faces (empty or truncated)",
        "range.ply": "face indices out of range: min 0, max 9, but there are 3 vertices",
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(MeshError) as info:
            load_mesh(path)
        message = str(info.value)
        assert message.startswith(f"{path}: "), message
        assert expected[name] in message, message
        assert "\n" not in message
        assert isinstance(info.value, ValueError)


def test_save_mesh_rejects_bad_input_and_is_atomic(tmp_path: Path) -> None:
    verts, faces = _icosphere(1)
    with pytest.raises(ValueError, match=r"unsupported suffix '\.stl'"):
        save_mesh(tmp_path / "a.stl", verts, faces)
    with pytest.raises(ValueError, match=r"face indices must lie in \[0, 42\)"):
        save_mesh(tmp_path / "a.ply", verts, faces + 40)
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # fails mid-write
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"]


# ---------------------------------------------------------------- normals


def test_vertex_normals_of_sphere_are_radial() -> None:
    verts, faces = _icosphere(3)
    v = torch.from_numpy(verts)[None]
    f = torch.from_numpy(faces)
    normals = vertex_normals(v, f)[0].numpy()
    assert _angle_deg(normals, verts).max() < 1.0
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-12)
    fn = face_normals(v, f)[0].numpy()
    assert (np.einsum("ij,ij->i", fn, verts[faces].mean(1)) > 0).all()  # CCW faces point outwards


def test_normals_batched_equal_per_item_and_isolated_vertex_is_zero() -> None:
    verts, faces = _icosphere(1)
    verts = np.concatenate([verts, [[5.0, 5.0, 5.0]]])  # an isolated vertex
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(verts[None] * rng.uniform(0.5, 2.0, (3, 1, 3)))
    f = torch.from_numpy(faces)
    together = vertex_normals(batch, f)
    for b in range(3):
        torch.testing.assert_close(together[b], vertex_normals(batch[b : b + 1], f)[0])
    assert torch.isfinite(together).all()
    assert together[:, -1].abs().max() == 0
    with pytest.raises(ValueError, match=r"verts must be a \(B, V, 3\) tensor"):
        vertex_normals(batch[0], f)


def test_numpy_normals_are_the_torch_ones_and_area_weighted() -> None:
    """The numpy adapters give the torch functions' numbers, and those equal the area-weighted formula that
    registration, the synthetic scans and the synthetic head each wrote by hand before (sum of the faces'
    (v1 - v0) x (v2 - v0) at each vertex, normalised), in float64 and float32, read-only input included."""
    verts, faces = _icosphere(2)
    rng = np.random.default_rng(3)
    verts = verts * rng.uniform(0.5, 2.0, 3) + rng.normal(0, 0.02, verts.shape)  # uneven face areas
    tri = verts[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    summed = np.zeros_like(verts)
    for k in range(3):
        np.add.at(summed, faces[:, k], cross)
    expected = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    frozen = verts.copy()
    frozen.setflags(write=False)
    np_normals = vertex_normals_np(frozen, faces.astype(np.int32))
    assert np_normals.dtype == np.float64
    np.testing.assert_allclose(np_normals, expected, atol=1e-12)
    np.testing.assert_array_equal(np_normals, vertex_normals(torch.from_numpy(verts)[None], torch.from_numpy(faces))[0])
    np.testing.assert_allclose(face_normals_np(verts, faces), cross / np.linalg.norm(cross, axis=1, keepdims=True),
                               atol=1e-12)
    single = vertex_normals_np(verts.astype(np.float32), faces)
    assert single.dtype == np.float32 and np.abs(single - expected).max() < 1e-5


def _random_fragments(batch: int, size: tuple[int, int], faces: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    face_id = torch.randint(-1, faces, (batch, *size), generator=gen)
    bary = torch.distributions.Dirichlet(torch.ones(3)).sample((batch, *size))
    return face_id, bary.double()


def test_interpolate_fragments_is_the_barycentric_sum_per_pixel_and_image() -> None:
    """a(p) = sum_k bary[p, k] * values[b, faces[face_id[p], k]] at every pixel of every image, 0 on background."""
    verts, faces = _icosphere(1)
    values = torch.from_numpy(np.stack([verts, 2 * verts + 1]))  # (2, V, 3), other values per image
    face_id, bary = _random_fragments(2, (5, 7), len(faces))
    out = interpolate_fragments(values, torch.from_numpy(faces), face_id, bary)
    assert out.shape == (2, 5, 7, 3) and out.dtype == torch.float64
    for b, i, j in np.ndindex(2, 5, 7):
        f = int(face_id[b, i, j])
        want = torch.zeros(3, dtype=torch.float64) if f < 0 else bary[b, i, j] @ values[b, faces[f]]
        torch.testing.assert_close(out[b, i, j], want)
    with pytest.raises(ValueError, match=r"values must be \(B, V, C\)"):
        interpolate_fragments(values[0], torch.from_numpy(faces), face_id, bary)


def test_pixel_normals_are_unit_in_the_head_frame_and_differentiable() -> None:
    """pixel_normals = normalise(interpolated R^T n): unit on the foreground, 0 on background, equal to
    rotating each pixel's world normal by R^T, with finite gradients everywhere."""
    verts, faces = _icosphere(2)
    v = torch.from_numpy(verts)[None].requires_grad_(True)
    f = torch.from_numpy(faces)
    face_id, bary = _random_fragments(1, (6, 6), len(faces), seed=1)
    rotation = torch.linalg.qr(torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(2),
                                           dtype=torch.float64))[0]
    head = pixel_normals(vertex_normals(v, f), f, face_id, bary, rotation)
    world = pixel_normals(vertex_normals(v, f), f, face_id, bary)
    fg = face_id >= 0
    torch.testing.assert_close(head.norm(dim=-1)[fg], torch.ones(int(fg.sum()), dtype=torch.float64))
    assert head[~fg].abs().max() == 0
    torch.testing.assert_close(head, world @ rotation[0])  # n_head = R^T n_world (row vectors)
    head.sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().max() > 0


# ---------------------------------------------------------------- cameras


def _random_cameras(batch: int, size: tuple[int, int], seed: int = 0) -> Cameras:
    gen = torch.Generator().manual_seed(seed)
    eye = torch.randn(batch, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, 1.0])
    target = torch.randn(batch, 3, generator=gen) * 0.02
    R, t = look_at(eye, target, torch.tensor([[0.0, 1.0, 0.0]]).expand(batch, 3))
    K = intrinsics_from_fov(torch.rand(batch, generator=gen) * 20 + 20, size)
    K[:, 0, 0] *= 1.1  # non-square pixels
    K[:, :2, 2] += torch.randn(batch, 2, generator=gen) * 3  # off-centre principal point
    return Cameras(K=K, R=R, t=t, image_size=size)


def test_project_matches_pytorch3d() -> None:
    from pytorch3d.utils import cameras_from_opencv_projection

    size = (48, 64)
    cams = _random_cameras(3, size)
    points = torch.randn(3, 200, 3, generator=torch.Generator().manual_seed(2)) * 0.1
    uv, depth = project(points, cams)
    p3d = to_pytorch3d(cams)
    screen = p3d.transform_points_screen(points)
    # PyTorch3D's screen pixel j spans [j, j + 1]; ours is centred on j.
    torch.testing.assert_close(screen[..., :2] - 0.5, uv, atol=1e-3, rtol=0)
    view = p3d.get_world_to_view_transform().transform_points(points)
    torch.testing.assert_close(view[..., 2], depth, atol=1e-5, rtol=0)
    torch.testing.assert_close(view[..., :2], -world_to_camera(points, cams)[..., :2], atol=1e-5, rtol=0)
    # Same cameras as PyTorch3D's own OpenCV conversion once its half-pixel convention is applied.
    K_half = cams.K.clone()
    K_half[:, :2, 2] += 0.5
    ref = cameras_from_opencv_projection(cams.R, cams.t, K_half, torch.tensor([size] * 3))
    for name in ("R", "T", "focal_length", "principal_point"):
        torch.testing.assert_close(getattr(p3d, name), getattr(ref, name), atol=1e-6, rtol=1e-6)


def test_look_at_centres_target_with_positive_depth() -> None:
    cams = _camera((0.3, 0.2, 1.5), (0.01, -0.02, 0.03), (60, 80))
    uv, depth = project(torch.tensor([[[0.01, -0.02, 0.03], [0.01, 0.08, 0.03]]], dtype=torch.float64), cams)
    torch.testing.assert_close(uv[0, 0], cams.principal_point[0])
    assert depth[0, 0] > 0
    assert uv[0, 1, 1] < uv[0, 0, 1]  # world up appears upwards (smaller row)
    R = cams.R[0]
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=R.dtype))
    assert torch.linalg.det(R) > 0
    torch.testing.assert_close(cams.centers[0], torch.tensor([0.3, 0.2, 1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="up is parallel"):
        look_at(torch.tensor([[0.0, 1.0, 0.0]]), torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 0.0]]))


def test_fov_and_rays_follow_pixel_centre_convention() -> None:
    size = (30, 40)
    cams = _camera((0.0, 0.0, 2.0), (0.0, 0.0, 0.0), size, fov=60.0)
    # The fov spans the shorter side edge to edge: a point at half-angle 30 deg lands on v = -0.5.
    edge = torch.tensor([[[0.0, math.tan(math.radians(30.0)), 1.0]]], dtype=torch.float64)
    uv, _ = project(edge, cams)
    assert abs(uv[0, 0, 1].item() - (-0.5)) < 1e-9
    origins, dirs = camera_ray_directions(cams, 0)
    uv, depth = project(torch.from_numpy(origins + 0.7 * dirs)[None], cams)
    rows, cols = np.divmod(np.arange(size[0] * size[1]), size[1])
    np.testing.assert_allclose(uv[0].numpy(), np.stack([cols, rows], 1), atol=1e-9)
    assert (depth > 0).all()


def test_cameras_validate_shapes() -> None:
    K = intrinsics_from_fov(40.0, (8, 8))
    with pytest.raises(ValueError, match=r"R must be \(1, 3, 3\)"):
        Cameras(K=K, R=torch.eye(3), t=torch.zeros(1, 3), image_size=(8, 8))
    skewed = K.clone()
    skewed[0, 0, 1] = 1.0
    with pytest.raises(ValueError, match="no skew"):
        Cameras(K=skewed, R=torch.eye(3)[None], t=torch.zeros(1, 3), image_size=(8, 8))


# ---------------------------------------------------------------- mirror


def _symmetric_mesh(seed: int = 3) -> np.ndarray:
    verts, _ = _icosphere(3)  # the icosahedron and its subdivisions are symmetric about x = 0
    verts = verts * np.array([0.09, 0.12, 0.1])  # head-sized ellipsoid, still symmetric
    return verts[np.random.default_rng(seed).permutation(len(verts))]


def test_mirror_map_of_symmetric_mesh_is_exact_involution() -> None:
    verts = _symmetric_mesh()
    mirror = mirror_map(verts)
    assert mirror.dtype == np.int64
    np.testing.assert_array_equal(mirror[mirror], np.arange(len(verts)))
    np.testing.assert_allclose(verts[mirror], verts * np.array([-1.0, 1.0, 1.0]), atol=1e-12)
    on_plane = np.abs(verts[:, 0]) < 1e-12
    assert on_plane.any() and (mirror[on_plane] == np.flatnonzero(on_plane)).all()


def test_mirror_map_rejects_asymmetric_mesh() -> None:
    verts = _symmetric_mesh()
    verts[17, 0] += 2e-3
    with pytest.raises(ValueError, match=r"worst vertex 17 at residual 0\.002"):
        mirror_map(verts)
    match = mirror_nearest(verts)  # the unchecked variant for diagnosis
    assert match.residual.argmax() == 17 and abs(match.residual.max() - 2e-3) < 1e-9
    with pytest.raises(ValueError, match="use mirror_nearest"):
        mirror_map(verts, tol=None)


def test_uv_mirror_axis_is_measured_not_assumed() -> None:
    verts = _symmetric_mesh()
    mirror = mirror_map(verts)
    uv = np.stack([0.47 + 2.0 * verts[:, 0], 0.5 + verts[:, 1]], axis=1)
    axis, std = uv_mirror_axis(uv, mirror)
    assert abs(axis - 0.47) < 1e-12 and std < 1e-12


# ---------------------------------------------------------------- ray casting


@pytest.fixture(scope="module")
def sphere_hits():
    verts, faces = _icosphere(4)
    cams = _camera((0.3, 0.2, 3.0), (0.0, 0.0, 0.0), (96, 96), fov=50.0)
    return verts, faces, cams, raycast(verts, faces, cams)


def test_raycast_normals_match_sphere(sphere_hits) -> None:
    """Interpolated vertex normals vs the direction from the centre to the hit point.

    For a polyhedron inscribed in a sphere, barycentric interpolation of exactly radial vertex normals
    *is* the direction to the hit point, so this measures the ray caster's barycentrics and depth
    (the hit point is rebuilt from depth) plus the vertex normals' own error (~0.34 deg here). Against
    the analytic normal where the ray meets the true sphere, facets differ by up to ~2.3 deg at grazing
    rays, so that comparison is made only where the ray meets the surface at less than 60 deg.
    """
    verts, faces, cams, hits = sphere_hits
    mask = hits.mask
    assert 3000 < mask.sum() < 96 * 96 and hits.front_facing[mask].all()
    normals = vertex_normals(torch.from_numpy(verts)[None], torch.from_numpy(faces))[0].numpy()
    n = interpolate(hits, normals, faces)[mask].astype(np.float64)
    origins, dirs = camera_ray_directions(cams, 0)
    d = dirs.reshape(96, 96, 3)[mask]
    centre = origins[0]
    hit_points = centre + d * (hits.depth[mask] / (d @ cams.R[0, 2].numpy()))[:, None]
    assert _angle_deg(n, hit_points).max() < 0.5
    t_sphere, _ = _ray_sphere_t(centre, d, 1.0)
    on_sphere = centre + d * t_sphere[:, None]
    frontal = -(d * on_sphere).sum(1) > 0.5
    assert _angle_deg(n[frontal], on_sphere[frontal]).max() < 0.5


def test_raycast_depth_matches_sphere(sphere_hits) -> None:
    """Depth of the faceted sphere lies between the analytic depths of its circumsphere (r = 1) and
    insphere (r = distance of the nearest face plane, 1 - 1.1 mm): a tight, exact bracket."""
    verts, faces, cams, hits = sphere_hits
    mask = hits.mask
    tri = verts[faces]
    plane_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    r_in = np.min(np.abs((plane_n * tri[:, 0]).sum(1)) / np.linalg.norm(plane_n, axis=1))
    origins, dirs = camera_ray_directions(cams, 0)
    d = dirs.reshape(96, 96, 3)[mask]
    z_slope = d @ cams.R[0, 2].numpy()
    t_out, disc_out = _ray_sphere_t(origins[0], d, 1.0)
    t_in, disc_in = _ray_sphere_t(origins[0], d, r_in)
    assert (disc_out >= 0).all()  # every hit ray meets the circumsphere
    depth = hits.depth[mask].astype(np.float64)
    assert (depth >= t_out * z_slope - 1e-5).all()
    inner = disc_in >= 0
    assert (depth[inner] <= t_in[inner] * z_slope[inner] + 1e-5).all()
    # Millimetre scale: facets sag at most 1 - r_in = 1.1 mm; along rays at < 60 deg, at most twice that.
    frontal = -(d * (origins[0] + d * t_out[:, None])).sum(1) > 0.5
    assert np.abs(depth - t_out * z_slope)[frontal].max() < 2 * (1 - r_in) + 1e-5
    assert np.isinf(hits.depth[~mask]).all() and (hits.face_id[~mask] == -1).all()


def test_raycast_face_ids_match_pytorch3d() -> None:
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes
    from pytorch3d.utils import cameras_from_opencv_projection

    verts, faces = _icosphere(2, radius=0.1)  # 320 faces
    verts = verts * np.array([1.0, 1.3, 0.9]) + np.array([0.01, -0.02, 0.0])  # no symmetry to hide flips
    size = (48, 64)  # non-square, off-centre principal point, fx != fy
    cams = _camera((0.12, 0.08, 0.45), (0.0, 0.0, 0.0), size, fov=35.0, dtype=torch.float32)
    K = cams.K.clone()
    K[0, 0, 0] *= 1.05
    K[0, :2, 2] += torch.tensor([2.3, -1.7])
    cams = Cameras(K=K, R=cams.R, t=cams.t, image_size=size)
    hits = raycast(verts, faces, cams)

    mesh = Meshes([torch.tensor(verts, dtype=torch.float32)], [torch.from_numpy(faces)])
    settings = RasterizationSettings(image_size=size, faces_per_pixel=1, blur_radius=0.0, bin_size=0)

    def rasterise(p3d_cameras):
        fragments = MeshRasterizer(cameras=p3d_cameras, raster_settings=settings)(mesh)
        return fragments.pix_to_face[0, ..., 0].numpy(), fragments.zbuf[0, ..., 0].numpy()

    pix_to_face, zbuf = rasterise(to_pytorch3d(cams))
    foreground = (pix_to_face >= 0) | hits.mask
    assert foreground.sum() > 500
    assert (pix_to_face == hits.face_id)[foreground].mean() >= 0.99
    both = (pix_to_face >= 0) & hits.mask
    np.testing.assert_allclose(zbuf[both], hits.depth[both], atol=1e-5)
    # The test has power: PyTorch3D's OpenCV conversion without the half-pixel shift disagrees a lot.
    naive, _ = rasterise(cameras_from_opencv_projection(cams.R, cams.t, cams.K, torch.tensor([size])))
    assert (naive == hits.face_id)[foreground].mean() < 0.9


def test_interpolate_shade_and_grid(tmp_path: Path) -> None:
    verts, faces = _icosphere(2, radius=0.1)
    keep = verts[faces].mean(1)[:, 2] < 0.07  # open the cap facing the camera: inside is visible
    open_faces = faces[keep]
    cams = _camera((0.0, 0.0, 0.5), (0.0, 0.0, 0.0), (40, 40), fov=30.0)
    caster = RayCaster(verts, open_faces)
    hits = caster.cast(cams)
    assert (~hits.front_facing & hits.mask).any()
    uv = interpolate(hits, verts[:, :2], open_faces)
    assert uv.shape == (40, 40, 2) and uv.dtype == np.float64
    assert (uv[~hits.mask] == 0).all()
    background = (10, 20, 30)
    image = shade(hits, verts, open_faces, background=background)
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    assert (image[~hits.mask] == background).all()
    lum = image.astype(float).mean(-1)
    assert lum[~hits.front_facing & hits.mask].mean() < lum[hits.front_facing].mean()  # back faces darker
    full = render_shaded(verts, faces, cams)
    grid = image_grid([image, full, full[:20]], ncols=2, labels=["open", "closed", "half"], pad=3)
    assert grid.dtype == np.uint8 and grid.shape[1] == 3 + 2 * 43 and grid.shape[0] > 2 * 43
    save_png(tmp_path / "grid.png", grid)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grid.png")), grid)
    with pytest.raises(ValueError, match="batch size 1"):
        raycast(verts, faces, _random_cameras(2, (8, 8)))
