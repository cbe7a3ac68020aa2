"""A small, deterministic writer of the pickles the official FLAME files are made of.

The official files were written by Python 2 (`cPickle`, chumpy, old scipy) and by old torch; none
of those can (or should) be installed today. To write files that every existing FLAME loader reads,
we emit the opcodes ourselves from a tiny object model (:class:`Global`, :class:`Reduce`,
:class:`NewObj`, :class:`PersistentId`) plus plain Python values and numpy arrays. Nothing here
imports chumpy, torch or a deprecated numpy/scipy module, and the output depends only on the input
(no ids, no dict hashing, no timestamps), so the same input always gives the same bytes.

Three dialects are supported, each chosen to match what the original tooling wrote:

- protocol 2, Python-2 strings (`SHORT_BINSTRING`/`BINSTRING` for text and raw bytes): the model
  files (`cPickle.dump(d, f, -1)`);
- protocol 0, Python-2 strings (`STRING` with Python-2 `repr` escapes): `FLAME_masks.pkl`;
- protocol 2 or 3 with Python-3 strings (`BINUNICODE`, `BINBYTES`): `landmark_embedding.npy` and
  the legacy `torch.save` blob of its tensors.

The layouts reproduced here are those of the FLAME format notes (docs/flame-files.md §1.2, §1.4, §2).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse

__all__ = [
    "TORCH_LEGACY_MAGIC",
    "TORCH_LEGACY_PROTOCOL",
    "TORCH_STORAGE_NAMES",
    "Global",
    "NewObj",
    "PersistentId",
    "PickleWriter",
    "Reduce",
    "Shared",
    "array_node",
    "chumpy_node",
    "csc_node",
    "dumps",
    "object_scalar_array_node",
    "set_node",
    "torch_legacy_storage_blob",
    "torch_tensor_node",
]

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""First pickle of a pre-zip `torch.save` file."""

TORCH_LEGACY_PROTOCOL = 1001
"""Second pickle of a pre-zip `torch.save` file."""

TORCH_STORAGE_NAMES = {
    np.dtype("<i8"): "LongStorage",
    np.dtype("<f4"): "FloatStorage",
    np.dtype("<f8"): "DoubleStorage",
    np.dtype("<i4"): "IntStorage",
}
"""Legacy typed torch storages we write (and read back), by element dtype."""

_NO_STATE = object()


@dataclass(frozen=True)
class Global:
    """A `module name` global (opcode GLOBAL). Memoised: the second use is a GET, as cPickle does."""

    module: str
    name: str


@dataclass(frozen=True, eq=False)
class Reduce:
    """`func(*args)` (REDUCE), then BUILD with `state` when one is given."""

    func: object
    args: tuple
    state: object = _NO_STATE


@dataclass(frozen=True, eq=False)
class NewObj:
    """`cls.__new__(cls, *args)` (NEWOBJ, protocol >= 2), then BUILD with `state`."""

    cls: Global
    args: tuple
    state: object


@dataclass(frozen=True, eq=False)
class PersistentId:
    """A persistent id (BINPERSID), as `torch.save` writes for each storage."""

    pid: object


@dataclass(frozen=True, eq=False)
class Shared:
    """A value written once and referenced by GET afterwards, keyed by `key` (e.g. a dtype)."""

    key: Hashable
    value: object


@dataclass(frozen=True, eq=False)
class _Array:
    """An ndarray with its pickled layout decided (see :func:`array_node`)."""

    array: np.ndarray
    fortran: bool


