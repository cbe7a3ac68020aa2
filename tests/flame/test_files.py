"""Official FLAME file formats: round trips, the variants users meet, and refusal of hostile pickles."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import struct
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from p3dmm.flame import files
from p3dmm.flame.assets import (
    MASK_NAMES,
    FlameAssets,
    FlameFileError,
    FlameModelData,
    LandmarkEmbedding,
    UVLayout,
)
from p3dmm.flame.pickle_reader import load_torch_legacy_storage, safe_load_bytes
from p3dmm.flame.pickle_writer import (
    Global,
    PersistentId,
    Reduce,
    dumps,
    object_scalar_array_node,
    torch_legacy_storage_blob,
    torch_tensor_node,
)

V, F, K = 60, 100, 400


# -- fixtures -----------------------------------------------------------------------------------


def make_model(seed: int = 0) -> FlameModelData:
    """A small random model with the official structure (5 joints, 300 + 100 components)."""
    rng = np.random.default_rng(seed)
    weights = rng.random((V, 5))
    weights /= weights.sum(axis=1, keepdims=True)
    j_regressor = rng.random((5, V))
    j_regressor[j_regressor < 0.8] = 0.0
    j_regressor /= j_regressor.sum(axis=1, keepdims=True)
    faces = np.stack([rng.permutation(V)[:3] for _ in range(F)]).astype(np.int64)
    return FlameModelData(
        v_template=rng.normal(size=(V, 3)), faces=faces, shapedirs=rng.normal(size=(V, 3, K)),
        posedirs=rng.normal(size=(V, 3, 36)) * 1e-3, j_regressor=j_regressor, weights=weights,
        parents=np.array([-1, 0, 1, 1, 1], dtype=np.int64),
    )


def make_landmarks(seed: int = 1) -> LandmarkEmbedding:
    rng = np.random.default_rng(seed)

    def bary(*shape: int) -> np.ndarray:
        b = rng.random((*shape, 3))
        return b / b.sum(axis=-1, keepdims=True)

    return LandmarkEmbedding(
        static_faces=rng.integers(0, F, 51), static_bary=bary(51),
        dynamic_faces=rng.integers(0, F, (79, 17)), dynamic_bary=bary(79, 17).astype(np.float32),
        full_faces=rng.integers(0, F, 68), full_bary=bary(68).astype(np.float32),
    )


def make_masks(seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: np.sort(rng.choice(V, 1 + i, replace=False)).astype(np.int64) for i, name in enumerate(MASK_NAMES)}


def make_uv(model: FlameModelData, seed: int = 3) -> UVLayout:
    """One vt per face corner (every vertex on a 'seam'), so vertex_uv really is 'first seen'."""
    rng = np.random.default_rng(seed)
    vt = rng.random((F * 3, 2))
    ft = np.arange(F * 3, dtype=np.int64).reshape(F, 3)
    flat = model.faces.reshape(-1)
    _, first = np.unique(flat, return_index=True)
    vertex_uv = np.zeros((V, 2))
    vertex_uv[flat[first]] = vt[first]
    return UVLayout(vt=vt, ft=ft, vertex_uv=vertex_uv)


def assert_model_equal(a: FlameModelData, b: FlameModelData) -> None:
    for name in ("v_template", "faces", "shapedirs", "posedirs", "j_regressor", "weights", "parents"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and np.array_equal(x, y), name
    assert b.faces.dtype == np.int64 and b.parents.dtype == np.int64 and b.shapedirs.dtype == np.float64
    assert a.num_shape == b.num_shape


@pytest.fixture
def fake_chumpy(monkeypatch: pytest.MonkeyPatch) -> type:
    """A stand-in `chumpy.ch.Ch` so the standard pickler/unpickler can write and read Ch objects."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        pass

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch.Ch = Ch
    chumpy.ch = ch
    monkeypatch.setitem(sys.modules, "chumpy", chumpy)
    monkeypatch.setitem(sys.modules, "chumpy.ch", ch)
    return Ch


def as_ch(cls: type, arr: np.ndarray) -> object:
    obj = cls()
    obj.__dict__.update(x=arr, _dirty_vars=set(), _itr=None, _make_dense=False, _make_sparse=False,
                        _depends_on_deps={})
    return obj


