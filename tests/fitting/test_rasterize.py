"""The fitting rasteriser draws what the training targets drew: same head-frame normals, same depth convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p3dmm.fitting.fit import fixed_camera, rasterize
from p3dmm.flame.files import load_assets
from p3dmm.flame.fragments import pixel_normals
from p3dmm.flame.mesh import vertex_normals
from p3dmm.flame.model import FLAME
from p3dmm.flame.render import RayCaster
from p3dmm.flame.rotations import head_rotation
from p3dmm.pipeline.render.targets import render_targets, uv_region_faces

SIZE = 64


@pytest.fixture(scope="module")
def turned_head(flame_1000):
    """A turned FLAME head (global and neck rotation) seen by the fitting camera."""
    assets = load_assets(flame_1000)
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, :3] = torch.tensor([0.1, 0.5, -0.05])
    pose[0, 3:6] = torch.tensor([0.15, 0.0, 0.1])
    with torch.no_grad():
        verts = FLAME(assets, dtype=torch.float64)(pose=pose).vertices
    cam = fixed_camera(1, SIZE, torch.tensor([3.9 * SIZE], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
    return assets, verts, pose, cam


def _fitting_normals(assets, verts, pose, cam, backend):
    faces = torch.from_numpy(assets.model.faces)
    face_id, bary, depth = rasterize(verts.float(), faces, cam.to(dtype=torch.float32), backend)
    normals = pixel_normals(vertex_normals(verts.float(), faces), faces, face_id, bary, head_rotation(pose).float())
    return face_id[0].numpy(), normals[0].numpy(), depth[0].numpy()


def _targets(assets, verts, pose, cam):
    caster = RayCaster(verts[0].numpy(), assets.model.faces)
    return render_targets(caster, cam, head_rotation(pose)[0].numpy(), assets.uv.vt, assets.uv.ft,
                          uv_region_faces(assets))


def test_embree_fitting_normals_equal_the_targets(turned_head):
    """Same mesh, camera and ray caster: the fitting's rendered normals are the training targets, up to the
    fitting's float32 vertices (~1e-5)."""
    assets, verts, pose, cam = turned_head
    face_id, normals, depth = _fitting_normals(assets, verts, pose, cam, "embree")
    targets = _targets(assets, verts, pose, cam)
    assert targets.mask.sum() > 500
    np.testing.assert_array_equal(face_id >= 0, targets.mask)
    np.testing.assert_allclose(normals, targets.normal, atol=1e-4)
    assert np.isinf(depth[~targets.mask]).all() and np.isinf(targets.depth[~targets.mask]).all()
    np.testing.assert_allclose(depth[targets.mask], targets.depth[targets.mask], rtol=1e-6)


def test_pytorch3d_fitting_normals_agree_with_the_targets(turned_head):
    """PyTorch3D (the GPU path) against the embree targets: >= 99% of the foreground within 1 degree, and the
    same background depth (inf, not PyTorch3D's -1)."""
    pytest.importorskip("pytorch3d")
    assets, verts, pose, cam = turned_head
    face_id, normals, depth = _fitting_normals(assets, verts, pose, cam, "pytorch3d")
    targets = _targets(assets, verts, pose, cam)
    both = (face_id >= 0) & targets.mask
    assert both.sum() >= 0.98 * ((face_id >= 0) | targets.mask).sum()
    cos = np.clip((normals[both] * targets.normal[both]).sum(-1), -1.0, 1.0)
    assert (np.degrees(np.arccos(cos)) < 1.0).mean() >= 0.99
    assert np.isinf(depth[face_id < 0]).all() and (depth[face_id >= 0] > 0).all()
