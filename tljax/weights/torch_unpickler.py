"""The restricted unpickler behind ``torch_pickle``: torch's globals by stand-ins, and
tensors as (storage, offset, size, stride) checked against their storage when built.

Only the globals that rebuild tensors resolve; each resolves to a stand-in defined here,
never to torch. Stand-ins refuse pickle's ``BUILD`` (``__setstate__``), so a file cannot
rewrite a tensor's checked fields after the fact.
"""

import collections
import math
import pickle
import re
import reprlib

import ml_dtypes
import numpy as np

from tljax.errors import UserError

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
    "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
    "complex64": np.complex64, "complex128": np.complex128,
}
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")  # torch writes str(int); nothing path-like
_MAX_NDIM = 32
_MAX_DIM = 1 << 40
_MAX_NUMEL = 1 << 48
# A view never holds more elements than its storage, except a broadcast (stride-0) one;
# those are small buffers in real checkpoints (position ids), so a large one is refused
# rather than materialised.
_MAX_BROADCAST_BYTES = 1 << 28
_INDEX_CHUNK = 1 << 22  # elements of index array built at once for a strided view

_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 3, 60, 60


def short(obj) -> str:
    """Returns a bounded repr of anything a pickle produced (never recursing deeply)."""
    try:
        return _short.repr(obj)
    except Exception:  # a huge int (str() limit) or an odd stand-in: name the type only
        return f"<{type(obj).__name__}>"


def key_text(key) -> str:
    """Returns a dict key of a checkpoint as it appears in a tensor name."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and abs(key) < 10 ** 18:
        return str(key)
    return short(key)


class _Frozen:
    """A stand-in that pickle's BUILD opcode cannot modify."""

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"the pickle sets state on a {type(self).__name__}, "
                                     "which a torch checkpoint never does")


class _StorageType(_Frozen):
    """Stands in for ``torch.FloatStorage`` etc.: only its dtype matters."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _DtypeTag(_Frozen):
    """Stands in for ``torch.float32`` etc."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_TORCH_DTYPES[name])


class _Marker(_Frozen):
    """Stands in for a torch class that only tags a tensor (``Parameter``, ``Tensor``)."""

    def __init__(self, name):
        self.name = name


class _Bad(Exception):
    """A tensor that cannot be built; ``LazyTensor.materialise`` names it."""


class Storage(_Frozen):
    """One stored blob, by key: ``raw`` bytes once read, or ``error`` saying why not."""

    def __init__(self, key, numel, itemsize):
        self.key, self.numel, self.itemsize = key, numel, itemsize
        self.nbytes = numel * itemsize
        self.raw, self.error = None, None


class _TypedStorage(_Frozen):
    """A storage seen as ``numel`` elements of ``dtype`` from element ``offset`` (a
    legacy view) of its root ``Storage``."""

    def __init__(self, root, dtype, numel, offset=0):
        self.root, self.dtype, self.numel, self.offset = root, dtype, numel, offset

    def array(self) -> np.ndarray:
        root = self.root
        if root.error is not None:
            raise _Bad(root.error)
        if root.raw is None or len(root.raw) != root.nbytes:
            raise _Bad(f"the file lacks the data of its storage {root.key!r} (truncated?)")
        flat = np.frombuffer(root.raw, dtype=self.dtype)
        return flat[self.offset:self.offset + self.numel]  # in bounds: storage_from_pid


def _count(value, what, where, low=0, high=_MAX_NUMEL) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{where}: {what} {short(value)} is not an integer in [{low}, {high}]")
    return value


