"""A restricted unpickler for the official FLAME files: nothing foreign ever runs.

`pickle.load` on a downloaded file runs whatever the file names (`os.system`, `eval`, ...). The
official FLAME files name only a handful of globals (numpy arrays and dtypes, chumpy's `Ch`, old
scipy's `csc_matrix`, `set`, and for `landmark_embedding.npy` legacy torch tensors). This module
admits exactly those (docs/flame-files.md §3), each mapped to a *local* object: chumpy, torch and the
deprecated numpy/scipy modules are never imported. Every other global, from any opcode route (GLOBAL,
STACK_GLOBAL, INST, OBJ, EXT all go through `find_class`), and every top-level persistent id is refused
with a :class:`FlameFileError` before anything is called.

numpy's own objects are not handed to the pickle either: `numpy.dtype.__setstate__` accepts any
fields (a crafted state turns raw bytes into object pointers and crashes the process), and
`np.dtype('f8', copy=False)` would let BUILD mutate numpy's global float64. So `numpy.dtype`,
`numpy.ndarray` and `_reconstruct` are stand-ins too: a dtype is admitted only as a plain numeric or
object descriptor with a plain state, and arrays are rebuilt by `np.frombuffer` from checked sizes.

Torch tensors inside `landmark_embedding.npy` carry a whole pre-zip `torch.save` blob; the real
`torch.storage._load_from_bytes` would `torch.load(weights_only=False)` it, i.e. run anything. Here
the blob is parsed by :func:`load_torch_legacy_storage` with its own, even stricter unpickler.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
import struct
from collections.abc import Callable

import numpy as np
import scipy.sparse

from p3dmm.flame.assets import FlameFileError
from p3dmm.flame.pickle_writer import TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL

__all__ = [
    "RestrictedUnpickler",
    "load_torch_legacy_storage",
    "read_bytes",
    "refusal_message",
    "safe_load_bytes",
    "safe_load_file",
]

_SIMPLE_DESCR = re.compile(r"[<>|=]?(?:b1|[iu][1248]|f[248]|c8|c16|O[48]?)")
"""The only dtype descriptors a FLAME file holds: bool, integers, floats, complex, and object."""

_MAX_ELEMENTS = 2**34
"""Refuse absurd array sizes before any allocation (the largest FLAME array has 6e6 elements)."""

_MAX_DEPTH = 64
"""Nesting limit when replacing stand-ins; FLAME files nest 4 deep."""

_PICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
    UnicodeDecodeError, OverflowError, struct.error, MemoryError, RecursionError,
)
"""What a truncated or garbled pickle raises from inside the unpickler or numpy."""

_TORCH_STORAGE_DTYPES = {
    "LongStorage": np.dtype("<i8"),
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "IntStorage": np.dtype("<i4"),
}


def _one_line(text: str, limit: int = 200) -> str:
    """Names from a hostile file may hold newlines or be huge; keep messages one readable line."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def refusal_message(path: str | os.PathLike, module: str, name: str) -> str:
    """The one-line message for a refused global (tests and callers match on it)."""
    return (
        f"{path}: refused to unpickle global {_one_line(str(module))}.{_one_line(str(name))} "
        "(a FLAME file never contains it; the file may be corrupt or malicious)"
    )


# -- stand-ins ------------------------------------------------------------------------------------


class _ContentError(Exception):
    """Raised by stand-ins on content no FLAME file has; turned into a FlameFileError with the path."""


class _DtypeStandIn:
    """`numpy.dtype(descr, align, copy)` + BUILD: only plain descriptors and a plain state pass."""

    __slots__ = ("dtype",)

    def __init__(self, descr: object = None, align: object = False, copy: object = True) -> None:
        del align, copy
        if not isinstance(descr, str) or not _SIMPLE_DESCR.fullmatch(descr):
            raise _ContentError(f"refused numpy dtype {_one_line(repr(descr), 80)} (FLAME files hold only "
                                "plain numeric and object arrays)")
        self.dtype = np.dtype(descr)

    def __setstate__(self, state: object) -> None:
        """(version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])."""
        plain = (
            isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=") and state[2] is None and state[3] is None and state[4] is None
        )
        if not plain:
            raise _ContentError(f"refused numpy dtype state {_one_line(repr(state), 80)} (FLAME files hold only "
                                "plain numeric and object arrays)")
        if state[1] in ("<", ">") and self.dtype.itemsize > 1 and not self.dtype.hasobject:
            self.dtype = self.dtype.newbyteorder(state[1])