def raw_dict(model: FlameModelData) -> dict:
    """The model as a plain dict of the official keys (what re-saving tools write)."""
    kintree = np.stack([model.parents, np.arange(5)]).astype(np.int64)
    kintree[0, 0] = 4294967295
    return {
        "f": model.faces.astype(np.uint32), "J_regressor": scipy.sparse.csc_matrix(model.j_regressor),
        "kintree_table": kintree, "J": model.j_regressor @ model.v_template, "bs_style": "lbs",
        "weights": model.weights, "posedirs": model.posedirs, "v_template": model.v_template,
        "shapedirs": model.shapedirs, "bs_type": "lrotmin",
    }


def global_names(data: bytes) -> set[str]:
    """Globals a pickle names (GLOBAL and STACK_GLOBAL), listed without unpickling."""
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
    return names


# -- model files --------------------------------------------------------------------------------


def test_model_round_trip_is_bit_exact_and_deterministic(tmp_path: Path) -> None:
    model = make_model()
    files.write_model_pkl(tmp_path / "a.pkl", model)
    files.write_model_pkl(tmp_path / "b.pkl", model)
    assert (tmp_path / "a.pkl").read_bytes() == (tmp_path / "b.pkl").read_bytes()
    assert_model_equal(model, files.read_model_pkl(tmp_path / "a.pkl"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_model_file_has_the_official_layout(tmp_path: Path, fake_chumpy: type) -> None:
    model = make_model()
    path = tmp_path / "generic_model.pkl"
    files.write_model_pkl(path, model)
    data = path.read_bytes()
    assert data[:2] == b"\x80\x02"
    pickletools.dis(data, out=io.StringIO())
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert "BINUNICODE" not in ops and {"SHORT_BINSTRING", "BINSTRING", "NEWOBJ"} <= ops
    assert global_names(data) == {
        "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "chumpy.ch.Ch",
        "__builtin__.set", "scipy.sparse.csc.csc_matrix",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plain = pickle.loads(data, encoding="latin1")  # our own file: the standard unpickler is fine here
    assert list(plain) == list(files.MODEL_KEY_ORDER)
    assert isinstance(plain["shapedirs"], fake_chumpy) and np.array_equal(plain["shapedirs"].x, model.shapedirs)
    assert plain["shapedirs"]._dirty_vars == set() and plain["shapedirs"]._itr is None
    assert np.array_equal(plain["J_regressor"].toarray(), model.j_regressor)
    assert plain["J_regressor"].indices.dtype == np.int32 and plain["J_regressor"].indptr.dtype == np.int32
    assert plain["f"].dtype == np.uint32 and np.array_equal(plain["f"], model.faces)
    assert plain["kintree_table"].dtype == np.int64 and plain["kintree_table"][0, 0] == 4294967295
    assert np.allclose(plain["J"], model.j_regressor @ model.v_template)
    assert (plain["bs_style"], plain["bs_type"]) == ("lbs", "lrotmin")
    for key in ("v_template", "weights", "posedirs"):
        assert isinstance(plain[key], np.ndarray) and np.array_equal(plain[key], getattr(model, key))


def test_every_float_array_as_chumpy(tmp_path: Path) -> None:
    model = make_model()
    files.write_model_pkl(tmp_path / "m.pkl", model, all_arrays_as_chumpy=True)
    data = (tmp_path / "m.pkl").read_bytes()
    newobj = sum(op.name == "NEWOBJ" for op, _, _ in pickletools.genops(data))
    assert data.count(b"chumpy.ch\nCh\n") == 1 and newobj == 6  # 5 Ch + the csc; the Ch global is memoised
    assert_model_equal(model, files.read_model_pkl(tmp_path / "m.pkl"))


def test_python3_protocol2_fortran_arrays(tmp_path: Path, fake_chumpy: type) -> None:
    """Python 3 protocol 2 writes `_codecs.encode` for bytes and `__builtin__.set` via fix_imports."""
    model = make_model()
    raw = raw_dict(model)
    for key in ("v_template", "weights", "posedirs"):
        raw[key] = np.asfortranarray(raw[key])
    raw["shapedirs"] = as_ch(fake_chumpy, np.asfortranarray(model.shapedirs))
    data = pickle.dumps(raw, protocol=2)
    assert {"_codecs.encode", "__builtin__.set", "numpy._core.multiarray._reconstruct"} <= global_names(data)
    (tmp_path / "m.pkl").write_bytes(data)
    assert_model_equal(model, files.read_model_pkl(tmp_path / "m.pkl"))


def test_python3_protocol4_chumpy_pickle(tmp_path: Path, fake_chumpy: type) -> None:
    model = make_model()
    raw = raw_dict(model)
    raw["shapedirs"] = as_ch(fake_chumpy, model.shapedirs)
    raw["v_template"] = as_ch(fake_chumpy, model.v_template)
    data = pickle.dumps(raw, protocol=4)
    assert {"chumpy.ch.Ch", "scipy.sparse._csc.csc_matrix"} <= global_names(data)
    (tmp_path / "m.pkl").write_bytes(data)
    assert_model_equal(model, files.read_model_pkl(tmp_path / "m.pkl"))


def test_dechumpied_protocol4_file(tmp_path: Path) -> None:
    model = make_model()
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(raw_dict(model), protocol=4))
    assert_model_equal(model, files.read_model_pkl(tmp_path / "m.pkl"))


def test_protocol5_open_style_file(tmp_path: Path) -> None:
    model = make_model()
    data = pickle.dumps(raw_dict(model), protocol=5)
    assert "numpy._core.numeric._frombuffer" in global_names(data)
    (tmp_path / "flame2023_Open.pkl").write_bytes(data)
    assert_model_equal(model, files.read_model_pkl(tmp_path / "flame2023_Open.pkl"))
    assert_model_equal(model, files.load_assets(tmp_path).model)


def test_dense_j_regressor_and_int32_faces_are_accepted(tmp_path: Path) -> None:
    model = make_model()
    raw = raw_dict(model)
    raw["J_regressor"] = model.j_regressor
    raw["f"] = model.faces.astype(np.int32)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(raw, protocol=4))
    assert_model_equal(model, files.read_model_pkl(tmp_path / "m.pkl"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("weights", np.full((V, 4), 0.25), "'weights' has shape (60, 4), expected (60, 5)"),
        ("posedirs", np.zeros((V, 3, 35)), "'posedirs' has shape"),
        ("v_template", np.full((V, 3), np.nan), "'v_template' contains NaN"),
        ("f", np.full((F, 3), V, dtype=np.uint32), "'f' has values in [60, 60], expected [0, 60)"),
        ("f", np.zeros((F, 3)), "'f' is a float64 array"),
        ("kintree_table", np.array([[4294967295, 0, 1, 1, 7], [0, 1, 2, 3, 4]]), "joint 4 the parent 7"),
        ("J_regressor", scipy.sparse.csc_matrix(np.ones((4, V))), "'J_regressor' has shape (4, 60)"),
        ("shapedirs", "not an array", "'shapedirs' is a str"),
    ],
)
def test_inconsistent_model_is_refused_with_a_clear_message(tmp_path: Path, key: str, value: object,
                                                             message: str) -> None:
    raw = raw_dict(make_model())
    raw[key] = value
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=4))
    with pytest.raises(FlameFileError) as info:
        files.read_model_pkl(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_missing_keys_and_too_few_components(tmp_path: Path) -> None:
    raw = raw_dict(make_model())
    del raw["weights"]
    (tmp_path / "a.pkl").write_bytes(pickle.dumps(raw, protocol=4))
    with pytest.raises(FlameFileError, match=r"missing key.*weights"):
        files.read_model_pkl(tmp_path / "a.pkl")
    files.write_model_pkl(tmp_path / "b.pkl", make_model())
    with pytest.raises(FlameFileError, match=r"400 components, fewer than the 401"):
        files.read_model_pkl(tmp_path / "b.pkl", num_shape=401)
    assert files.read_model_pkl(tmp_path / "b.pkl", num_shape=100).num_expression == 300


def test_missing_truncated_and_garbage_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "generic_model.pkl"
    with pytest.raises(FlameFileError, match="^" + re.escape(f"{missing}: no such file")):
        files.read_model_pkl(missing)
    files.write_model_pkl(tmp_path / "m.pkl", make_model())
    data = (tmp_path / "m.pkl").read_bytes()
    for i, cut in enumerate((1, 2, 100, len(data) // 2, len(data) - 1)):
        (tmp_path / f"t{i}.pkl").write_bytes(data[:cut])
        with pytest.raises(FlameFileError, match="^" + re.escape(f"{tmp_path / f't{i}.pkl'}: ")):
            files.read_model_pkl(tmp_path / f"t{i}.pkl")
    (tmp_path / "g.pkl").write_bytes(b"PK\x03\x04 this is a zip, not a pickle")
    with pytest.raises(FlameFileError, match=r"not a readable FLAME pickle"):
        files.read_model_pkl(tmp_path / "g.pkl")
    with pytest.raises(FlameFileError, match=r"is a directory"):
        files.read_model_pkl(tmp_path)


# -- refusing hostile pickles -------------------------------------------------------------------


class _Evil:
    """Pickles as `posix.system(cmd)` (what `os.system` is called on Linux)."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple:
        return (os.system, (self.cmd,))


def _hostile_pickles(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (pickle bytes, the refused global the message must name); each would create `marker`."""
    cmd = f"touch {marker}"
    shell = repr(cmd).encode()
    evil_eval = f"open({str(marker)!r}, 'w').close()".encode()
    return {
        "GLOBAL os.system": (b"cos\nsystem\n(S" + shell + b"\ntR.", "os.system"),
        "STACK_GLOBAL builtins.eval": (
            b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c" + bytes([len(evil_eval)]) + evil_eval + b"\x85R.",
            "builtins.eval",
        ),
        "INST subprocess.Popen": (b"((lp0\nS'touch'\naS'" + str(marker).encode() + b"'\naisubprocess\nPopen\n.",
                                  "subprocess.Popen"),
        "OBJ os.system": (b"(cos\nsystem\nS" + shell + b"\no.", "os.system"),
        "REDUCE posix.system": (pickle.dumps(_Evil(cmd), protocol=2), "posix.system"),
        "nested in a model dict": (pickle.dumps({"f": np.zeros((2, 3)), "shapedirs": [_Evil(cmd)]}, protocol=4),
                                   "posix.system"),
        "numpy.load": (b"cnumpy\nload\n(S'x'\ntR.", "numpy.load"),
        "copyreg._reconstructor": (b"ccopy_reg\n_reconstructor\n(cchumpy.ch\nCh\nc__builtin__\nobject\nNtR.",
                                   "copy_reg._reconstructor"),
    }


@pytest.mark.parametrize("name", list(_hostile_pickles(Path("/x"))))
def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    data, refused = _hostile_pickles(marker)[name]
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(data)
    with pytest.raises(FlameFileError) as info:
        files.read_model_pkl(path)
    message = str(info.value)
    assert message == (f"{path}: refused to unpickle global {refused} (a FLAME file never contains it; the file "
                       "may be corrupt or malicious)")
    assert "\n" not in message
    with pytest.raises(FlameFileError, match=r"refused to unpickle global"):
        files.read_masks(path)
    assert not marker.exists()


def test_persistent_ids_and_odd_global_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FlameFileError, match=r"refused a persistent id"):
        safe_load_bytes(dumps(PersistentId("x"), protocol=2, py2_strings=True), "p.pkl")
    with pytest.raises(FlameFileError) as info:
        safe_load_bytes(b"\x80\x04\x8c\x03a\nb\x8c\x01c\x93.", "p.pkl")
    assert "\n" not in str(info.value) and "a\\nb.c" in str(info.value)
    with pytest.raises(FlameFileError, match=r"refused _codecs.encode with encoding 'rot13'"):
        safe_load_bytes(b"c_codecs\nencode\n(S'abc'\nS'rot13'\ntR.", "p.pkl")
    with pytest.raises(FlameFileError, match=r"torch._utils._rebuild_tensor_v2"):
        safe_load_bytes(b"ctorch._utils\n_rebuild_tensor_v2\n.", "p.pkl")  # torch only in landmark files


# -- landmark embedding -------------------------------------------------------------------------


def test_landmark_round_trip_and_layout(tmp_path: Path) -> None:
    emb = make_landmarks()
    path = tmp_path / "landmark_embedding.npy"
    files.write_landmark_embedding(path, emb)
    files.write_landmark_embedding(tmp_path / "again.npy", emb)
    data = path.read_bytes()
    assert data == (tmp_path / "again.npy").read_bytes()
    assert data[:10] == b"\x93NUMPY\x01\x00\x76\x00" and data[127:128] == b"\n" and data[128:130] == b"\x80\x03"
    assert global_names(data[128:]) == {
        "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype", "torch._utils._rebuild_tensor_v2",
        "torch.storage._load_from_bytes", "collections.OrderedDict",
    }
    back = files.read_landmark_embedding(path)
    for name in ("static_faces", "static_bary", "dynamic_faces", "dynamic_bary", "full_faces", "full_bary"):
        want, got = getattr(emb, name), getattr(back, name)
        assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want), name
        assert got.flags.writeable and got.flags.c_contiguous, name


def test_landmark_file_loads_in_numpy_and_torch(tmp_path: Path) -> None:
    """Our own file, so the unrestricted np.load is fine here: it is what DECA and pixel3dmm call."""
    torch = pytest.importorskip("torch")
    emb = make_landmarks()
    path = tmp_path / "landmark_embedding.npy"
    files.write_landmark_embedding(path, emb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        content = np.load(path, allow_pickle=True, encoding="latin1")[()]
    assert isinstance(content["dynamic_lmk_faces_idx"], torch.Tensor)
    assert content["dynamic_lmk_faces_idx"].dtype == torch.int64
    assert np.array_equal(content["dynamic_lmk_faces_idx"].numpy(), emb.dynamic_faces)
    assert np.array_equal(content["dynamic_lmk_bary_coords"].numpy(), emb.dynamic_bary)
    static_bary = content["static_lmk_bary_coords"]
    assert static_bary.flags.f_contiguous and not static_bary.flags.c_contiguous
    assert content["full_lmk_faces_idx"].shape == (1, 68) and content["full_lmk_bary_coords"].dtype == np.float32


def test_legacy_storage_blob_matches_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    values = np.arange(12, dtype=np.int64).reshape(3, 4)
    blob = torch_legacy_storage_blob(values, key="7")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated"
        storage = torch.load(io.BytesIO(blob), weights_only=True)
        assert list(storage) == list(range(12))
    theirs = io.BytesIO()
    torch.save(torch.tensor([1.5, 2.5], dtype=torch.float32).untyped_storage(), theirs,
               _use_new_zipfile_serialization=False)

    def header_ops(data: bytes) -> list:
        """Opcodes of the magic, protocol and sys_info pickles, memo bookkeeping left out."""
        stream, ops = io.BytesIO(data), []
        for _ in range(3):
            ops += [(op.name, arg) for op, arg, _ in pickletools.genops(stream) if "PUT" not in op.name]
        return ops

    assert header_ops(theirs.getvalue()) == header_ops(torch_legacy_storage_blob(np.zeros(2, np.float32)))


def _landmark_file_with(tmp_path: Path, dynamic_faces: object) -> Path:
    emb = make_landmarks()
    content = {
        "static_lmk_faces_idx": emb.static_faces, "static_lmk_bary_coords": emb.static_bary,
        "dynamic_lmk_faces_idx": dynamic_faces, "dynamic_lmk_bary_coords": torch_tensor_node(emb.dynamic_bary),
        "full_lmk_faces_idx": emb.full_faces[None], "full_lmk_bary_coords": emb.full_bary[None],
    }
    path = tmp_path / "landmark_embedding.npy"
    pickled = dumps(object_scalar_array_node(content, py2=False), protocol=3, py2_strings=False)
    path.write_bytes(files._npy_header_object_scalar() + pickled)
    return path


def _tensor_from_blob(blob: bytes) -> Reduce:
    storage = Reduce(Global("torch.storage", "_load_from_bytes"), (blob,))
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                  (storage, 0, (79, 17), (17, 1), False, Reduce(Global("collections", "OrderedDict"), ())))


def _pickle_ends(blob: bytes) -> list[int]:
    """Offsets just after each of the five pickles of a legacy torch blob."""
    stream, ends = io.BytesIO(blob), []
    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        ends.append(stream.tell())
    return ends


def test_malicious_torch_blob_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    good = torch_legacy_storage_blob(np.zeros((79, 17), np.int64))
    ends = _pickle_ends(good)
    head = good[:ends[2]]  # magic, protocol, sys_info
    evil_object = pickle.dumps(_Evil(f"touch {marker}"), protocol=2)
    path = _landmark_file_with(tmp_path, _tensor_from_blob(head + evil_object))
    with pytest.raises(FlameFileError) as info:
        files.read_landmark_embedding(path)
    assert str(info.value).startswith(f"{path}: refused to unpickle global posix.system")
    assert not marker.exists()

    evil_header = pickle.dumps(_Evil(f"touch {marker}"), protocol=2) + good[ends[0]:]
    path = _landmark_file_with(tmp_path, _tensor_from_blob(evil_header))
    with pytest.raises(FlameFileError, match=r"refused to unpickle global posix.system"):
        files.read_landmark_embedding(path)

    view_pid = dumps(PersistentId(("storage", Global("torch", "LongStorage"), "0", "cpu", 1343, (0, 1))),
                     protocol=2, py2_strings=False)
    path = _landmark_file_with(tmp_path, _tensor_from_blob(head + view_pid + good[ends[3]:]))
    with pytest.raises(FlameFileError, match=r"refused a torch storage persistent id"):
        files.read_landmark_embedding(path)

    cuda_tensor = dumps(PersistentId(("storage", Global("torch.cuda", "LongStorage"), "0", "cpu", 1343, None)),
                        protocol=2, py2_strings=False)
    path = _landmark_file_with(tmp_path, _tensor_from_blob(head + cuda_tensor))
    with pytest.raises(FlameFileError, match=r"torch.cuda.LongStorage"):
        files.read_landmark_embedding(path)
    assert not marker.exists()


def test_broken_torch_blobs_and_geometry(tmp_path: Path) -> None:
    good = torch_legacy_storage_blob(np.zeros((79, 17), np.int64))
    assert load_torch_legacy_storage(good, "x").shape == (79 * 17,)
    for bad, message in [
        (good[:-8], "truncated or has trailing"), (good + b"\0", "truncated or has trailing"),
        (good[:100], "unreadable torch storage"), (b"\x80\x02K\x01." + good[_pickle_ends(good)[0]:], "wrong magic"),
    ]:
        with pytest.raises(FlameFileError, match=message):
            load_torch_legacy_storage(bad, "x")
    too_big = Reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                     (Reduce(Global("torch.storage", "_load_from_bytes"), (good,)), 5, (79, 17), (17, 1), False,
                      Reduce(Global("collections", "OrderedDict"), ())))
    with pytest.raises(FlameFileError, match=r"reaches past its storage"):
        files.read_landmark_embedding(_landmark_file_with(tmp_path, too_big))