def storage_from_pid(pid, storages: dict, source: str):
    """Returns the typed storage a persistent id names, registering its root in
    ``storages`` (key -> ``Storage``); raises ``UserError`` naming ``source`` (the file)
    for a malformed id."""
    where = f"{source!r}: a storage id"
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise UserError(f"{where} is not ('storage', type, key, location, size): {short(pid)}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, (_StorageType, _DtypeTag)):
        raise UserError(f"{where}: {short(storage_type)} is not a storage type")
    dtype = storage_type.dtype
    key = key_text(key) if isinstance(key, (str, int)) else None
    if key is None or not _KEY.fullmatch(key):
        raise UserError(f"{where}: storage key {short(pid[2])} is not a plain name "
                        "(letters, digits, _)")
    numel = _count(numel, f"element count of storage {key!r}", where)
    root = storages.setdefault(key, Storage(key, numel, dtype.itemsize))
    if numel * dtype.itemsize != root.nbytes:
        raise UserError(f"{where}: storage {key!r} is declared both as {root.nbytes} and "
                        f"as {numel * dtype.itemsize} bytes")
    view = pid[5] if len(pid) == 6 else None
    if view is None:
        return _TypedStorage(root, dtype, numel)
    if not (isinstance(view, tuple) and len(view) == 3):  # legacy: a view of the root
        raise UserError(f"{where}: storage view {short(view)} is not (key, offset, size)")
    offset = _count(view[1], f"offset of a view of storage {key!r}", where, high=numel)
    size = _count(view[2], f"size of a view of storage {key!r}", where, high=numel - offset)
    return _TypedStorage(root, dtype, size, offset)


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value  # a copy: lists mutate


class LazyTensor(_Frozen):
    """A tensor as the pickle describes it, built and checked by ``materialise``."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, offset
        self.size, self.stride = _as_tuple(size), _as_tuple(stride)

    def _layout(self, n: int):
        """Returns (offset, size, stride) checked to stay inside ``n`` elements."""
        size, stride = self.size, self.stride
        if not (isinstance(size, tuple) and isinstance(stride, tuple)) or \
                len(size) != len(stride) or len(size) > _MAX_NDIM:
            raise _Bad(f"size {short(size)} and stride {short(stride)} are not two tuples "
                       f"of equal length (at most {_MAX_NDIM})")
        for v in (self.offset, *size, *stride):
            if isinstance(v, bool) or not isinstance(v, int):
                raise _Bad(f"size, stride and offset must be integers, not {short(v)}")
        if self.offset < 0 or any(not 0 <= d <= _MAX_DIM for d in size) or \
                math.prod(d for d in size if d) > _MAX_NUMEL:
            raise _Bad(f"offset {self.offset} or size {size} is negative or too large")
        if 0 in size:
            return self.offset, size, stride
        stride = tuple(s if d > 1 else 0 for d, s in zip(size, stride))  # unused: any value
        low = self.offset + sum((d - 1) * s for d, s in zip(size, stride) if s < 0)
        high = self.offset + sum((d - 1) * s for d, s in zip(size, stride) if s > 0)
        if low < 0 or high >= n:
            raise _Bad(f"size {size}, stride {stride} and offset {self.offset} reach "
                       f"elements {low}..{high} of a storage of {n} elements "
                       "(outside it: corrupt or hostile checkpoint)")
        return self.offset, size, stride

    def materialise(self, where: str) -> np.ndarray:
        """Returns the tensor as a new array; raises ``UserError`` starting with ``where``
        (the file and tensor) when the file is inconsistent."""
        try:
            if not isinstance(self.storage, _TypedStorage):
                raise _Bad(f"its storage is {short(self.storage)}, not a storage")
            flat = self.storage.array()
            offset, size, stride = self._layout(len(flat))
        except _Bad as e:
            raise UserError(f"{where}: {e}") from None
        numel = math.prod(size)
        if numel == 0:
            return np.zeros(size, flat.dtype)
        if numel > len(flat) and numel * flat.dtype.itemsize > _MAX_BROADCAST_BYTES:
            raise UserError(f"{where}: a broadcast view of {numel} elements of a storage of "
                            f"{len(flat)}; refusing to expand it")
        permuted = _permuted(flat, offset, size, stride, numel)
        return permuted if permuted is not None else _gather(flat, offset, size, stride)


def _permuted(flat, offset, size, stride, numel):
    """Returns the view copied out of a contiguous block by reshape and transpose (the
    common cases: contiguous, transposed, channels-last), or None when it is not one."""
    axes = sorted((i for i, d in enumerate(size) if d > 1), key=lambda i: -stride[i])
    expected = 1
    for i in reversed(axes):
        if stride[i] != expected:
            return None
        expected *= size[i]
    order = axes + [i for i, d in enumerate(size) if d <= 1]
    block = flat[offset:offset + numel].reshape([size[i] for i in order])
    return block.transpose(np.argsort(order)).copy()


def _index(offset, size, stride) -> np.ndarray:
    """Returns the storage index of every element of a (size, stride) view at offset."""
    idx = np.full((1,) * len(size), offset, np.int64)
    for axis, (d, s) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[axis] = d
        idx = idx + (np.arange(d, dtype=np.int64) * s).reshape(shape)
    return idx


def _gather(flat, offset, size, stride) -> np.ndarray:
    """Returns a strided view of ``flat`` copied out by integer indexing, which numpy
    bounds-checks (indices are non-negative: ``_layout`` checked the lowest), a row of
    the first axis at a time when one index array for all would be large."""
    if len(size) == 1 or math.prod(size) <= _INDEX_CHUNK:
        return flat[_index(offset, size, stride)]
    out = np.empty(size, flat.dtype)
    rest = _index(0, size[1:], stride[1:])
    for i in range(size[0]):
        out[i] = flat[rest + (offset + i * stride[0])]
    return out


def _rebuild_tensor(storage, offset, size, stride, *_):
    return LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


def _rebuild_from_type(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 with a function other than a "
                                     "tensor rebuild")
    return func(*args)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.parameter", "Parameter"): _Marker("Parameter"),
    ("torch", "Tensor"): _Marker("Tensor"),
    ("torch", "Size"): tuple,
}


class SafeUnpickler(pickle.Unpickler):
    """Resolves only tensor-rebuilding globals; everything else is refused."""

    def __init__(self, file, persistent_load, source):
        super().__init__(file)
        self._persistent_load, self._source = persistent_load, source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return _DtypeTag(name)
        raise UserError(f"refusing to load {self._source}: its pickle asks for "
                        f"{str(module)[:100]}.{str(name)[:100]}, which is not needed to rebuild "
                        "tensors (a checkpoint that runs code is never loaded)")

    def persistent_load(self, pid):
        return self._persistent_load(pid)