def _array_from_state(state: object) -> np.ndarray:
    """Rebuild an ndarray from numpy's pickled state `(version, shape, dtype, is_fortran, data)`.

    Numeric data must be exactly `size * itemsize` bytes (a Python-2 `str` arrives as latin1 text);
    object arrays carry a list of already-unpickled elements.
    """
    if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
        state = state[1:]
    if not (isinstance(state, tuple) and len(state) == 4):
        raise _ContentError("an ndarray with an unknown pickled state")
    shape, dtype, fortran, data = state
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and 0 <= n <= _MAX_ELEMENTS for n in shape):
        raise _ContentError(f"an ndarray with a bad shape {_one_line(repr(shape), 80)}")
    size = math.prod(shape)
    if not isinstance(dtype, _DtypeStandIn) or not isinstance(fortran, bool | int) or size > _MAX_ELEMENTS:
        raise _ContentError("an ndarray with a bad dtype, order or size")
    order = "F" if fortran else "C"
    if dtype.dtype.hasobject:
        if not isinstance(data, list) or len(data) != size:
            raise _ContentError("an object ndarray whose element list does not match its shape")
        out = np.empty(size, dtype=object)
        for i, item in enumerate(data):
            out[i] = item
        return out.reshape(shape, order=order)
    if isinstance(data, str):
        data = data.encode("latin1")
    if not isinstance(data, bytes | bytearray) or len(data) != size * dtype.dtype.itemsize:
        raise _ContentError(f"an ndarray of shape {shape} and dtype {dtype.dtype} with the wrong amount of data")
    return np.frombuffer(data, dtype=dtype.dtype).reshape(shape, order=order).copy(order="K")


class _ArrayStandIn:
    """`numpy.ndarray` as `_reconstruct` creates it; BUILD fills `array` through :func:`_array_from_state`."""

    __slots__ = ("array",)

    def __init__(self, *args: object) -> None:
        if args:
            raise _ContentError("refused numpy.ndarray(...) called directly (FLAME files use _reconstruct)")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        self.array = _array_from_state(state)


