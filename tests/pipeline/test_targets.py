"""Training targets: analytic sphere normals, agreement with PyTorch3D, head-frame invariance, cameras."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from p3dmm.flame.cameras import Cameras, camera_ray_directions, intrinsics_from_fov, look_at, to_pytorch3d
from p3dmm.flame.files import load_assets
from p3dmm.flame.model import FLAME
from p3dmm.flame.render import RayCaster
from p3dmm.flame.rotations import axis_angle_to_matrix
from p3dmm.flame.synth import write_synthetic_flame
from p3dmm.pipeline.render.targets import render_targets, uv_region_faces
from p3dmm.pipeline.render.views import ViewConfig, sample_views


def _camera(eye, target, size, fov=30.0) -> Cameras:
    R, t = look_at(torch.tensor([eye], dtype=torch.float64), torch.tensor([target], dtype=torch.float64),
                   torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    return Cameras(K=intrinsics_from_fov(fov, size, dtype=torch.float64), R=R, t=t, image_size=size)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flame")
    write_synthetic_flame(folder, n_vertices=1000, seed=4)
    return load_assets(folder)


def test_sphere_target_normals_match_analytic():
    """render_targets on a fine sphere: head-frame normals (identity head) vs the analytic normal where each
    pixel's ray meets the true sphere, within 0.5 deg on every pixel seen at less than 60 deg."""
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.1)
    verts, faces = np.asarray(sphere.vertices), np.asarray(sphere.faces, np.int64)
    cam = _camera((0.05, 0.03, 0.5), (0.0, 0.0, 0.0), (96, 96))
    vt = np.zeros((len(verts), 2))
    maps = render_targets(RayCaster(verts, faces), cam, np.eye(3), vt, faces, np.ones(len(faces), bool))
    mask = maps.mask
    assert mask.sum() > 2000
    origins, dirs = camera_ray_directions(cam, 0)
    d = dirs.reshape(96, 96, 3)[mask]
    o = origins[0]
    b = d @ o
    t = -b - np.sqrt(np.maximum(b * b - (o @ o - 0.1**2), 0.0))
    on_sphere = o + d * t[:, None]
    frontal = -(d * on_sphere).sum(1) / 0.1 > 0.5
    err = _angle_deg(maps.normal[mask].astype(np.float64), on_sphere)
    assert err[frontal].max() < 0.5, err[frontal].max()
    np.testing.assert_allclose(np.linalg.norm(maps.normal[mask], axis=-1), 1.0, atol=1e-5)


def test_targets_agree_with_pytorch3d(assets):
    """Same FLAME mesh and camera through PyTorch3D's rasteriser (per-corner UV and vertex normals
    interpolated with its barycentrics) and through the embree targets: >= 99% of foreground pixels agree."""
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.renderer.mesh.utils import interpolate_face_attributes
    from pytorch3d.structures import Meshes

    from p3dmm.flame.mesh import vertex_normals

    flame = FLAME(assets)
    pose = torch.zeros(1, 15)
    pose[0, :3] = torch.tensor([0.1, 0.4, 0.05])
    pose[0, 6] = 0.2
    with torch.no_grad():
        verts = flame(pose=pose).vertices[0].double().numpy()
    faces = assets.model.faces
    size = (80, 72)
    centre = verts.mean(0)
    cam = _camera(tuple(centre + np.array([0.1, 0.05, 0.6])), tuple(centre), size)
    region = uv_region_faces(assets)
    head = (axis_angle_to_matrix(pose[0, :3].double()) @ axis_angle_to_matrix(pose[0, 3:6].double())).numpy()
    maps = render_targets(RayCaster(verts, faces), cam, head, assets.uv.vt, assets.uv.ft, region)

    mesh = Meshes([torch.tensor(verts, dtype=torch.float32)], [torch.from_numpy(faces)])
    settings = RasterizationSettings(image_size=size, faces_per_pixel=1, blur_radius=0.0, bin_size=0)
    frags = MeshRasterizer(cameras=to_pytorch3d(cam.to(dtype=torch.float32)), raster_settings=settings)(mesh)
    uv_corners = torch.tensor(assets.uv.vt[assets.uv.ft], dtype=torch.float32)
    uv = interpolate_face_attributes(frags.pix_to_face, frags.bary_coords, uv_corners)[0, ..., 0, :].numpy()
    vn = vertex_normals(torch.tensor(verts)[None], torch.from_numpy(faces))[0].float()
    n = interpolate_face_attributes(frags.pix_to_face, frags.bary_coords, vn[torch.from_numpy(faces)])[0, ..., 0, :]
    n = (n.double().numpy() @ head)
    p3d_mask = frags.pix_to_face[0, ..., 0].numpy() >= 0

    foreground = p3d_mask | maps.mask
    assert foreground.sum() > 1000
    both = p3d_mask & maps.mask
    uv_ok = np.zeros_like(foreground)
    uv_ok[both] = np.abs(np.stack([uv[both, 0], 1 - uv[both, 1]], -1) - maps.uv[both]).max(-1) < 2e-3
    normal_ok = np.zeros_like(foreground)
    normal_ok[both] = _angle_deg(n[both], maps.normal[both].astype(np.float64)) < 1.0
    assert uv_ok[foreground].mean() >= 0.99, uv_ok[foreground].mean()
    assert normal_ok[foreground].mean() >= 0.99, normal_ok[foreground].mean()


