"""FLAME forward, rotations and landmarks against a slow float64 reference written from the paper.

The reference (`_reference_forward`) follows Li et al. 2017 §3 term by term with python loops over
vertices and joints and numpy only; it shares no code with p3dmm.flame.lbs. The model is small and
random but well formed (V = 50, 300 + 100 components, 5 joints, parents [-1, 0, 1, 1, 1]).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from p3dmm.flame.assets import FlameAssets, FlameModelData, LandmarkEmbedding
from p3dmm.flame.landmarks import dynamic_row, frontal_landmarks, landmarks_from_barycentric
from p3dmm.flame.model import FLAME, FlameOutput, load_flame
from p3dmm.flame.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)

NUM_VERTS, NUM_FACES, BATCH = 50, 80, 4
PARENTS = [-1, 0, 1, 1, 1]


def _make_assets(seed: int = 0) -> FlameAssets:
    rng = np.random.default_rng(seed)
    faces = np.stack([rng.choice(NUM_VERTS, 3, replace=False) for _ in range(NUM_FACES)]).astype(np.int64)
    j_regressor = rng.random((5, NUM_VERTS)) * (rng.random((5, NUM_VERTS)) < 0.3)
    j_regressor[:, 0] += 1e-3  # no empty row
    weights = rng.random((NUM_VERTS, 5)) ** 3
    model = FlameModelData(
        v_template=rng.normal(scale=0.05, size=(NUM_VERTS, 3)),
        faces=faces,
        shapedirs=rng.normal(scale=1e-3, size=(NUM_VERTS, 3, 400)),
        posedirs=rng.normal(scale=1e-2, size=(NUM_VERTS, 3, 36)),
        j_regressor=j_regressor / j_regressor.sum(1, keepdims=True),
        weights=weights / weights.sum(1, keepdims=True),
        parents=np.array(PARENTS, dtype=np.int64),
    )
    full_faces = rng.integers(0, NUM_FACES, 68)
    full_bary = rng.dirichlet(np.ones(3), 68)
    landmarks = LandmarkEmbedding(
        static_faces=full_faces[17:],
        static_bary=full_bary[17:],
        dynamic_faces=rng.integers(0, NUM_FACES, (79, 17)),
        dynamic_bary=rng.dirichlet(np.ones(3), (79, 17)).astype(np.float32),
        full_faces=full_faces,
        full_bary=full_bary,
    )
    return FlameAssets(model=model, landmarks=landmarks)


ASSETS = _make_assets()


def _random_params(seed: int, batch: int = BATCH, pose_scale: float = 0.4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "shape": rng.normal(size=(batch, 300)),
        "expression": rng.normal(size=(batch, 100)),
        "pose": rng.normal(scale=pose_scale, size=(batch, 15)),
        "translation": rng.normal(scale=0.1, size=(batch, 3)),
    }


def _torch(params: dict[str, np.ndarray], dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=dtype) for k, v in params.items()}


# ---------------------------------------------------------------- reference (paper, float64, loops)


def _ref_rodrigues(aa: np.ndarray) -> np.ndarray:
    """R = cos(t) I + (1 - cos(t)) k k^T + sin(t) [k]x, unit axis k."""
    theta = math.sqrt(float(aa @ aa))
    if theta < 1e-300:
        return np.eye(3)
    k = aa / theta
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return math.cos(theta) * np.eye(3) + (1 - math.cos(theta)) * np.outer(k, k) + math.sin(theta) * cross


def _ref_row(r_global: np.ndarray, r_neck: np.ndarray) -> int:
    rel = r_global @ r_neck
    angle = -math.degrees(math.atan2(-rel[2, 0], math.sqrt(rel[0, 0] ** 2 + rel[1, 0] ** 2)))
    y = round(min(angle, 39.0))
    if y >= 0:
        return y
    return 78 if y < -39 else 39 - y


def _ref_forward(model: FlameModelData, lmk: LandmarkEmbedding, shape, expression, pose, translation):
    """One item: (vertices (V,3), joints (5,3), landmarks (68,3), vertices_shaped (V,3))."""
    num_verts = model.v_template.shape[0]
    rots = [_ref_rodrigues(pose[3 * j : 3 * j + 3]) for j in range(5)]
    features = [rots[k][a, b] - (1.0 if a == b else 0.0) for k in range(1, 5) for a in range(3) for b in range(3)]
    shaped = np.zeros((num_verts, 3))
    corrected = np.zeros((num_verts, 3))
    for v in range(num_verts):
        for c in range(3):
            value = model.v_template[v, c]
            value += sum(model.shapedirs[v, c, i] * shape[i] for i in range(len(shape)))
            value += sum(model.shapedirs[v, c, 300 + i] * expression[i] for i in range(len(expression)))
            shaped[v, c] = value
            corrected[v, c] = value + sum(model.posedirs[v, c, i] * features[i] for i in range(36))
    rest_joints = np.zeros((5, 3))
    for j in range(5):
        for v in range(num_verts):
            rest_joints[j] += model.j_regressor[j, v] * shaped[v]
    world = [np.eye(4)] * 5
    for j, p in enumerate(model.parents):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = rest_joints[j] - (rest_joints[p] if p >= 0 else 0.0)
        world[j] = local if p < 0 else world[p] @ local
    relative = []
    for j in range(5):
        unpose = np.eye(4)
        unpose[:3, 3] = -rest_joints[j]
        relative.append(world[j] @ unpose)
    verts = np.zeros((num_verts, 3))
    for v in range(num_verts):
        blended = sum(model.weights[v, j] * relative[j] for j in range(5))
        verts[v] = (blended @ np.append(corrected[v], 1.0))[:3] + translation
    joints = np.array([world[j][:3, 3] + translation for j in range(5)])
    row = _ref_row(rots[0], rots[1])
    lmk_faces = list(lmk.dynamic_faces[row]) + list(lmk.static_faces)
    lmk_bary = list(lmk.dynamic_bary[row].astype(np.float64)) + list(lmk.static_bary)
    landmarks = np.zeros((len(lmk_faces), 3))
    for i, (f, bc) in enumerate(zip(lmk_faces, lmk_bary, strict=True)):
        for corner in range(3):
            landmarks[i] += bc[corner] * verts[model.faces[f, corner]]
    return verts, joints, landmarks, shaped


def _ref_batch(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    items = [
        _ref_forward(ASSETS.model, ASSETS.landmarks, *(params[k][b] for k in ("shape", "expression", "pose", "translation")))
        for b in range(params["shape"].shape[0])
    ]
    names = ("vertices", "joints", "landmarks", "vertices_shaped")
    return {name: np.stack([item[i] for item in items]) for i, name in enumerate(names)}


def _max_errors(out: FlameOutput, ref: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.abs(getattr(out, name).double().numpy() - ref[name]).max()) for name in ref}


# ---------------------------------------------------------------- forward vs reference


@pytest.fixture(scope="module")
def reference_case() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    params = _random_params(1)
    return params, _ref_batch(params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_matches_paper_reference(reference_case, dtype) -> None:
    params, ref = reference_case
    model = FLAME(ASSETS, dtype=dtype)
    out = model(**_torch(params, dtype))
    assert out.vertices.dtype == dtype and out.landmarks.shape == (BATCH, 68, 3)
    errors = _max_errors(out, ref)
    # metres; measured ~1e-17 (float64) and ~1e-8 (float32)
    assert max(errors.values()) < 1e-5, errors
    assert ref["vertices"].std() > 0.03  # the pose really moved things


def test_zero_pose_is_template_plus_offsets() -> None:
    model = FLAME(ASSETS, dtype=torch.float64)
    out = model()
    assert out.vertices.shape == (1, NUM_VERTS, 3) and out.joints.shape == (1, 5, 3)
    np.testing.assert_allclose(out.vertices[0].numpy(), ASSETS.model.v_template, atol=1e-15)
    np.testing.assert_allclose(out.vertices_shaped[0].numpy(), ASSETS.model.v_template, atol=0)
    only_translation = model(translation=torch.ones(3, 3, dtype=torch.float64))
    assert only_translation.vertices.shape == (3, NUM_VERTS, 3)
    np.testing.assert_allclose(only_translation.vertices[2].numpy(), ASSETS.model.v_template + 1, atol=1e-14)


def test_6d_pose_equals_axis_angle() -> None:
    params = _torch(_random_params(2))
    model = FLAME(ASSETS, dtype=torch.float64)
    aa_out = model(**params)
    # 6D from scipy's matrices (first two rows), independent of our conversion.
    mats = Rotation.from_rotvec(params["pose"].numpy().reshape(-1, 3)).as_matrix()
    pose_6d = torch.tensor(mats[:, :2, :].reshape(BATCH, 30))
    six_out = model(**{**params, "pose": pose_6d}, rotation="6d")
    assert (six_out.vertices - aa_out.vertices).abs().max() < 1e-12
    assert (six_out.landmarks - aa_out.landmarks).abs().max() < 1e-12
    # Unnormalised 6D input describes the same rotation.
    scaled = pose_6d.reshape(BATCH, 5, 2, 3) * torch.tensor([2.0, 0.5]).view(1, 1, 2, 1)
    scaled_out = model(**{**params, "pose": scaled.reshape(BATCH, 30)}, rotation="6d")
    assert (scaled_out.vertices - aa_out.vertices).abs().max() < 1e-12


@pytest.mark.parametrize("pose_scale", [0.0, 0.4])
def test_gradients_flow(pose_scale: float) -> None:
    params = {k: v.requires_grad_() for k, v in _torch(_random_params(3, batch=2, pose_scale=pose_scale), torch.float32).items()}
    out = FLAME(ASSETS)(**params)
    (out.vertices.sum() + out.landmarks.square().sum() + out.joints.sum()).backward()
    for name, value in params.items():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
        assert value.grad.abs().max() > 0, name


def test_batched_equals_per_item() -> None:
    params = _torch(_random_params(4, pose_scale=1.0), torch.float32)
    model = FLAME(ASSETS)
    batched = model(**params)
    for b in range(BATCH):
        single = model(**{k: v[b : b + 1] for k, v in params.items()})
        for name in ("vertices", "landmarks", "joints", "vertices_shaped"):
            torch.testing.assert_close(getattr(single, name)[0], getattr(batched, name)[b], atol=1e-7, rtol=0)


# ---------------------------------------------------------------- landmarks


def test_static_landmarks_are_barycentric_points() -> None:
    model = FLAME(ASSETS, dtype=torch.float64)
    out = model(**_torch(_random_params(5)))
    verts = out.vertices.numpy()
    lmk = ASSETS.landmarks
    corners = verts[:, ASSETS.model.faces[lmk.static_faces]]  # (B, 51, 3 corners, 3)
    expected = np.einsum("lc,blcx->blx", lmk.static_bary, corners)
    np.testing.assert_allclose(out.landmarks[:, 17:].numpy(), expected, atol=1e-14)


def _yaw(degrees: float) -> torch.Tensor:
    return torch.tensor([[0.0, math.radians(degrees), 0.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("yaw_deg", "row"),
    [(0.0, 0), (20.0, 59), (-20.0, 20), (38.6, 78), (39.0, 78), (50.0, 78), (-39.0, 39), (-50.0, 39), (-0.4, 0)],
)
def test_dynamic_row_rule(yaw_deg: float, row: int) -> None:
    # y = round(min(-yaw, 39)); +20 deg -> y = -20 -> row 39 + 20; -20 deg -> row 20; clamp at 39 / 78.
    rot = axis_angle_to_matrix(torch.cat([_yaw(yaw_deg), torch.zeros(1, 3, dtype=torch.float64)]).view(1, 2, 3))
    assert dynamic_row(rot).tolist() == [row]
    assert dynamic_row(rot[:, 0] @ rot[:, 1]).tolist() == [row]
    # The same yaw split between global and neck picks the same row (rel = R_global @ R_neck).
    half = torch.cat([_yaw(yaw_deg / 2), _yaw(yaw_deg / 2)]).view(1, 2, 3)
    assert dynamic_row(axis_angle_to_matrix(half)).tolist() == [row]


def test_model_contour_uses_dynamic_row() -> None:
    model = FLAME(ASSETS, dtype=torch.float64)
    pose = torch.zeros(2, 15, dtype=torch.float64)
    pose[0, 4] = math.radians(20.0)  # neck yaw +20 -> row 59
    pose[1, 1] = math.radians(-20.0)  # global yaw -20 -> row 20
    out = model(pose=pose)
    lmk = ASSETS.landmarks
    for b, row in enumerate((59, 20)):
        corners = out.vertices[b].numpy()[ASSETS.model.faces[lmk.dynamic_faces[row]]]
        expected = np.einsum("lc,lcx->lx", lmk.dynamic_bary[row].astype(np.float64), corners)
        np.testing.assert_allclose(out.landmarks[b, :17].numpy(), expected, atol=1e-14)


def test_landmarks_from_barycentric_checks_shapes() -> None:
    verts = torch.zeros(2, NUM_VERTS, 3)
    faces = torch.as_tensor(ASSETS.model.faces)
    with pytest.raises(ValueError, match=r"expected face_idx \(B=2, L\)"):
        landmarks_from_barycentric(verts, faces, torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4, 3))


def test_frontal_landmarks_are_the_full_embedding_in_numpy() -> None:
    """frontal_landmarks (numpy, one mesh) = sum_k full_bary[l, k] v[faces[full_faces[l], k]]: the numbers the
    copies in pipeline/synth and fitting/evaluate computed, in the dtype of the vertices."""
    verts = np.random.default_rng(5).normal(size=(NUM_VERTS, 3))
    lmk = ASSETS.landmarks
    expected = np.einsum("lk,lkc->lc", lmk.full_bary.astype(np.float64), verts[ASSETS.model.faces[lmk.full_faces]])
    got = frontal_landmarks(ASSETS, verts)
    assert got.shape == (68, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=1e-14)
    assert frontal_landmarks(ASSETS, verts.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="no landmark embedding"):
        frontal_landmarks(FlameAssets(model=ASSETS.model), verts)


# ---------------------------------------------------------------- construction, sizes, errors


def test_truncation_equals_zero_padding() -> None:
    full = FLAME(ASSETS, dtype=torch.float64)
    small = FLAME(ASSETS.model, ASSETS.landmarks, n_shape=10, n_expression=5, dtype=torch.float64)
    assert (small.n_shape, small.n_expression) == (10, 5)
    assert small.shapedirs.shape == (NUM_VERTS, 3, 10) and small.exprdirs.shape == (NUM_VERTS, 3, 5)
    params = _torch(_random_params(6))
    shape, expression = params["shape"][:, :10], params["expression"][:, :5]
    out_small = small(shape=shape, expression=expression, pose=params["pose"])
    padded_shape = torch.cat([shape, torch.zeros(BATCH, 290, dtype=torch.float64)], 1)
    padded_expr = torch.cat([expression, torch.zeros(BATCH, 95, dtype=torch.float64)], 1)
    out_full = full(shape=padded_shape, expression=padded_expr, pose=params["pose"])
    torch.testing.assert_close(out_small.vertices, out_full.vertices, atol=1e-14, rtol=0)
    assert FLAME(ASSETS.model)().landmarks is None  # no embedding given


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_shape": 301}, r"n_shape must be an int in \[0, 300\] \(the file has 300\), got 301"),
        ({"n_expression": 101}, r"n_expression .* got 101"),
        ({"n_shape": -1}, r"n_shape"),
        ({"dtype": torch.float16}, r"dtype must be torch.float32 or torch.float64"),
    ],
)
def test_construction_errors(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        FLAME(ASSETS, **kwargs)


def test_inconsistent_model_data_raises() -> None:
    bad = dataclasses.replace(ASSETS.model, weights=ASSETS.model.weights[:, :4])
    with pytest.raises(ValueError, match=r"weights has shape \(50, 4\), expected \(50, 5\)"):
        FLAME(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": torch.zeros(2, 299)}, r"shape expected shape \(B, 300\), got \(2, 299\)"),
        ({"expression": torch.zeros(2, 101)}, r"expression expected shape \(B, 100\), got \(2, 101\)"),
        ({"pose": torch.zeros(15)}, r"pose expected shape \(B, 15\), got \(15,\)"),
        ({"pose": torch.zeros(2, 15), "rotation": "6d"}, r"pose expected shape \(B, 30\), got \(2, 15\)"),
        ({"translation": torch.zeros(2, 2)}, r"translation expected shape \(B, 3\)"),
        ({"shape": torch.zeros(2, 300), "pose": torch.zeros(3, 15)}, r"batch sizes differ: shape has B=2, pose has B=3"),
        ({"rotation": "quaternion"}, r"rotation must be 'axis_angle' or '6d'"),
        ({"translation": torch.zeros(2, 3, dtype=torch.long)}, r"floating-point"),
    ],
)
def test_wrong_inputs_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        FLAME(ASSETS)(**kwargs)


def test_forward_is_keyword_only_and_output_frozen() -> None:
    model = FLAME(ASSETS)
    with pytest.raises(TypeError):
        model(torch.zeros(1, 300))
    out = model()
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.vertices = out.vertices  # type: ignore[misc]


def test_buffers_move_and_stay_out_of_state_dict() -> None:
    model = FLAME(ASSETS)
    assert model.state_dict() == {}
    assert model.faces.dtype == torch.int64 and model.parents.tolist() == PARENTS
    double = model.to(torch.float64)
    assert double.v_template.dtype == torch.float64 and double.faces.dtype == torch.int64
    assert double().vertices.dtype == torch.float64
    assert FLAME(ASSETS).to(torch.bfloat16)().vertices.dtype == torch.float32  # half buffers: float32 maths


def test_load_flame_uses_files_loader(monkeypatch, tmp_path) -> None:
    calls = []
    fake = types.ModuleType("p3dmm.flame.files")
    fake.load_assets = lambda path: calls.append(path) or ASSETS  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "p3dmm.flame.files", fake)
    model = load_flame(tmp_path, n_shape=20, dtype=torch.float64, device="cpu")
    assert calls == [tmp_path] and model.n_shape == 20 and model.v_template.dtype == torch.float64


# ---------------------------------------------------------------- mixed precision, CUDA


def test_bf16_inputs_give_float32() -> None:
    params = _torch(_random_params(7), torch.float32)
    model = FLAME(ASSETS)
    reference = model(**params)
    low = {k: v.to(torch.bfloat16) for k, v in params.items()}
    out = model(**low)
    assert out.vertices.dtype == torch.float32 and out.landmarks.dtype == torch.float32
    # Same as float32 on the rounded inputs, and within bf16 input rounding of the float32 result.
    upcast = model(**{k: v.float() for k, v in low.items()})
    torch.testing.assert_close(out.vertices, upcast.vertices, atol=0, rtol=0)
    assert (out.vertices - reference.vertices).abs().max() < 2e-3  # metres
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out = model(**params)
    assert autocast_out.vertices.dtype == torch.float32
    torch.testing.assert_close(autocast_out.vertices, reference.vertices, atol=1e-7, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu() -> None:
    params = _torch(_random_params(8), torch.float32)
    model = FLAME(ASSETS)
    cpu = model(**params)
    gpu_model = FLAME(ASSETS).to("cuda")
    gpu = gpu_model(**{k: v.cuda() for k, v in params.items()})
    assert gpu.vertices.device.type == "cuda"
    for name in ("vertices", "landmarks", "joints"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), atol=1e-5, rtol=0)
    with torch.autocast("cuda", dtype=torch.float16):
        half = gpu_model(**{k: v.cuda() for k, v in params.items()})
    assert half.vertices.dtype == torch.float32
    torch.testing.assert_close(half.vertices.cpu(), cpu.vertices, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- rotations


def test_axis_angle_to_matrix_matches_scipy() -> None:
    rng = np.random.default_rng(9)
    aa = np.concatenate(
        [rng.normal(size=(20, 3)), rng.normal(scale=1e-4, size=(5, 3)), np.zeros((1, 3)), [[0.0, 0.0, math.pi]]]
    )
    ours = axis_angle_to_matrix(torch.tensor(aa)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(aa).as_matrix(), atol=1e-15)


def test_axis_angle_gradient_at_and_near_zero() -> None:
    for scale in (0.0, 1e-9, 1e-4, 1e-3, 0.5):
        aa = (torch.full((2, 3), scale, dtype=torch.float64) * torch.tensor([1.0, -2.0, 0.5])).requires_grad_()
        assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa,))
    # dR/daa at zero: the generators skew(e_i).
    jac = torch.autograd.functional.jacobian(axis_angle_to_matrix, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(jac[:, :, 2], torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64))
    aa32 = torch.zeros(4, 3, requires_grad=True)
    axis_angle_to_matrix(aa32).sum().backward()
    assert torch.isfinite(aa32.grad).all()


def test_matrix_to_axis_angle_round_trip_including_pi() -> None:
    rng = np.random.default_rng(10)
    axes = rng.normal(size=(6, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.array([0.0, 1e-8, 0.3, 2.0, math.pi - 1e-7, math.pi])
    aa = torch.tensor(axes * angles[:, None])
    mats = axis_angle_to_matrix(aa)
    back = matrix_to_axis_angle(mats)
    torch.testing.assert_close(axis_angle_to_matrix(back), mats, atol=1e-12, rtol=0)
    torch.testing.assert_close(back[:-1], aa[:-1], atol=1e-8, rtol=0)  # unique below pi
    torch.testing.assert_close(back.norm(dim=-1), aa.norm(dim=-1), atol=1e-12, rtol=0)


def test_6d_round_trip_and_convention() -> None:
    mats = axis_angle_to_matrix(torch.tensor(np.random.default_rng(11).normal(size=(8, 3))))
    six = matrix_to_rotation_6d(mats)
    torch.testing.assert_close(six[:, :3], mats[:, 0, :], atol=0, rtol=0)  # rows convention
    torch.testing.assert_close(rotation_6d_to_matrix(six), mats, atol=1e-14, rtol=0)
    identity = rotation_6d_to_matrix(torch.tensor([[1.0, 0, 0, 0, 1, 0]]))
    torch.testing.assert_close(identity[0], torch.eye(3), atol=0, rtol=0)