def test_landmark_file_must_be_a_pickled_dict(tmp_path: Path) -> None:
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(FlameFileError, match=r"expected a pickled dict"):
        files.read_landmark_embedding(path)
    path.write_bytes(b"not an npy file")
    with pytest.raises(FlameFileError, match="^" + re.escape(f"{path}: not a readable .npy")):
        files.read_landmark_embedding(path)
    path.write_bytes(files._npy_header_object_scalar() + b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(FlameFileError, match=r"refused to unpickle global os.system"):
        files.read_landmark_embedding(path)


# -- masks and UV template ----------------------------------------------------------------------


def test_masks_round_trip_protocol0(tmp_path: Path) -> None:
    masks = make_masks()
    masks["lips"] = np.array([5, 3, 3, 59, 0], dtype=np.int64)  # unsorted with duplicates, as the real one
    path = tmp_path / "FLAME_masks.pkl"
    files.write_masks(path, dict(reversed(list(masks.items()))))
    data = path.read_bytes()
    assert data.startswith(b"(dp0\nS'eye_region'\n") and b"\x80" not in data[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        plain = pickle.loads(data, encoding="latin1")
    assert list(plain) == list(MASK_NAMES)
    back = files.read_masks(path)
    assert list(back) == list(MASK_NAMES)
    for name in MASK_NAMES:
        assert plain[name].dtype == np.int64 and np.array_equal(plain[name], masks[name])
        assert back[name].dtype == np.int64 and np.array_equal(back[name], masks[name])


def test_protocol0_strings_survive_every_byte(tmp_path: Path) -> None:
    values = np.frombuffer(bytes(range(256)) * 2 + b"'\"\\'" * 2, dtype=np.int64) & np.int64(2**63 - 1)
    files.write_masks(tmp_path / "m.pkl", {"all_bytes": values})
    assert np.array_equal(files.read_masks(tmp_path / "m.pkl")["all_bytes"], values)
    for text in (b"it's", b'say "hi"', b"both ' and \"", b"\\\n\t\r\x00\xff"):
        data = dumps(text, protocol=0, py2_strings=True)
        assert pickle.loads(data, encoding="bytes") == text


def test_uv_obj_round_trip(tmp_path: Path) -> None:
    model = make_model()
    uv = make_uv(model)
    path = tmp_path / "head_template.obj"
    files.write_uv_obj(path, model.v_template, model.faces, uv)
    text = path.read_text()
    assert "mtllib template.mtl\n" in text and "usemtl material_1\ns off\n" in text
    assert f"\nf {model.faces[0, 0] + 1}/1 {model.faces[0, 1] + 1}/2 " in text
    verts, faces, back = files.read_uv_obj(path)
    assert np.array_equal(verts, model.v_template) and np.array_equal(faces, model.faces)
    assert np.array_equal(back.vt, uv.vt) and np.array_equal(back.ft, uv.ft)
    assert np.array_equal(back.vertex_uv, uv.vertex_uv)
    (tmp_path / "b.obj").write_text(text.replace("/1 ", " ", 1))
    with pytest.raises(FlameFileError, match=r"face without texture coordinates"):
        files.read_uv_obj(tmp_path / "b.obj")


# -- folders ------------------------------------------------------------------------------------


def _assets() -> FlameAssets:
    model = make_model()
    return FlameAssets(model=model, landmarks=make_landmarks(), masks=make_masks(), uv=make_uv(model))


def test_write_assets_then_load_assets(tmp_path: Path) -> None:
    assets = _assets()
    files.write_assets(tmp_path / "flame", assets)
    names = sorted(p.name for p in (tmp_path / "flame").iterdir())
    assert names == ["FLAME_masks.pkl", "generic_model.pkl", "head_template.obj", "landmark_embedding.npy"]
    for source in (tmp_path / "flame", tmp_path / "flame" / "generic_model.pkl"):
        loaded = files.load_assets(source)
        assert_model_equal(assets.model, loaded.model)
        assert np.array_equal(loaded.landmarks.dynamic_faces, assets.landmarks.dynamic_faces)
        assert list(loaded.masks) == list(MASK_NAMES)
        assert np.array_equal(loaded.uv.ft, assets.uv.ft) and np.array_equal(loaded.uv.vertex_uv, assets.uv.vertex_uv)


def test_find_flame_files_priorities(tmp_path: Path) -> None:
    model = make_model()
    files.write_model_pkl(tmp_path / "flame2023_no_jaw.pkl", model)
    (tmp_path / "FLAME_masks").mkdir()
    files.write_masks(tmp_path / "FLAME_masks" / "FLAME_masks.pkl", make_masks())
    found = files.find_flame_files(tmp_path)
    assert found == {"model": tmp_path / "flame2023_no_jaw.pkl", "landmarks": None,
                     "masks": tmp_path / "FLAME_masks" / "FLAME_masks.pkl", "uv": None}
    files.write_model_pkl(tmp_path / "flame2023.pkl", model)
    assert files.find_flame_files(tmp_path)["model"] == tmp_path / "flame2023.pkl"
    loaded = files.load_assets(tmp_path)
    assert loaded.landmarks is None and loaded.uv is None and len(loaded.masks) == 14


def test_load_assets_errors(tmp_path: Path) -> None:
    with pytest.raises(FlameFileError, match=r"no FLAME model file found; looked for generic_model.pkl, "
                                             r"flame2023.pkl, flame2023_no_jaw.pkl, flame2023_Open.pkl"):
        files.load_assets(tmp_path)
    with pytest.raises(FlameFileError, match=r"no such file or directory"):
        files.load_assets(tmp_path / "missing")
    assets = _assets()
    files.write_assets(tmp_path, assets)
    masks = dict(assets.masks, neck=np.array([0, V]))
    files.write_masks(tmp_path / "FLAME_masks.pkl", masks)
    with pytest.raises(FlameFileError, match=r"mask 'neck' has vertex index 60, out of range"):
        files.load_assets(tmp_path)
    files.write_masks(tmp_path / "FLAME_masks.pkl", assets.masks)
    lmk = assets.landmarks
    files.write_landmark_embedding(tmp_path / files.LANDMARK_NAME,
                                   LandmarkEmbedding(**{**lmk.__dict__, "full_faces": np.full(68, F)}))
    with pytest.raises(FlameFileError, match=r"landmark face index 100 .full_faces. is out of range"):
        files.load_assets(tmp_path)


def test_uv_faces_in_another_order_are_aligned_to_the_model(tmp_path: Path) -> None:
    assets = _assets()
    files.write_assets(tmp_path, assets)
    rng = np.random.default_rng(5)
    perm = rng.permutation(F)
    roll = rng.integers(0, 3, F)
    cols = (roll[:, None] + np.arange(3)) % 3
    faces = np.take_along_axis(assets.model.faces[perm], cols, axis=1)
    ft = np.take_along_axis(assets.uv.ft[perm], cols, axis=1)
    files.write_uv_obj(tmp_path / files.UV_NAME, assets.model.v_template, faces,
                       UVLayout(vt=assets.uv.vt, ft=ft, vertex_uv=assets.uv.vertex_uv))
    assert np.array_equal(files.load_assets(tmp_path).uv.ft, assets.uv.ft)
    faces[0] = faces[0, ::-1]  # flipped triangle: not the model's face any more
    files.write_uv_obj(tmp_path / files.UV_NAME, assets.model.v_template, faces,
                       UVLayout(vt=assets.uv.vt, ft=ft, vertex_uv=assets.uv.vertex_uv))
    with pytest.raises(FlameFileError, match=r"faces are not the model's faces"):
        files.load_assets(tmp_path)


def test_resolve_flame_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("P3DMM_FLAME_DIR", str(tmp_path / "env"))
    assert files.resolve_flame_dir(tmp_path / "arg") == tmp_path / "arg"
    assert files.resolve_flame_dir(None) == tmp_path / "env"
    monkeypatch.delenv("P3DMM_FLAME_DIR")
    with pytest.raises(FlameFileError) as info:
        files.resolve_flame_dir(None)
    assert str(info.value) == ("no FLAME files given: pass --flame DIR or set P3DMM_FLAME_DIR "
                               "(see README: Real FLAME files)")


def test_writer_refuses_bad_models(tmp_path: Path) -> None:
    model = make_model()
    bad = FlameModelData(**{**model.__dict__, "parents": np.array([0, 0, 1, 1, 1])})
    with pytest.raises(FlameFileError, match=r"parents"):
        files.write_model_pkl(tmp_path / "m.pkl", bad)
    bad = FlameModelData(**{**model.__dict__, "weights": model.weights[:, :4]})
    with pytest.raises(FlameFileError, match=r"'weights' has shape"):
        files.write_model_pkl(tmp_path / "m.pkl", bad)
    assert not any(tmp_path.iterdir())


def test_large_memo_and_ints_disassemble() -> None:
    """More than 256 memoised objects (LONG_BINPUT) and every int width stay valid pickles."""
    values = [Global("numpy", f"n{i}") for i in range(300)]
    data = dumps([values, 0, 255, 256, 65535, 65536, -1, 2**31, -(2**31) - 1, 2**70], protocol=2, py2_strings=True)
    pickletools.dis(data, out=io.StringIO())
    ints = [arg for op, arg, _ in pickletools.genops(data) if "INT" in op.name or op.name == "LONG1"]
    assert ints[-9:] == [0, 255, 256, 65535, 65536, -1, 2**31, -(2**31) - 1, 2**70]
    long_puts = [arg for op, arg, _ in pickletools.genops(data) if op.name == "LONG_BINPUT"]
    assert long_puts and long_puts[0] == 256
    assert struct.pack("<I", 256) in data


def _array(dtype_args: tuple, dtype_state: tuple, shape: tuple, data: bytes) -> Reduce:
    dtype = Reduce(Global("numpy", "dtype"), dtype_args, state=dtype_state)
    return Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "ndarray"), (0,), b"b"),
                  state=(1, shape, dtype, False, data))