def _reconstruct(subtype: object, shape: object = (0,), typecode: object = b"b") -> _ArrayStandIn:
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), 'b')`: an empty array that BUILD will fill."""
    del shape, typecode
    if subtype is not _ArrayStandIn:
        raise _ContentError("refused _reconstruct of anything but numpy.ndarray")
    return _ArrayStandIn()


class _ChStandIn:
    """Receives a pickled `chumpy.ch.Ch`; its BUILD state's `x` becomes a float64 array afterwards."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


class _CscStandIn:
    """Receives a pickled `csc_matrix` (any scipy era) without importing the deprecated module."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


class _TorchStorageType:
    """Stands for `torch.LongStorage` & co. inside a storage blob: only its element dtype matters."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def __call__(self, *args: object) -> None:
        raise TypeError(f"torch.{self.name} cannot be called in a FLAME file")


class _StorageRef:
    """A storage persistent id seen in a blob; filled from the raw data that follows the pickles."""

    __slots__ = ("dtype", "key", "numel")

    def __init__(self, dtype: np.dtype, key: str, numel: int) -> None:
        self.dtype = dtype
        self.key = key
        self.numel = numel


def _frombuffer(buf: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """`numpy.(_)core.numeric._frombuffer` (protocol-5 arrays), copying into a fresh array."""
    if not isinstance(buf, bytes | bytearray):
        raise _ContentError(f"array data is {type(buf).__name__}, not bytes")
    if not isinstance(dtype, _DtypeStandIn) or dtype.dtype.hasobject:
        raise _ContentError("an array from a buffer with a bad dtype")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and 0 <= n <= _MAX_ELEMENTS for n in shape):
        raise _ContentError(f"an array from a buffer with a bad shape {_one_line(repr(shape), 80)}")
    if order not in ("C", "F") or len(buf) != math.prod(shape) * dtype.dtype.itemsize:
        raise _ContentError("an array from a buffer with a bad order or the wrong amount of data")
    return np.frombuffer(bytes(buf), dtype=dtype.dtype).reshape(shape, order=order).copy(order="K")


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    """`_codecs.encode`, which Python 3 protocol <= 2 uses for bytes; only latin1 text is admitted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _ContentError(f"refused _codecs.encode with encoding {_one_line(repr(encoding), 40)} (only latin1 "
                            "occurs in FLAME files)")
    return text.encode("latin1")


def _make_load_from_bytes(path: str) -> Callable[[object], np.ndarray]:
    """Stand-in for `torch.storage._load_from_bytes`: parse the blob ourselves, return a 1-D array."""

    def load_from_bytes(blob: object) -> np.ndarray:
        if not isinstance(blob, bytes | bytearray):
            raise FlameFileError(f"{path}: torch storage payload is {type(blob).__name__}, not bytes")
        return load_torch_legacy_storage(bytes(blob), path)

    return load_from_bytes


def _make_rebuild_tensor(path: str) -> Callable[..., np.ndarray]:
    """Stand-in for `torch._utils._rebuild_tensor_v2`: a strided view of the storage, copied."""

    def rebuild_tensor(storage: object, offset: object, size: object, stride: object,
                       requires_grad: object = False, hooks: object = None, metadata: object = None
                       ) -> np.ndarray:
        del requires_grad, hooks, metadata
        if not isinstance(storage, np.ndarray) or storage.ndim != 1:
            raise FlameFileError(f"{path}: a torch tensor without a parsed storage")
        ints_ok = all(isinstance(v, tuple) and all(isinstance(n, int) and n >= 0 for n in v)
                      for v in (size, stride))
        if (not ints_ok or len(size) != len(stride) or not isinstance(offset, int) or offset < 0
                or math.prod(size) > _MAX_ELEMENTS):
            raise FlameFileError(f"{path}: bad torch tensor geometry {_one_line(repr((offset, size, stride)))}")
        if 0 in size:
            return np.zeros(size, dtype=storage.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.size:
            raise FlameFileError(f"{path}: torch tensor reaches past its storage ({last} >= {storage.size})")
        item = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
        )
        return np.array(view, order="C")  # a writable copy, never the read-only view

    return rebuild_tensor


# -- the unpicklers -----------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of the official FLAME files (docs/flame-files.md §3).

    Args:
        file: binary stream.
        path: shown in every error message.
        allow_torch: also admit the legacy torch tensor globals (only `landmark_embedding.npy` has them).
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, path: str | os.PathLike, *,
                 allow_torch: bool = False) -> None:
        super().__init__(file, encoding="latin1")
        self._path = str(path)
        self._allowed = self._allow_list(allow_torch)

    def _allow_list(self, allow_torch: bool) -> dict[tuple[str, str], object]:
        """(module, name) -> the local object used in its place."""
        allowed: dict[tuple[str, str], object] = {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): _ArrayStandIn,
            ("numpy", "dtype"): _DtypeStandIn,
            ("numpy.core.numeric", "_frombuffer"): _frombuffer,
            ("numpy._core.numeric", "_frombuffer"): _frombuffer,
            ("chumpy.ch", "Ch"): _ChStandIn,
            ("__builtin__", "set"): set,
            ("builtins", "set"): set,
            ("scipy.sparse.csc", "csc_matrix"): _CscStandIn,
            ("scipy.sparse._csc", "csc_matrix"): _CscStandIn,
            ("scipy.sparse", "csc_matrix"): _CscStandIn,
            ("_codecs", "encode"): _encode,
        }
        if allow_torch:
            allowed[("torch._utils", "_rebuild_tensor_v2")] = _make_rebuild_tensor(self._path)
            allowed[("torch.storage", "_load_from_bytes")] = _make_load_from_bytes(self._path)
            allowed[("collections", "OrderedDict")] = collections.OrderedDict
        return allowed

    def find_class(self, module: str, name: str) -> object:
        """Every global of every opcode comes here; anything not on the list is refused."""
        found = self._allowed.get((module, name))
        if found is None:
            raise FlameFileError(refusal_message(self._path, module, name))
        return found

    def persistent_load(self, pid: object) -> object:
        """FLAME pickles never use persistent ids outside a torch storage blob."""
        raise FlameFileError(
            f"{self._path}: refused a persistent id {_one_line(repr(pid), 80)} (a FLAME file never "
            "contains one; the file may be corrupt or malicious)"
        )


class _PlainUnpickler(RestrictedUnpickler):
    """The header pickles of a torch blob hold only numbers, strings, lists and dicts."""

    def _allow_list(self, allow_torch: bool) -> dict[tuple[str, str], object]:
        return {}


class _StorageUnpickler(RestrictedUnpickler):
    """The object pickle of a torch storage blob: one storage persistent id, nothing else."""

    def __init__(self, file: io.BytesIO, path: str | os.PathLike) -> None:
        super().__init__(file, path)
        self.refs: list[_StorageRef] = []

    def _allow_list(self, allow_torch: bool) -> dict[tuple[str, str], object]:
        return {("torch", name): _TorchStorageType(name, dtype) for name, dtype in _TORCH_STORAGE_DTYPES.items()}

    def persistent_load(self, pid: object) -> object:
        """Admit exactly `('storage', <typed storage>, key, location, numel, None)`, once."""
        ok = (
            isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"
            and isinstance(pid[1], _TorchStorageType) and isinstance(pid[2], str) and isinstance(pid[3], str)
            and isinstance(pid[4], int) and pid[4] >= 0 and pid[5] is None and not self.refs
        )
        if not ok:
            raise FlameFileError(
                f"{self._path}: refused a torch storage persistent id {_one_line(repr(pid), 80)} (the file "
                "may be corrupt or malicious)"
            )
        ref = _StorageRef(pid[1].dtype, pid[2], pid[4])
        self.refs.append(ref)
        return ref


def load_torch_legacy_storage(blob: bytes, path: str | os.PathLike) -> np.ndarray:
    """Parse a pre-zip `torch.save` blob of one typed storage into a 1-D little-endian array.

    Layout: pickles of the magic number, protocol version 1001 and sys_info, the storage as a
    persistent id, the key list; then int64 numel and the raw data (docs/flame-files.md §1.4).
    """
    stream = io.BytesIO(blob)
    try:
        if _PlainUnpickler(stream, path).load() != TORCH_LEGACY_MAGIC:
            raise FlameFileError(f"{path}: torch storage blob has a wrong magic number")
        if _PlainUnpickler(stream, path).load() != TORCH_LEGACY_PROTOCOL:
            raise FlameFileError(f"{path}: torch storage blob has an unknown protocol version")
        sys_info = _PlainUnpickler(stream, path).load()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise FlameFileError(f"{path}: torch storage blob is not little-endian")
        unpickler = _StorageUnpickler(stream, path)
        obj = unpickler.load()
        if not unpickler.refs or obj is not unpickler.refs[0]:
            raise FlameFileError(f"{path}: torch storage blob does not hold exactly one storage")
        ref = unpickler.refs[0]
        if _PlainUnpickler(stream, path).load() != [ref.key]:
            raise FlameFileError(f"{path}: torch storage blob key list does not match its storage")
    except FlameFileError:
        raise
    except _ContentError as exc:
        raise FlameFileError(f"{path}: {exc}") from None
    except _PICKLE_ERRORS as exc:
        raise FlameFileError(
            f"{path}: unreadable torch storage blob ({type(exc).__name__}: {_one_line(str(exc), 160)})"
        ) from None
    return _read_storage_data(stream, ref, path)


def _read_storage_data(stream: io.BytesIO, ref: _StorageRef, path: str | os.PathLike) -> np.ndarray:
    """The int64 numel and raw bytes after the pickles; sizes must agree and nothing may follow."""
    header = stream.read(8)
    if len(header) != 8 or struct.unpack("<q", header)[0] != ref.numel:
        raise FlameFileError(f"{path}: torch storage blob size does not match its persistent id")
    nbytes = ref.numel * ref.dtype.itemsize
    raw = stream.read(nbytes)
    if len(raw) != nbytes or stream.read(1):
        raise FlameFileError(f"{path}: torch storage blob is truncated or has trailing data")
    return np.frombuffer(raw, dtype=ref.dtype).astype(ref.dtype.newbyteorder("="))


# -- replacing stand-ins ------------------------------------------------------------------------


class _Resolver:
    """Turn stand-ins into plain values: arrays -> ndarray, Ch -> float64 ndarray, csc -> csc_matrix.

    Memoised by object identity, so shared sub-objects are converted once (a hostile pickle cannot
    make the walk exponential) and cycles are refused.
    """

    _LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), np.ndarray, set, frozenset)

    def __init__(self, path: str) -> None:
        self.path = path
        self.done: dict[int, object] = {}
        self.active: set[int] = set()

    def resolve(self, obj: object, depth: int = 0) -> object:
        if isinstance(obj, self._LEAVES) and not (isinstance(obj, np.ndarray) and obj.dtype.hasobject):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.active or depth > _MAX_DEPTH:
            raise FlameFileError(f"{self.path}: nested too deeply (or cyclic) for a FLAME file")
        self.active.add(key)
        result = self._convert(obj, depth + 1)
        self.active.discard(key)
        self.done[key] = result
        return result

    def _convert(self, obj: object, depth: int) -> object:
        if isinstance(obj, _ArrayStandIn):
            if obj.array is None:
                raise FlameFileError(f"{self.path}: an ndarray without its data")
            return self.resolve(obj.array, depth) if obj.array.dtype.hasobject else obj.array
        if isinstance(obj, np.ndarray):  # object arrays: convert the elements
            out = np.empty(obj.shape, dtype=object)
            for index in np.ndindex(obj.shape):
                out[index] = self.resolve(obj[index], depth)
            return out
        if isinstance(obj, _ChStandIn):
            return self._ch_to_array(obj, depth)
        if isinstance(obj, _CscStandIn):
            return self._csc_to_matrix(obj, depth)
        if isinstance(obj, dict):
            return type(obj)((k, self.resolve(v, depth)) for k, v in obj.items())
        if isinstance(obj, list):
            return [self.resolve(v, depth) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.resolve(v, depth) for v in obj)
        raise FlameFileError(f"{self.path}: unexpected {type(obj).__name__} object in a FLAME file")

    def _ch_to_array(self, obj: _ChStandIn, depth: int) -> np.ndarray:
        """chumpy's value is `np.asarray(x, float64)`; `.r` is a property, never stored."""
        state = obj.state
        if not isinstance(state, dict) or "x" not in state:
            raise FlameFileError(f"{self.path}: a chumpy Ch object without its value 'x'")
        x = self.resolve(state["x"], depth)
        if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
            return np.array(x, dtype=np.float64)
        if isinstance(x, int | float) and not isinstance(x, bool):
            return np.array(x, dtype=np.float64)
        raise FlameFileError(f"{self.path}: a chumpy Ch object whose value is {type(x).__name__}, not numeric")

    def _csc_to_matrix(self, obj: _CscStandIn, depth: int) -> scipy.sparse.csc_matrix:
        """Old and new scipy pickle the instance dict; rebuild and fully validate the index arrays."""
        state = self.resolve(obj.state, depth)
        if not isinstance(state, dict):
            raise FlameFileError(f"{self.path}: a csc_matrix without its state")
        shape = state.get("_shape", state.get("shape"))
        parts = [state.get(k) for k in ("data", "indices", "indptr")]
        if not all(isinstance(p, np.ndarray) and p.ndim == 1 for p in parts) or not isinstance(shape, tuple):
            raise FlameFileError(f"{self.path}: a csc_matrix without data/indices/indptr/shape")
        data, indices, indptr = parts
        if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu" or data.dtype.kind not in "biuf":
            raise FlameFileError(f"{self.path}: a csc_matrix with bad dtypes")
        try:
            matrix = scipy.sparse.csc_matrix((data.astype(np.float64), indices, indptr), shape=shape)
            matrix.check_format(full_check=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise FlameFileError(f"{self.path}: an invalid csc_matrix ({_one_line(str(exc), 120)})") from None
        return matrix


def safe_load_bytes(data: bytes, path: str | os.PathLike, *, allow_torch: bool = False) -> object:
    """Unpickle `data` with :class:`RestrictedUnpickler`, stand-ins replaced by plain values.

    Truncated or garbled input becomes a :class:`FlameFileError` naming `path`.
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), path, allow_torch=allow_torch).load()
    except FlameFileError:
        raise
    except _ContentError as exc:
        raise FlameFileError(f"{path}: {exc}") from None
    except _PICKLE_ERRORS as exc:
        raise FlameFileError(
            f"{path}: not a readable FLAME pickle (truncated or corrupt: {type(exc).__name__}: "
            f"{_one_line(str(exc), 160)})"
        ) from None
    return _Resolver(str(path)).resolve(obj)


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file, turning OS errors into a FlameFileError that names the path."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FlameFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FlameFileError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise FlameFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def safe_load_file(path: str | os.PathLike, *, allow_torch: bool = False) -> object:
    """Read and safely unpickle a whole file (see :func:`safe_load_bytes`)."""
    return safe_load_bytes(read_bytes(path), path, allow_torch=allow_torch)
