"""PyTorch ``.pth``/``.bin`` checkpoints read without torch, and without running their code.

Both of torch's formats: the zip format (torch >= 1.6: ``<dir>/data.pkl`` with one file per
storage) and the legacy format (a run of pickles followed by the raw storages). The
pickle is read by an unpickler that resolves only the globals needed to rebuild tensors
(typed storages, ``_rebuild_tensor_v2``, ``_rebuild_parameter``, ``OrderedDict``, ...);
any other global (``os.system``, ``builtins.eval``, a model class) is refused before it
is called, so nothing inside a checkpoint ever runs.
"""

import collections
import io
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

from tljax.errors import UserError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

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


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only its dtype matters."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Marker:
    """Stands in for a torch class that only tags a tensor (``Parameter``, ``Tensor``)."""

    def __init__(self, name):
        self.name = name


class _Storage:
    """A storage whose bytes are read later (legacy files store them after the pickle)."""

    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel = np.dtype(dtype), key, numel
        self.array = None
        self.base, self.offset = None, 0  # set for a legacy view into another storage


class _LazyTensor:
    """A tensor described by (storage, offset, size, stride), materialised by ``resolve``."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), \
            tuple(stride)

    def materialise(self) -> np.ndarray:
        storage = self.storage
        flat = storage.array
        if flat is None and storage.base is not None:
            flat = storage.base.array[storage.offset:storage.offset + storage.numel]
        if flat is None:
            raise UserError(f"storage {storage.key!r} has no data in the checkpoint")
        if not self.size:
            return flat[self.offset:self.offset + 1].reshape(()).copy()
        extent = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n)
        if extent > len(flat):
            raise UserError(f"tensor of shape {self.size} overruns its storage "
                            f"({len(flat)} elements): truncated or corrupt checkpoint")
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        return np.array(view)  # a contiguous copy that owns its memory


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


def _rebuild_from_type(func, new_type, args, state):
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


class _SafeUnpickler(pickle.Unpickler):
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
            return np.dtype(_TORCH_DTYPES[name])
        raise UserError(f"refusing to load {self._source}: its pickle asks for "
                        f"{module}.{name}, which is not needed to rebuild tensors "
                        "(a checkpoint that runs code is never loaded)")

    def persistent_load(self, pid):
        return self._persistent_load(pid)


def _storage_from_pid(pid, storages: dict):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
        raise UserError(f"unsupported persistent id in checkpoint: {pid!r}")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.dtype(storage_type)
    view = pid[5] if len(pid) > 5 else None
    root = storages.setdefault(key, _Storage(dtype, key, numel))
    if view is None:
        return root
    view_key, offset, view_numel = view  # legacy: a view into a larger root storage
    sub = storages.setdefault(f"view:{view_key}", _Storage(dtype, view_key, view_numel))
    sub.base, sub.offset = root, offset
    return sub


def _resolve(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def _load_zip(path: str):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise UserError(f"{path!r} is a zip file but not a torch checkpoint (no data.pkl)")
        prefix = pkl[: -len("data.pkl")]
        if f"{prefix}byteorder" in names and z.read(f"{prefix}byteorder") != b"little":
            raise UserError(f"{path!r} is a big-endian checkpoint; only little-endian is read")
        storages = {}
        obj = _SafeUnpickler(io.BytesIO(z.read(pkl)),
                             lambda pid: _storage_from_pid(pid, storages), path).load()
        for key, storage in storages.items():
            if storage.base is not None:
                continue
            name = f"{prefix}data/{key}"
            if name not in names:
                raise UserError(f"{path!r} lacks the data of storage {key!r}: truncated file?")
            raw = z.read(name)
            storage.array = np.frombuffer(raw, dtype=storage.dtype)
    return _resolve(obj)


def _load_legacy(path: str):
    with open(path, "rb") as f:
        def safe_load():
            return _SafeUnpickler(f, lambda pid: _storage_from_pid(pid, storages), path).load()

        storages = {}
        magic = safe_load()
        if magic != LEGACY_MAGIC:
            raise UserError(f"{path!r} is not a torch checkpoint (bad magic number)")
        safe_load()  # protocol version
        sys_info = safe_load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise UserError(f"{path!r} is a big-endian checkpoint; only little-endian is read")
        obj = safe_load()
        keys = safe_load()
        for key in keys:
            storage = storages.get(str(key))
            header = f.read(8)
            if storage is None or len(header) != 8:
                raise UserError(f"{path!r} is truncated or corrupt at storage {key!r}")
            (numel,) = struct.unpack("<q", header)
            raw = f.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise UserError(f"{path!r} is truncated: storage {key!r} is short")
            storage.array = np.frombuffer(raw, dtype=storage.dtype)
    return _resolve(obj)


def _flatten(obj, prefix="") -> dict:
    out = {}
    if isinstance(obj, np.ndarray):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    return out


def read(path: str) -> dict:
    """Returns ``{name: np.ndarray}`` from a torch checkpoint (zip or legacy format).

    A checkpoint holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped; nested
    dicts are flattened with ``.``. Raises ``UserError`` for a malicious, truncated or
    foreign file.
    """
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error,
            zipfile.BadZipFile, IndexError, KeyError, AttributeError) as e:
        raise UserError(f"cannot read torch checkpoint {path!r}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = _flatten(obj)
    if not tensors:
        raise UserError(f"{path!r} holds no tensors")
    return tensors
