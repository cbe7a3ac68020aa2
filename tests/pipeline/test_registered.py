"""The registration file: written and read only by `p3dmm.pipeline.registered`; readers get the FLAME frame
and the similarity to the scan, files of earlier versions still read, anything else is refused by name."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from p3dmm.flame.rotations import axis_angle_to_matrix, head_rotation
from p3dmm.flame.scan import ScanRecord
from p3dmm.pipeline.registered import load_registered, read_header, write_registered

RECORD = ScanRecord(scan_id="generic/head0", dataset="generic", subject="head0", expression="",
                    geometry="/data/head0.ply", extra={"frame_known": False})


def _params(scale: float = 1000.0) -> dict:
    pose = np.zeros(15)
    pose[:6] = [0.1, 0.2, 0.0, 0.0, -0.3, 0.05]
    return {"shape": np.zeros(4), "expression": np.zeros(3), "pose": pose, "translation": np.zeros(3),
            "scale": scale, "rotation": axis_angle_to_matrix(torch.tensor([0.4, -1.1, 0.2], dtype=torch.float64)).numpy(),
            "similarity_translation": np.array([12.0, -30.0, 850.0])}


@pytest.fixture
def flame_vertices() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 0.05, (50, 3))


def test_round_trip_gives_the_flame_frame_and_the_similarity_back(tmp_path, flame_vertices):
    params = _params()
    scan_vertices = params["scale"] * flame_vertices @ params["rotation"].T + params["similarity_translation"]
    path = tmp_path / "registered" / "generic__head0.npz"
    write_registered(path, RECORD, scan_vertices, accepted=False, reason="coverage 0.2 < 0.5", params=params,
                     metrics={"median_mm": 0.4})
    reg = load_registered(path)
    assert np.allclose(reg.vertices, flame_vertices, atol=1e-12)
    assert np.allclose(reg.scan_vertices, scan_vertices, atol=1e-9)
    assert reg.to_scan.scale == 1000.0 and np.allclose(reg.to_scan.rotation, params["rotation"])
    assert np.allclose(reg.to_scan.invert_points(scan_vertices), flame_vertices, atol=1e-12)
    assert np.allclose(reg.head_rotation, head_rotation(torch.tensor(params["pose"])).numpy())
    assert reg.record == RECORD and reg.scan_id == "generic/head0" and reg.metrics == {"median_mm": 0.4}
    assert not reg.accepted and reg.reason == "coverage 0.2 < 0.5"
    header = read_header(path)
    assert (header.scan_id, header.record, header.accepted) == ("generic/head0", RECORD, False)
    assert list(tmp_path.joinpath("registered").iterdir()) == [path]  # no temporary left behind


def test_a_file_of_an_earlier_version_still_reads(tmp_path, flame_vertices):
    """The keys and encodings every version wrote (what `register_one` saved before this module owned it)."""
    params = _params(scale=1.0)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, scan_id=RECORD.scan_id, accepted=True,
                        vertices=flame_vertices @ params["rotation"].T + params["similarity_translation"],
                        reason="", params=json.dumps({k: np.asarray(v).tolist() for k, v in params.items()}),
                        metrics=json.dumps({}), record=json.dumps(asdict(RECORD)))
    path = tmp_path / "old.npz"
    path.write_bytes(buffer.getvalue())
    reg = load_registered(path)
    assert reg.accepted and reg.reason == "" and reg.record == RECORD
    assert np.allclose(reg.vertices, flame_vertices, atol=1e-12)


def _npz(path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("kind", ["text", "truncated", "corrupt", "foreign", "pickled", "bad json", "bad vertices",
                                  "bad scale", "bad record"])
def test_anything_else_is_refused_in_one_line_naming_the_file(tmp_path, flame_vertices, kind):
    good = tmp_path / "good.npz"
    write_registered(good, RECORD, flame_vertices, accepted=True, reason=None, params=_params(), metrics={})
    with np.load(good) as data:
        fields = {k: data[k] for k in data.files}
    path = tmp_path / "bad.npz"
    if kind == "text":
        path.write_text("scan_id,vertices\n")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:300])
    elif kind == "corrupt":  # bytes flipped inside the compressed members: the zip directory is intact
        data = bytearray(good.read_bytes())
        data[200:260] = bytes(b ^ 0xFF for b in data[200:260])
        path.write_bytes(bytes(data))
    elif kind == "foreign":  # a synthetic ground-truth sidecar: vertices and scan_id, nothing else
        _npz(path, vertices=flame_vertices, scan_id=np.str_(RECORD.scan_id), metres_per_unit=np.float64(1.0))
    elif kind == "pickled":
        _npz(path, **{**fields, "params": np.array([{"scale": 1.0}], dtype=object)})
    elif kind == "bad json":
        _npz(path, **{**fields, "metrics": np.str_("{not json")})
    elif kind == "bad vertices":
        _npz(path, **{**fields, "vertices": flame_vertices[:, :2]})
    elif kind == "bad scale":
        _npz(path, **{**fields, "params": np.str_(json.dumps({**json.loads(str(fields["params"])), "scale": -1.0}))})
    else:
        _npz(path, **{**fields, "record": np.str_(json.dumps({"scan_id": "x", "colour": "red"}))})
    header_too = kind in ("text", "truncated", "foreign", "bad record")  # what a listing reads is checked too
    for read in (load_registered, read_header) if header_too else (load_registered,):
        with pytest.raises(ValueError, match="not a registration file") as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message


def test_a_missing_file_is_not_called_malformed(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_registered(tmp_path / "none.npz")