def test_head_frame_normals_ignore_global_rotation(assets):
    """Turning the whole head (global pose) with the camera following it leaves the targets unchanged."""
    flame = FLAME(assets)
    faces = assets.model.faces
    region = uv_region_faces(assets)
    rng_pose = torch.tensor([[0.3, -0.7, 0.2]])
    maps = []
    for global_aa in (torch.zeros(1, 3), rng_pose):
        pose = torch.zeros(1, 15)
        pose[:, :3] = global_aa
        with torch.no_grad():
            out = flame(pose=pose)
        verts = out.vertices[0].double().numpy()
        Rg = axis_angle_to_matrix(global_aa[0].double()).numpy()
        root = out.joints[0, 0].double().numpy()
        base = _camera((0.05, 0.02, 0.6), (0.0, 0.0, 0.0), (64, 64))
        # the camera turns with the head about the root joint: x_cam = R (Rg^T (x - root) + root) + t
        R = base.R[0].numpy() @ Rg.T
        t = base.t[0].numpy() + base.R[0].numpy() @ (root - Rg.T @ root)
        cam = Cameras(K=base.K, R=torch.from_numpy(R)[None], t=torch.from_numpy(t)[None], image_size=(64, 64))
        maps.append(render_targets(RayCaster(verts, faces), cam, Rg, assets.uv.vt, assets.uv.ft, region))
    a, b = maps
    assert a.mask.sum() > 500
    same = a.mask & b.mask
    assert same.sum() / (a.mask | b.mask).sum() > 0.99
    assert np.abs(a.normal[same] - b.normal[same]).max() < 1e-3
    assert np.abs(a.uv[same] - b.uv[same]).max() < 1e-3
    # and the test has power: the world-frame normals of the turned head differ a lot
    assert np.abs(a.normal[same] - b.normal[same] @ Rg.T).max() > 0.3


def test_views_are_seeded_spread_and_frame_the_face():
    centre, extent, size = np.array([0.0, 0.02, 0.01]), 0.18, 128
    cams_a, angles = sample_views(np.random.default_rng(7), 200, centre, np.eye(3), extent, size)
    cams_b, _ = sample_views(np.random.default_rng(7), 200, centre, np.eye(3), extent, size)
    assert torch.equal(cams_a.R, cams_b.R) and torch.equal(cams_a.K, cams_b.K)
    assert np.abs(angles[:, 0]).max() > 75 and np.abs(angles[:, 0]).max() <= 90  # profiles exist
    assert np.abs(angles[:, 1]).max() <= 30 and np.abs(angles[:, 2]).max() <= 10
    assert np.median(np.abs(angles[:, 0])) < 45  # mostly near-frontal, like photos
    # the head centre projects near the image centre and the head spans fill * size pixels
    from p3dmm.flame.cameras import project

    uv, depth = project(torch.tensor(centre)[None].expand(200, 3)[:, None], cams_a)
    offset = (uv[:, 0] - (size - 1) / 2).abs().max()
    assert (depth > 0).all() and offset < 0.25 * size
    dist = (cams_a.centers - torch.tensor(centre)).norm(dim=1)
    span = cams_a.K[:, 0, 0] * extent / dist / size
    lo, hi = ViewConfig().fill
    assert (span > lo * 0.9).all() and (span < hi * 1.1).all()