@dataclass
class PickleWriter:
    """Emit one pickle in a fixed dialect.

    Args:
        protocol: 0, 2 or 3.
        py2_strings: True to write `str` and `bytes` both as Python-2 strings (what cPickle writes);
            False for Python-3 `BINUNICODE` text and `BINBYTES` data (protocol 3 only for bytes).
    """

    protocol: int
    py2_strings: bool
    _out: list[bytes] = field(default_factory=list)
    _memo: dict[Hashable, int] = field(default_factory=dict)
    _next_memo: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in (0, 2, 3):
            raise ValueError(f"unsupported pickle protocol {self.protocol}")
        if self.protocol == 3 and self.py2_strings:
            raise ValueError("protocol 3 is Python 3 only")

    def dumps(self, obj: object) -> bytes:
        """Return the whole pickle of `obj`, from PROTO (protocol >= 2) to STOP."""
        self._out = []
        self._memo = {}
        self._next_memo = 0
        if self.protocol >= 2:
            self._emit(b"\x80" + bytes([self.protocol]))
        self._save(obj)
        self._emit(b".")
        return b"".join(self._out)

    # -- low level -----------------------------------------------------------------------------

    def _emit(self, chunk: bytes) -> None:
        self._out.append(chunk)

    def _put(self) -> int:
        """Memoise the object on top of the stack (PUT); returns its memo index."""
        index = self._next_memo
        self._next_memo += 1
        if self.protocol == 0:
            self._emit(b"p%d\n" % index)
        elif index < 256:
            self._emit(b"q" + bytes([index]))
        else:
            self._emit(b"r" + struct.pack("<I", index))
        return index

    def _get(self, index: int) -> None:
        if self.protocol == 0:
            self._emit(b"g%d\n" % index)
        elif index < 256:
            self._emit(b"h" + bytes([index]))
        else:
            self._emit(b"j" + struct.pack("<I", index))

    # -- dispatch ------------------------------------------------------------------------------

    def _save(self, obj: object) -> None:
        """Write one value; the order of the checks matters (bool is an int)."""
        if obj is None:
            self._emit(b"N")
        elif isinstance(obj, bool):
            self._save_bool(obj)
        elif isinstance(obj, int):
            self._save_int(obj)
        elif isinstance(obj, str):
            self._save_text(obj)
        elif isinstance(obj, bytes):
            self._save_data(obj)
        elif isinstance(obj, tuple):
            self._save_tuple(obj)
        elif isinstance(obj, list):
            self._save_list(obj)
        elif isinstance(obj, dict):
            self._save_dict(obj)
        elif isinstance(obj, Global):
            self._save_global(obj)
        elif isinstance(obj, Shared):
            self._save_shared(obj)
        elif isinstance(obj, Reduce):
            self._save_reduce(obj)
        elif isinstance(obj, NewObj):
            self._save_newobj(obj)
        elif isinstance(obj, PersistentId):
            self._save_persistent_id(obj)
        elif isinstance(obj, np.ndarray):
            self._save(array_node(obj))
        elif isinstance(obj, _Array):
            self._save_array(obj)
        else:
            raise TypeError(f"legacy pickle writer cannot write {type(obj).__name__}")

    def _save_bool(self, value: bool) -> None:
        if self.protocol == 0:
            self._emit(b"I01\n" if value else b"I00\n")
        else:
            self._emit(b"\x88" if value else b"\x89")

    def _save_int(self, value: int) -> None:
        if self.protocol == 0:
            self._emit(b"I%d\n" % value)
        elif 0 <= value < 256:
            self._emit(b"K" + bytes([value]))
        elif 0 <= value < 65536:
            self._emit(b"M" + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self._emit(b"J" + struct.pack("<i", value))
        else:
            payload = _encode_long(value)
            if len(payload) > 255:
                raise ValueError("integer too large for LONG1")
            self._emit(b"\x8a" + bytes([len(payload)]) + payload)

    def _save_text(self, text: str) -> None:
        """Python-2 `str` (latin1 bytes) or Python-3 `BINUNICODE` (utf-8)."""
        if self.py2_strings:
            self._save_py2_string(text.encode("latin1"))
        else:
            payload = text.encode("utf-8")
            self._emit(b"X" + struct.pack("<I", len(payload)) + payload)

    def _save_data(self, data: bytes) -> None:
        """Raw bytes: a Python-2 `str`, or `BINBYTES` (Python 3 writes bytes so from protocol 3)."""
        if self.py2_strings:
            self._save_py2_string(data)
        elif self.protocol >= 3:
            if len(data) < 256:
                self._emit(b"C" + bytes([len(data)]) + data)
            else:
                self._emit(b"B" + struct.pack("<I", len(data)) + data)
        else:
            raise ValueError("Python-3 protocol-2 bytes need _codecs.encode; not written by FLAME tools")

    def _save_py2_string(self, data: bytes) -> None:
        if self.protocol == 0:
            self._emit(b"S" + _py2_repr(data) + b"\n")
        elif len(data) < 256:
            self._emit(b"U" + bytes([len(data)]) + data)
        else:
            self._emit(b"T" + struct.pack("<I", len(data)) + data)

    def _save_tuple(self, items: tuple) -> None:
        if self.protocol >= 2 and len(items) <= 3:
            if not items:
                self._emit(b")")
                return
            for item in items:
                self._save(item)
            self._emit((b"\x85", b"\x86", b"\x87")[len(items) - 1])
            return
        self._emit(b"(")
        for item in items:
            self._save(item)
        self._emit(b"t")

    def _save_list(self, items: list) -> None:
        """EMPTY_LIST + APPEND(S) (protocol 2) or MARK LIST + APPEND per item (protocol 0)."""
        if self.protocol == 0:
            self._emit(b"(l")
            self._put()
            for item in items:
                self._save(item)
                self._emit(b"a")
            return
        self._emit(b"]")
        self._put()
        if len(items) == 1:
            self._save(items[0])
            self._emit(b"a")
        elif items:
            self._emit(b"(")
            for item in items:
                self._save(item)
            self._emit(b"e")

    def _save_dict(self, items: dict) -> None:
        """Insertion order is the file order, so callers decide the key order."""
        if self.protocol == 0:
            self._emit(b"(d")
            self._put()
            for key, value in items.items():
                self._save(key)
                self._save(value)
                self._emit(b"s")
            return
        self._emit(b"}")
        self._put()
        if len(items) == 1:
            ((key, value),) = items.items()
            self._save(key)
            self._save(value)
            self._emit(b"s")
        elif items:
            self._emit(b"(")
            for key, value in items.items():
                self._save(key)
                self._save(value)
            self._emit(b"u")

    def _save_global(self, glob: Global) -> None:
        if glob in self._memo:
            self._get(self._memo[glob])
            return
        for part in (glob.module, glob.name):
            if not part.isascii() or not part.isprintable() or not part:
                raise ValueError(f"bad global name {part!r}")
        self._emit(b"c" + glob.module.encode("ascii") + b"\n" + glob.name.encode("ascii") + b"\n")
        self._memo[glob] = self._put()

    def _save_shared(self, shared: Shared) -> None:
        key = ("shared", shared.key)
        if key in self._memo:
            self._get(self._memo[key])
            return
        self._save(shared.value)
        self._memo[key] = self._put()

    def _save_reduce(self, node: Reduce) -> None:
        self._save(node.func)
        self._save(tuple(node.args))
        self._emit(b"R")
        if node.state is not _NO_STATE:
            self._save(node.state)
            self._emit(b"b")

    def _save_newobj(self, node: NewObj) -> None:
        if self.protocol < 2:
            raise ValueError("NEWOBJ needs protocol 2")
        self._save(node.cls)
        self._save(tuple(node.args))
        self._emit(b"\x81")
        self._save(node.state)
        self._emit(b"b")

    def _save_persistent_id(self, node: PersistentId) -> None:
        if self.protocol < 1:
            raise ValueError("BINPERSID needs protocol >= 1")
        self._save(node.pid)
        self._emit(b"Q")

    def _save_array(self, node: _Array) -> None:
        """numpy's own `__reduce__` layout, with `numpy.core.multiarray` as numpy < 2 names it."""
        arr = node.array
        raw = arr.tobytes(order="F" if node.fortran else "C")
        self._save(
            Reduce(
                Global("numpy.core.multiarray", "_reconstruct"),
                (Global("numpy", "ndarray"), (0,), b"b"),
                state=(1, tuple(int(n) for n in arr.shape), _dtype_node(arr.dtype, self.py2_strings),
                       node.fortran, raw),
            )
        )


def dumps(obj: object, *, protocol: int, py2_strings: bool) -> bytes:
    """Pickle `obj` (plain values, nodes, arrays) in one dialect; see :class:`PickleWriter`."""
    return PickleWriter(protocol=protocol, py2_strings=py2_strings).dumps(obj)


def _encode_long(value: int) -> bytes:
    """Two's-complement little-endian bytes, as short as possible (LONG1 payload)."""
    if value == 0:
        return b""
    nbytes = (value.bit_length() >> 3) + 1
    payload = value.to_bytes(nbytes, "little", signed=True)
    if value < 0 and nbytes > 1 and payload[-1] == 0xFF and payload[-2] & 0x80:
        payload = payload[:-1]
    return payload


def _py2_repr(data: bytes) -> bytes:
    """Python 2's `repr(str)`: the quoted, escaped form protocol 0 writes after `S`."""
    quote = b'"' if (b"'" in data and b'"' not in data) else b"'"
    out = bytearray(quote)
    specials = {0x5C: b"\\\\", 0x09: b"\\t", 0x0A: b"\\n", 0x0D: b"\\r"}
    for byte in data:
        if byte in specials:
            out += specials[byte]
        elif byte == quote[0]:
            out += b"\\" + quote
        elif byte < 0x20 or byte >= 0x7F:
            out += b"\\x%02x" % byte
        else:
            out.append(byte)
    out += quote
    return bytes(out)


# -- building blocks for the FLAME files --------------------------------------------------------


def _dtype_node(dtype: np.dtype, py2: bool) -> Shared:
    """`numpy dtype(descr, align, copy)` + BUILD state, exactly as numpy's `dtype.__reduce__`.

    Python 2 numpy wrote align/copy as the ints 0 and 1; Python 3 numpy writes booleans.
    """
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in "biufO":
        raise ValueError(f"legacy pickle writer does not write dtype {dtype}")
    _, (descr, align, copy), state = dtype.__reduce__()
    args = (descr, int(align), int(copy)) if py2 else (descr, bool(align), bool(copy))
    return Shared(("dtype", descr, state), Reduce(Global("numpy", "dtype"), args, state=tuple(state)))


def _little_endian(arr: np.ndarray) -> np.ndarray:
    """Arrays are written little-endian, as every FLAME file is."""
    if arr.dtype.kind == "O" or arr.dtype.itemsize == 1:
        return arr
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False)


