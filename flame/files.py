"""Read and write the official FLAME files, safely and without chumpy or torch.

Readers go through :mod:`p3dmm.flame.pickle_reader` (a restricted unpickler: nothing foreign ever runs)
and validate everything they return, so the rest of the project can trust a :class:`FlameAssets`.
Writers reproduce the official on-disk layouts (docs/flame-files.md §1, §2, §4) with
:mod:`p3dmm.flame.pickle_writer`, so that files we synthesise load in every existing FLAME tool;
they are deterministic (same input, same bytes) and atomic (a temporary file in the same folder,
then `os.replace`), so a crash never leaves a half-written asset behind.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format
import scipy.sparse

from p3dmm.flame.assets import (
    MASK_NAMES,
    NUM_SHAPE_OFFICIAL,
    FlameAssets,
    FlameFileError,
    FlameModelData,
    LandmarkEmbedding,
    UVLayout,
)
from p3dmm.flame.atomic import atomic_write
from p3dmm.flame.pickle_reader import read_bytes, safe_load_bytes, safe_load_file
from p3dmm.flame.pickle_writer import (
    array_node,
    chumpy_node,
    csc_node,
    dumps,
    object_scalar_array_node,
    torch_tensor_node,
)

__all__ = [
    "FLAME_DIR_ENV",
    "LANDMARK_NAME",
    "MASK_FILE_NAMES",
    "MODEL_NAMES",
    "UV_NAME",
    "find_flame_files",
    "load_assets",
    "read_landmark_embedding",
    "read_masks",
    "read_model_pkl",
    "read_uv_obj",
    "resolve_flame_dir",
    "write_assets",
    "write_landmark_embedding",
    "write_masks",
    "write_model_pkl",
    "write_uv_obj",
]

MODEL_NAMES = ("generic_model.pkl", "flame2023.pkl", "flame2023_no_jaw.pkl", "flame2023_Open.pkl")
"""Model file names looked for in a FLAME folder, in priority order."""

LANDMARK_NAME = "landmark_embedding.npy"
MASK_FILE_NAMES = ("FLAME_masks.pkl", os.path.join("FLAME_masks", "FLAME_masks.pkl"))
UV_NAME = "head_template.obj"
FLAME_DIR_ENV = "P3DMM_FLAME_DIR"

NUM_JOINTS = 5
NUM_POSE_CORRECTIVES = 36
UINT32_ROOT_PARENT = 4294967295
"""What SMPL-family files store as the root's parent; every loader overwrites it with -1."""

MODEL_KEY_ORDER = (
    "f", "J_regressor", "kintree_table", "J", "bs_style", "weights", "posedirs", "v_template",
    "shapedirs", "bs_type",
)
"""Python 2 dict order of the official model files' keys (docs/flame-files.md §1.1)."""

_REQUIRED_MODEL_KEYS = ("f", "v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")

_LANDMARK_KEYS = (
    "static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords",
    "full_lmk_faces_idx", "full_lmk_bary_coords",
)

# -- small shared helpers -----------------------------------------------------------------------


def _describe(value: object) -> str:
    """Short type/shape description for error messages."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    if scipy.sparse.issparse(value):
        return f"sparse matrix of shape {value.shape}"
    return type(value).__name__


class _ShapeOnly:
    """Lets :func:`_check_shape` look at a sparse matrix's shape before it is made dense."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.ndim = len(self.shape)