@pytest.mark.parametrize(
    ("node", "message"),
    [
        # numpy's own dtype.__setstate__ would accept an object field here and the read would dereference
        # the raw bytes as a pointer (a segfault at best); we refuse the descriptor or the state instead.
        (_array(("V8", 0, 1), (3, "|", None, ("a",), {"a": (None, 0)}, 8, 1, 0), (1,), b"A" * 8),
         "refused numpy dtype 'V8'"),
        (_array(("f8", 0, 0), (3, "<", None, ("a",), {"a": (None, 0)}, 8, 1, 0), (1,), b"A" * 8),
         "refused numpy dtype state"),
        (_array(("f8", 0, 1), (3, "<", None, None, None, -1, -1, 0), (2,), b"A" * 8), "wrong amount of data"),
        (_array(("f8", 0, 1), (3, "<", None, None, None, -1, -1, 0), (-1,), b""), "bad shape"),
        (_array(("O8", 0, 1), (3, "|", None, None, None, -1, -1, 63), (1,), b"A" * 8), "element list"),
        (Reduce(Global("numpy", "ndarray"), ((1,),)), "refused numpy.ndarray(...) called directly"),
        (Reduce(Global("numpy.core.multiarray", "_reconstruct"), (Global("numpy", "dtype"), (0,), b"b")),
         "refused _reconstruct"),
    ],
)
def test_crafted_numpy_states_are_refused(tmp_path: Path, node: Reduce, message: str) -> None:
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(dumps({"f": node}, protocol=2, py2_strings=True))
    with pytest.raises(FlameFileError, match=re.escape(message)) as info:
        files.read_model_pkl(path)
    assert str(info.value).startswith(f"{path}: ")


def test_shared_and_cyclic_structures(tmp_path: Path) -> None:
    """A DAG of shared lists is walked once per object; a cycle or absurd depth is refused."""
    shared: list = []
    for _ in range(40):
        shared = [shared, shared]
    start = time.perf_counter()
    assert isinstance(safe_load_bytes(pickle.dumps(shared, protocol=4), "dag.pkl"), list)
    assert time.perf_counter() - start < 1.0
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(FlameFileError, match=r"nested too deeply \(or cyclic\)"):
        safe_load_bytes(pickle.dumps(cyclic, protocol=4), "cyc.pkl")
    deep: list = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(FlameFileError, match="nested too deeply"):
        safe_load_bytes(pickle.dumps(deep, protocol=4), "deep.pkl")