def array_node(arr: np.ndarray, *, fortran: bool | None = None) -> _Array:
    """An ndarray in numpy's pickle layout.

    Args:
        arr: numeric (bool, int, uint, float) array.
        fortran: write Fortran-ordered data with `is_fortran` True (numpy does so for arrays that are
            Fortran- but not C-contiguous); None decides as numpy does.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"legacy pickle writer does not write {arr.dtype} arrays")
    if fortran is None:
        fortran = bool(arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous)
    return _Array(_little_endian(arr), bool(fortran))


def object_scalar_array_node(value: object, *, py2: bool) -> Reduce:
    """A 0-d object ndarray holding `value`, as `np.save` pickles a dict (state data is a list)."""
    return Reduce(
        Global("numpy.core.multiarray", "_reconstruct"),
        (Global("numpy", "ndarray"), (0,), b"b"),
        state=(1, (), _dtype_node(np.dtype(object), py2), False, [value]),
    )


def set_node(items: list, *, py2: bool = True) -> Reduce:
    """`set(list)` as Python writes it at protocol 2 (`__builtin__ set` under Python 2)."""
    return Reduce(Global("__builtin__" if py2 else "builtins", "set"), (list(items),))


def chumpy_node(arr: np.ndarray) -> NewObj:
    """A `chumpy.ch.Ch` holding `arr` as float64: NEWOBJ + BUILD with Ch's pickled `__dict__`."""
    x = np.ascontiguousarray(arr, dtype=np.float64)
    state = {
        "x": array_node(x),
        "_dirty_vars": set_node([]),
        "_itr": None,
        "_make_dense": False,
        "_make_sparse": False,
        "_depends_on_deps": {},
    }
    return NewObj(Global("chumpy.ch", "Ch"), (), state)