def _check_shape(path: object, key: str, arr: np.ndarray | _ShapeOnly, shape: tuple[int | None, ...]) -> None:
    """`None` in `shape` is a free size; the caller checks agreement between keys afterwards."""
    ok = arr.ndim == len(shape) and all(
        want is None or got == want for got, want in zip(arr.shape, shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("?" if n is None else str(n) for n in shape) + ")"
        raise FlameFileError(f"{path}: '{key}' has shape {arr.shape}, expected {want}")


def _float_array(path: object, key: str, value: object, shape: tuple[int | None, ...]) -> np.ndarray:
    """A finite float64 C-contiguous copy of a numeric array, or a FlameFileError naming the key."""
    if scipy.sparse.issparse(value):
        _check_shape(path, key, _ShapeOnly(value.shape), shape)  # before densifying: no huge allocation
        value = value.toarray()
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise FlameFileError(f"{path}: '{key}' is a {_describe(value)}, expected a float array")
    _check_shape(path, key, value, shape)
    arr = np.ascontiguousarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise FlameFileError(f"{path}: '{key}' contains NaN or infinite values")
    return arr


def _int_array(path: object, key: str, value: object, shape: tuple[int | None, ...], *,
               low: int = 0, high: int | None = None) -> np.ndarray:
    """An int64 C-contiguous copy of an integer array with every value in [low, high)."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        raise FlameFileError(f"{path}: '{key}' is a {_describe(value)}, expected an integer array")
    _check_shape(path, key, value, shape)
    if value.size:
        lo, hi = int(value.min()), int(value.max())
        if lo < low or (high is not None and hi >= high) or hi >= 2**63:
            bound = f"[{low}, {high})" if high is not None else f">= {low}"
            raise FlameFileError(f"{path}: '{key}' has values in [{lo}, {hi}], expected {bound}")
    return np.ascontiguousarray(value, dtype=np.int64)


# -- model --------------------------------------------------------------------------------------


def _parents_from_kintree(path: object, value: object) -> np.ndarray:
    """parents = kintree_table[0] with parents[0] = -1, as every FLAME loader does."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        raise FlameFileError(f"{path}: 'kintree_table' is a {_describe(value)}, expected an integer array")
    _check_shape(path, "kintree_table", value, (2, NUM_JOINTS))
    row = [int(p) for p in value[0]]
    parents = np.array([-1, *row[1:]], dtype=np.int64)
    for joint in range(1, NUM_JOINTS):
        if not 0 <= parents[joint] < joint:
            raise FlameFileError(
                f"{path}: 'kintree_table' gives joint {joint} the parent {parents[joint]}, expected a "
                f"joint in [0, {joint})"
            )
    return parents


def _model_from_dict(path: object, raw: object, num_shape: int) -> FlameModelData:
    """Validate the unpickled dict key by key, then the agreement between keys."""
    if not isinstance(raw, dict):
        raise FlameFileError(f"{path}: holds a {_describe(raw)}, expected the dict of a FLAME model file")
    missing = [k for k in _REQUIRED_MODEL_KEYS if k not in raw]
    if missing:
        raise FlameFileError(f"{path}: not a FLAME model file, missing key(s) {', '.join(missing)}")
    v_template = _float_array(path, "v_template", raw["v_template"], (None, 3))
    num_v = v_template.shape[0]
    shapedirs = _float_array(path, "shapedirs", raw["shapedirs"], (num_v, 3, None))
    posedirs = _float_array(path, "posedirs", raw["posedirs"], (num_v, 3, NUM_POSE_CORRECTIVES))
    j_regressor = _float_array(path, "J_regressor", raw["J_regressor"], (NUM_JOINTS, num_v))
    weights = _float_array(path, "weights", raw["weights"], (num_v, NUM_JOINTS))
    faces = _int_array(path, "f", raw["f"], (None, 3), high=num_v)
    parents = _parents_from_kintree(path, raw["kintree_table"])
    if num_v == 0 or faces.shape[0] == 0:
        raise FlameFileError(f"{path}: a model needs vertices and faces, got {num_v} and {faces.shape[0]}")
    if not 0 <= num_shape <= shapedirs.shape[2]:
        raise FlameFileError(
            f"{path}: 'shapedirs' has {shapedirs.shape[2]} components, fewer than the {num_shape} identity "
            "components expected (pass num_shape=... for a non-official model)"
        )
    return FlameModelData(
        v_template=v_template, faces=faces, shapedirs=shapedirs, posedirs=posedirs,
        j_regressor=j_regressor, weights=weights, parents=parents, num_shape=num_shape,
    )


def read_model_pkl(path: str | os.PathLike, *, num_shape: int = NUM_SHAPE_OFFICIAL) -> FlameModelData:
    """Read a FLAME model pickle (2020, 2023, 2023 no-jaw, 2023 Open, re-saved variants) safely.

    Args:
        path: the `.pkl` file.
        num_shape: identity components at the front of `shapedirs` (300 in every official file).

    Raises:
        FlameFileError: missing, unreadable, unsafe or inconsistent file; the message names the path
            and the offending key.
    """
    return _model_from_dict(path, safe_load_file(path), num_shape)


def _validated_model(data: FlameModelData, where: str = "model") -> FlameModelData:
    """Writers check their input with the reader's rules, so they never write a file we refuse."""
    parents = np.asarray(data.parents)
    if parents.shape != (NUM_JOINTS,) or parents.dtype.kind not in "iu" or parents[0] != -1:
        raise FlameFileError(f"{where}: parents must be {NUM_JOINTS} integers with parents[0] = -1, got {parents!r}")
    raw = {
        "v_template": np.asarray(data.v_template), "shapedirs": np.asarray(data.shapedirs),
        "posedirs": np.asarray(data.posedirs), "J_regressor": np.asarray(data.j_regressor),
        "weights": np.asarray(data.weights), "f": np.asarray(data.faces),
        "kintree_table": np.stack([parents.astype(np.int64), np.arange(NUM_JOINTS, dtype=np.int64)]),
    }
    model = _model_from_dict(where, raw, data.num_shape)
    if model.faces.size and model.faces.max() >= 2**32:
        raise FlameFileError(f"{where}: faces do not fit uint32")
    return model


def _rest_joints(j_regressor: np.ndarray, v_template: np.ndarray) -> np.ndarray:
    """J = J_regressor @ v_template, summed without BLAS so the bytes never depend on threads."""
    return (j_regressor[:, :, None] * v_template[None, :, :]).sum(axis=1)


def write_model_pkl(path: str | os.PathLike, data: FlameModelData, *, all_arrays_as_chumpy: bool = False) -> None:
    """Write `data` in the official model layout (Python-2 protocol-2 pickle, docs/flame-files.md §1.1/§1.2).

    Args:
        path: destination `.pkl`, written atomically.
        data: the model; `num_shape` is not stored (official files have none).
        all_arrays_as_chumpy: write every float array as a `chumpy.ch.Ch` (a variant some loaders
            meet); by default only `shapedirs` is one, as in the official files.
    """
    model = _validated_model(data, str(path))

    def wrap(arr: np.ndarray) -> object:
        return chumpy_node(arr) if all_arrays_as_chumpy else array_node(arr)

    kintree = np.stack([model.parents, np.arange(NUM_JOINTS, dtype=np.int64)]).astype(np.int64)
    kintree[0, 0] = UINT32_ROOT_PARENT
    values = {
        "f": array_node(model.faces.astype(np.uint32)),
        "J_regressor": csc_node(model.j_regressor),
        "kintree_table": array_node(kintree),
        "J": wrap(_rest_joints(model.j_regressor, model.v_template)),
        "bs_style": "lbs",
        "weights": wrap(model.weights),
        "posedirs": wrap(model.posedirs),
        "v_template": wrap(model.v_template),
        "shapedirs": chumpy_node(model.shapedirs),
        "bs_type": "lrotmin",
    }
    atomic_write(path, dumps({k: values[k] for k in MODEL_KEY_ORDER}, protocol=2, py2_strings=True))


# -- landmark embedding -------------------------------------------------------------------------


def _npy_payload(path: str | os.PathLike, data: bytes) -> bytes:
    """Check the `.npy` header says "0-d object array" and return the pickle after it.

    The header is parsed by numpy's own header reader (a literal, no pickle); `np.load(allow_pickle=True)`
    would unpickle the rest without restriction, so we never call it.
    """
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise FlameFileError(f"{path}: unsupported .npy version {version}")
    except FlameFileError:
        raise
    except (ValueError, SyntaxError, EOFError) as exc:
        raise FlameFileError(f"{path}: not a readable .npy file ({exc})") from None
    if dtype != np.dtype(object) or shape != ():
        raise FlameFileError(f"{path}: holds a {dtype} array of shape {shape}, expected a pickled dict "
                             "(a 0-d object array)")
    del fortran
    return data[stream.tell():]


def _landmark_dict(path: str | os.PathLike, data: bytes) -> dict:
    """Unpickle the 0-d object array (torch tensors admitted as stand-ins) and return its dict."""
    obj = safe_load_bytes(_npy_payload(path, data), path, allow_torch=True)
    if not isinstance(obj, np.ndarray) or obj.shape != () or obj.dtype != np.dtype(object):
        raise FlameFileError(f"{path}: holds a {_describe(obj)}, expected a 0-d object array")
    content = obj[()]
    if not isinstance(content, dict):
        raise FlameFileError(f"{path}: holds a {_describe(content)}, expected a dict")
    missing = [k for k in _LANDMARK_KEYS if k not in content]
    if missing:
        hint = " (the older flame_static_embedding format is not supported)" if "lmk_face_idx" in content else ""
        raise FlameFileError(f"{path}: missing key(s) {', '.join(missing)}{hint}")
    return content


def _bary_array(path: object, key: str, value: object, shape: tuple[int | None, ...],
                dtype: np.dtype | None) -> np.ndarray:
    """Barycentric coordinates: finite floats; `dtype` None keeps the file's float32/float64."""
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise FlameFileError(f"{path}: '{key}' is a {_describe(value)}, expected a float array")
    _check_shape(path, key, value, shape)
    arr = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("=") if dtype is None else dtype)
    if not np.isfinite(arr).all():
        raise FlameFileError(f"{path}: '{key}' contains NaN or infinite values")
    return arr


def _landmarks_from_dict(path: object, raw: dict) -> LandmarkEmbedding:
    """Validate shapes and agreement; counts are free (VHAP's variant has 53 static / 70 full)."""
    static_faces = _int_array(path, "static_lmk_faces_idx", raw["static_lmk_faces_idx"], (None,))
    n_static = static_faces.shape[0]
    static_bary = _bary_array(path, "static_lmk_bary_coords", raw["static_lmk_bary_coords"], (n_static, 3),
                              np.dtype(np.float64))
    dynamic_faces = _int_array(path, "dynamic_lmk_faces_idx", raw["dynamic_lmk_faces_idx"], (None, None))
    dynamic_bary = _bary_array(path, "dynamic_lmk_bary_coords", raw["dynamic_lmk_bary_coords"],
                               (*dynamic_faces.shape, 3), None)
    full_faces = _int_array(path, "full_lmk_faces_idx", raw["full_lmk_faces_idx"], (1, None))
    full_bary = _bary_array(path, "full_lmk_bary_coords", raw["full_lmk_bary_coords"],
                            (1, full_faces.shape[1], 3), None)
    return LandmarkEmbedding(
        static_faces=static_faces, static_bary=static_bary, dynamic_faces=dynamic_faces,
        dynamic_bary=dynamic_bary, full_faces=full_faces[0].copy(), full_bary=full_bary[0].copy(),
    )


def read_landmark_embedding(path: str | os.PathLike) -> LandmarkEmbedding:
    """Read `landmark_embedding.npy` (docs/flame-files.md §1.4) without numpy's unrestricted unpickling
    and without torch: the legacy torch tensors inside are parsed by our own restricted code."""
    return _landmarks_from_dict(path, _landmark_dict(path, read_bytes(path)))


def _npy_header_object_scalar() -> bytes:
    """The `.npy` v1.0 header of a 0-d object array, padded so data starts at byte 128 as numpy does."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    total = 10 + len(header) + 1
    header += " " * ((-total) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1")


def write_landmark_embedding(path: str | os.PathLike, emb: LandmarkEmbedding) -> None:
    """Write `landmark_embedding.npy` exactly as DECA/MICA ship it (docs/flame-files.md §1.4).

    Dynamic entries become legacy torch tensors (int64 faces, float32 barycentrics), the static
    barycentrics a Fortran-ordered float64 array, the full set (1, N) int64 and (1, N, 3) float32.
    """
    checked = _landmarks_from_dict(path, {
        "static_lmk_faces_idx": np.asarray(emb.static_faces), "static_lmk_bary_coords": np.asarray(emb.static_bary),
        "dynamic_lmk_faces_idx": np.asarray(emb.dynamic_faces),
        "dynamic_lmk_bary_coords": np.asarray(emb.dynamic_bary),
        "full_lmk_faces_idx": np.asarray(emb.full_faces)[None],
        "full_lmk_bary_coords": np.asarray(emb.full_bary)[None],
    })
    content = {
        "static_lmk_faces_idx": array_node(checked.static_faces),
        "static_lmk_bary_coords": array_node(np.asfortranarray(checked.static_bary), fortran=True),
        "dynamic_lmk_faces_idx": torch_tensor_node(checked.dynamic_faces, key="0"),
        "dynamic_lmk_bary_coords": torch_tensor_node(checked.dynamic_bary.astype(np.float32), key="1"),
        "full_lmk_faces_idx": array_node(checked.full_faces[None]),
        "full_lmk_bary_coords": array_node(checked.full_bary.astype(np.float32)[None]),
    }
    pickled = dumps(object_scalar_array_node(content, py2=False), protocol=3, py2_strings=False)
    atomic_write(path, _npy_header_object_scalar() + pickled)


# -- masks --------------------------------------------------------------------------------------


def read_masks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read `FLAME_masks.pkl`: region name -> int64 vertex indices (known names first, in file order).

    Indices are checked non-negative here; :func:`load_assets` checks them against the model.
    """
    raw = safe_load_file(path)
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise FlameFileError(f"{path}: holds a {_describe(raw)}, expected a dict of region name -> indices")
    order = [k for k in MASK_NAMES if k in raw] + [k for k in raw if k not in MASK_NAMES]
    return {k: _int_array(path, k, raw[k], (None,)) for k in order}


def write_masks(path: str | os.PathLike, masks: dict[str, np.ndarray]) -> None:
    """Write `FLAME_masks.pkl` as MPI did: a Python-2 protocol-0 pickle of int64 arrays, keys in
    MASK_NAMES order (then any others in the given order)."""
    order = [k for k in MASK_NAMES if k in masks] + [k for k in masks if k not in MASK_NAMES]
    values = {k: array_node(_int_array(path, k, np.asarray(masks[k]), (None,))) for k in order}
    atomic_write(path, dumps(values, protocol=0, py2_strings=True))


# -- UV template OBJ ----------------------------------------------------------------------------


def _obj_index(path: object, lineno: int, token: str, count: int, what: str) -> int:
    """One 1-based (or negative, relative) OBJ index -> 0-based, range-checked."""
    try:
        index = int(token)
    except ValueError:
        raise FlameFileError(f"{path}:{lineno}: bad {what} index {token!r}") from None
    index = index - 1 if index > 0 else count + index
    if not 0 <= index < count:
        raise FlameFileError(f"{path}:{lineno}: {what} index {token} out of range (have {count})")
    return index


def _parse_obj(path: object, text: str) -> tuple[list, list, list, list]:
    """Collect v, vt and triangle corners; other statements (mtllib, usemtl, s, o, g, vn) are ignored."""
    verts: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[list[int]] = []
    face_uvs: list[list[int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            if parts[0] == "v":
                verts.append([float(x) for x in parts[1:4]] if len(parts) >= 4 else [])
            elif parts[0] == "vt":
                uvs.append([float(x) for x in parts[1:3]] if len(parts) >= 3 else [])
        except ValueError:
            raise FlameFileError(f"{path}:{lineno}: bad number in {parts[0]!r} line") from None
        if parts[0] in ("v", "vt") and not (verts if parts[0] == "v" else uvs)[-1]:
            raise FlameFileError(f"{path}:{lineno}: too few numbers in {parts[0]!r} line")
        if parts[0] == "f":
            if len(parts) != 4:
                raise FlameFileError(f"{path}:{lineno}: only triangles are supported, got {len(parts) - 1} corners")
            corners = [p.split("/") for p in parts[1:]]
            if any(len(c) < 2 or not c[1] for c in corners):
                raise FlameFileError(f"{path}:{lineno}: face without texture coordinates (need 'f v/vt ...')")
            faces.append([_obj_index(path, lineno, c[0], len(verts), "vertex") for c in corners])
            face_uvs.append([_obj_index(path, lineno, c[1], len(uvs), "texture") for c in corners])
    return verts, uvs, faces, face_uvs


def _first_vertex_uv(path: object, faces: np.ndarray, ft: np.ndarray, vt: np.ndarray, num_v: int) -> np.ndarray:
    """One UV per vertex: the first `vt` a face (in file order, corner order) assigns to it."""
    flat_v, flat_t = faces.reshape(-1), ft.reshape(-1)
    seen, first = np.unique(flat_v, return_index=True)
    if seen.size != num_v:
        raise FlameFileError(f"{path}: {num_v - seen.size} vertices belong to no face, so they have no UV")
    vertex_uv = np.empty((num_v, 2), dtype=np.float64)
    vertex_uv[seen] = vt[flat_t[first]]
    return vertex_uv


def read_uv_obj(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, UVLayout]:
    """Read `head_template.obj`: (verts (V, 3) float64, faces (F, 3) int64, UVLayout)."""
    text = read_bytes(path).decode("latin1")
    verts, uvs, faces, face_uvs = _parse_obj(path, text)
    if not verts or not faces:
        raise FlameFileError(f"{path}: no vertices or faces in this OBJ file")
    v = np.array(verts, dtype=np.float64)
    vt = np.array(uvs, dtype=np.float64).reshape(-1, 2)
    f = np.array(faces, dtype=np.int64)
    ft = np.array(face_uvs, dtype=np.int64)
    if not (np.isfinite(v).all() and np.isfinite(vt).all()):
        raise FlameFileError(f"{path}: NaN or infinite coordinates")
    return v, f, UVLayout(vt=vt, ft=ft, vertex_uv=_first_vertex_uv(path, f, ft, vt, v.shape[0]))


def write_uv_obj(path: str | os.PathLike, verts: np.ndarray, faces: np.ndarray, uv: UVLayout) -> None:
    """Write a `head_template.obj` like Blender's export (`mtllib template.mtl`, `usemtl material_1`,
    `s off`, `f v/vt ...` 1-based). Floats use Python's shortest round-trip repr, so reading the
    file back gives the same float64 bits."""
    v = _float_array(path, "verts", np.asarray(verts), (None, 3))
    vt = _float_array(path, "vt", np.asarray(uv.vt), (None, 2))
    f = _int_array(path, "faces", np.asarray(faces), (None, 3), high=v.shape[0])
    ft = _int_array(path, "ft", np.asarray(uv.ft), (f.shape[0], 3), high=vt.shape[0])
    lines = ["# FLAME head template (written by p3dmm)", "mtllib template.mtl", "o FLAME"]
    lines += [f"v {x!r} {y!r} {z!r}" for x, y, z in v.tolist()]
    lines += [f"vt {a!r} {b!r}" for a, b in vt.tolist()]
    lines += ["usemtl material_1", "s off"]
    lines += [f"f {a + 1}/{ta + 1} {b + 1}/{tb + 1} {c + 1}/{tc + 1}"
              for (a, b, c), (ta, tb, tc) in zip(f.tolist(), ft.tolist(), strict=True)]
    atomic_write(path, ("\n".join(lines) + "\n").encode("ascii"))


# -- folders ------------------------------------------------------------------------------------


def resolve_flame_dir(arg: str | os.PathLike | None) -> Path:
    """The FLAME folder: the argument, else $P3DMM_FLAME_DIR, else a FlameFileError saying how to give one."""
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    env = os.environ.get(FLAME_DIR_ENV, "")
    if env:
        return Path(env).expanduser()
    raise FlameFileError("no FLAME files given: pass --flame DIR or set P3DMM_FLAME_DIR (see README: Real FLAME files)")


def find_flame_files(folder: str | os.PathLike) -> dict[str, Path | None]:
    """Locate the FLAME files in a folder (or beside a given model `.pkl`).

    Returns:
        {'model', 'landmarks', 'masks', 'uv'} -> path or None; the model is the first of
        MODEL_NAMES present (or the `.pkl` given).
    """
    path = Path(folder).expanduser()
    if path.is_file():
        if path.suffix != ".pkl":
            raise FlameFileError(f"{path}: expected a FLAME folder or a model .pkl file")
        model, base = path, path.parent
    elif path.is_dir():
        model, base = next((path / n for n in MODEL_NAMES if (path / n).is_file()), None), path
    else:
        raise FlameFileError(f"{path}: no such file or directory")
    masks = next((base / n for n in MASK_FILE_NAMES if (base / n).is_file()), None)
    return {
        "model": model,
        "landmarks": base / LANDMARK_NAME if (base / LANDMARK_NAME).is_file() else None,
        "masks": masks,
        "uv": base / UV_NAME if (base / UV_NAME).is_file() else None,
    }


def _check_landmarks(path: object, emb: LandmarkEmbedding, num_faces: int) -> None:
    """Every landmark face index must be a face of the model."""
    for name in ("static_faces", "dynamic_faces", "full_faces"):
        idx = getattr(emb, name)
        if idx.size and idx.max() >= num_faces:
            raise FlameFileError(f"{path}: landmark face index {int(idx.max())} ({name}) is out of range for a "
                                 f"model with {num_faces} faces")


def _check_masks(path: object, masks: dict[str, np.ndarray], num_v: int) -> None:
    """Every mask index must be a vertex of the model."""
    for name, idx in masks.items():
        if idx.size and idx.max() >= num_v:
            raise FlameFileError(f"{path}: mask '{name}' has vertex index {int(idx.max())}, out of range for a "
                                 f"model with {num_v} vertices")


def _canonical_rotation(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate each triangle so its smallest vertex comes first (orientation kept): (faces, roll)."""
    roll = faces.argmin(axis=1)
    cols = (roll[:, None] + np.arange(3)[None, :]) % 3
    return np.take_along_axis(faces, cols, axis=1), roll


def _align_uv(path: object, obj_faces: np.ndarray, uv: UVLayout, model: FlameModelData) -> UVLayout:
    """`UVLayout.ft` must follow the model's faces. Same faces in the same order: as is; same triangles
    in another order or rotation: `ft` is permuted to match; otherwise a FlameFileError."""
    if obj_faces.shape != model.faces.shape:
        raise FlameFileError(f"{path}: {obj_faces.shape[0]} faces, but the model has {model.faces.shape[0]}")
    if np.array_equal(obj_faces, model.faces):
        return uv
    num_v = np.int64(model.num_vertices)
    obj_canon, obj_roll = _canonical_rotation(obj_faces)
    model_canon, model_roll = _canonical_rotation(model.faces)
    obj_keys = (obj_canon[:, 0] * num_v + obj_canon[:, 1]) * num_v + obj_canon[:, 2]
    model_keys = (model_canon[:, 0] * num_v + model_canon[:, 1]) * num_v + model_canon[:, 2]
    order = np.argsort(obj_keys, kind="stable")
    pos = np.clip(np.searchsorted(obj_keys[order], model_keys), 0, len(order) - 1)
    rows = order[pos]
    if not np.array_equal(obj_keys[rows], model_keys) or np.unique(rows).size != rows.size:
        raise FlameFileError(f"{path}: its faces are not the model's faces")
    # corner j of model face i is canonical corner (j - model_roll) of obj face rows[i]
    canon_corner = (np.arange(3)[None, :] - model_roll[:, None]) % 3
    obj_corner = (canon_corner + obj_roll[rows][:, None]) % 3
    ft = np.take_along_axis(uv.ft[rows], obj_corner, axis=1)
    return UVLayout(vt=uv.vt, ft=ft, vertex_uv=uv.vertex_uv)


def load_assets(path: str | os.PathLike, *, num_shape: int = NUM_SHAPE_OFFICIAL) -> FlameAssets:
    """Load a FLAME folder (or a model `.pkl` and the files beside it) and check they agree.

    The model is required; landmarks, masks and the UV template are optional (None / empty when absent).
    """
    found = find_flame_files(path)
    if found["model"] is None:
        raise FlameFileError(f"{path}: no FLAME model file found; looked for {', '.join(MODEL_NAMES)}")
    model = read_model_pkl(found["model"], num_shape=num_shape)
    landmarks = masks = uv = None
    if found["landmarks"] is not None:
        landmarks = read_landmark_embedding(found["landmarks"])
        _check_landmarks(found["landmarks"], landmarks, model.faces.shape[0])
    if found["masks"] is not None:
        masks = read_masks(found["masks"])
        _check_masks(found["masks"], masks, model.num_vertices)
    if found["uv"] is not None:
        verts, faces, uv = read_uv_obj(found["uv"])
        if verts.shape[0] != model.num_vertices:
            raise FlameFileError(f"{found['uv']}: {verts.shape[0]} vertices, but the model has {model.num_vertices}")
        uv = _align_uv(found["uv"], faces, uv, model)
    return FlameAssets(model=model, landmarks=landmarks, masks=masks or {}, uv=uv)


def write_assets(folder: str | os.PathLike, assets: FlameAssets, model_name: str = "generic_model.pkl") -> None:
    """Write a FLAME folder: the model, and the landmark embedding, masks and UV template when present.

    The UV template's vertices are the model's `v_template` and its faces the model's faces.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_model_pkl(folder / model_name, assets.model)
    if assets.landmarks is not None:
        write_landmark_embedding(folder / LANDMARK_NAME, assets.landmarks)
    if assets.masks:
        write_masks(folder / MASK_FILE_NAMES[0], assets.masks)
    if assets.uv is not None:
        write_uv_obj(folder / UV_NAME, assets.model.v_template, assets.model.faces, assets.uv)