def csc_node(matrix: np.ndarray | scipy.sparse.spmatrix | scipy.sparse.sparray) -> NewObj:
    """An old-scipy `scipy.sparse.csc.csc_matrix`: NEWOBJ + BUILD with its instance dict."""
    csc = scipy.sparse.csc_matrix(matrix, dtype=np.float64)
    csc.sum_duplicates()
    csc.sort_indices()
    state = {
        "_shape": tuple(int(n) for n in csc.shape),
        "maxprint": 50,
        "format": "csc",
        "indices": array_node(np.asarray(csc.indices, dtype=np.int32)),
        "indptr": array_node(np.asarray(csc.indptr, dtype=np.int32)),
        "data": array_node(np.asarray(csc.data, dtype=np.float64)),
    }
    return NewObj(Global("scipy.sparse.csc", "csc_matrix"), (), state)


def torch_legacy_storage_blob(arr: np.ndarray, key: str = "0") -> bytes:
    """A pre-zip `torch.save` of one typed storage holding `arr` flattened (C order).

    Five protocol-2 pickles written as Python-3 torch writes them (magic, protocol version, sys_info,
    the storage as a persistent id, the key list), then int64 numel and the raw little-endian data.
    """
    dtype = np.dtype(arr.dtype).newbyteorder("<")
    if dtype not in TORCH_STORAGE_NAMES:
        raise ValueError(f"no legacy torch storage for dtype {arr.dtype}")
    flat = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
    sys_info = {
        "protocol_version": TORCH_LEGACY_PROTOCOL,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    storage = Global("torch", TORCH_STORAGE_NAMES[dtype])
    parts = [
        dumps(TORCH_LEGACY_MAGIC, protocol=2, py2_strings=False),
        dumps(TORCH_LEGACY_PROTOCOL, protocol=2, py2_strings=False),
        dumps(sys_info, protocol=2, py2_strings=False),
        dumps(PersistentId(("storage", storage, key, "cpu", int(flat.size), None)), protocol=2,
              py2_strings=False),
        dumps([key], protocol=2, py2_strings=False),
        struct.pack("<q", int(flat.size)),
        flat.tobytes(),
    ]
    return b"".join(parts)


def torch_tensor_node(arr: np.ndarray, key: str = "0") -> Reduce:
    """A legacy torch tensor: `_rebuild_tensor_v2(_load_from_bytes(blob), 0, size, stride, False,
    OrderedDict())`, as old torch pickled tensors inside other pickles."""
    arr = np.asarray(arr)
    size = tuple(int(n) for n in arr.shape)
    stride = tuple(int(s) for s in _contiguous_strides(size))
    storage = Reduce(Global("torch.storage", "_load_from_bytes"), (torch_legacy_storage_blob(arr, key),))
    hooks = Reduce(Global("collections", "OrderedDict"), ())
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"), (storage, 0, size, stride, False, hooks))


def _contiguous_strides(size: tuple[int, ...]) -> list[int]:
    """Element strides of a C-contiguous tensor of `size`."""
    strides = [1] * len(size)
    for i in range(len(size) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(size[i + 1], 1)
    return strides
