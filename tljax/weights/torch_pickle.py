"""PyTorch ``.pth``/``.bin`` checkpoints read without torch, and without running their code.

Both of torch's formats: the zip format (torch >= 1.6: ``<dir>/data.pkl`` with one file per
storage) and the legacy format (a run of pickles followed by the raw storages). The
pickle is read by an unpickler that resolves only the globals needed to rebuild tensors
(typed storages, ``_rebuild_tensor_v2``, ``_rebuild_parameter``, ``OrderedDict``, ...);
any other global (``os.system``, ``builtins.eval``, a model class) is refused before it
is called, so nothing inside a checkpoint ever runs.

Everything a file says is checked before it is used: a storage's byte count against the
element count its pickle declares, a tensor's size, stride and offset against its
storage (tensors are built with numpy's bounds-checked indexing, never from raw
pointers), and the nesting and size of the pickled structure.
"""

import io
import pickle
import struct
import zipfile
import zlib

import numpy as np

from tljax.errors import UserError
from tljax.weights import torch_unpickler as up

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MAX_DEPTH = 100            # nesting of dicts in a checkpoint
_MAX_ENTRIES = 1_000_000    # dict entries walked in a checkpoint
_MAX_PICKLE_BYTES = 1 << 30
_MAX_INFLATION = 1100       # deflate cannot beat ~1032:1; more is a zip bomb


def _check_member(z: zipfile.ZipFile, name: str, path: str, limit: int) -> zipfile.ZipInfo:
    info = z.getinfo(name)
    if info.file_size > limit or info.file_size > _MAX_INFLATION * max(info.compress_size, 1):
        raise UserError(f"{path!r}: zip record {name!r} claims {info.file_size} bytes "
                        f"({info.compress_size} stored); refusing to inflate it")
    return info


def _load_zip(path: str):
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        pkl = next((n for n in sorted(names) if n.endswith("data.pkl")), None)
        if pkl is None:
            raise UserError(f"{path!r} is a zip file but not a torch checkpoint (no data.pkl)")
        prefix = pkl[: -len("data.pkl")]
        if f"{prefix}byteorder" in names:
            _check_member(z, f"{prefix}byteorder", path, 16)
            if z.read(f"{prefix}byteorder") != b"little":
                raise UserError(f"{path!r} is not a little-endian checkpoint "
                                "(its byteorder record says otherwise); only little-endian is read")
        _check_member(z, pkl, path, _MAX_PICKLE_BYTES)
        storages = {}
        obj = up.SafeUnpickler(io.BytesIO(z.read(pkl)),
                               lambda pid: up.storage_from_pid(pid, storages, path), path).load()
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"  # key is a plain word (storage_from_pid checks)
            if name not in names:
                storage.error = f"the file lacks the data of its storage {key!r} (truncated?)"
                continue
            size = z.getinfo(name).file_size
            if size != storage.nbytes:
                storage.error = (f"its storage {key!r} holds {size} bytes where the "
                                 f"pickle declares {storage.nbytes}")
                continue
            _check_member(z, name, path, storage.nbytes)
            storage.raw = z.read(name)
    return obj


def _load_legacy(path: str):
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)  # read in memory: a lying length cannot make read() allocate
    storages = {}

    def safe_load():
        return up.SafeUnpickler(stream, lambda pid: up.storage_from_pid(pid, storages, path),
                                path).load()

    if safe_load() != LEGACY_MAGIC:
        raise UserError(f"{path!r} is not a torch checkpoint (bad magic number)")
    safe_load()  # protocol version
    sys_info = safe_load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise UserError(f"{path!r} is a big-endian checkpoint; only little-endian is read")
    obj = safe_load()
    keys = safe_load()
    if not isinstance(keys, list) or len(keys) > len(storages):
        raise UserError(f"{path!r}: its list of storages is not a list of the "
                        f"{len(storages)} storages its tensors use")
    pos, view = stream.tell(), memoryview(data)
    for i, key in enumerate(keys):
        storage = storages.get(up.key_text(key))
        if storage is None:
            raise UserError(f"{path!r} lists data for storage {up.short(key)}, which no "
                            "tensor uses: corrupt checkpoint")
        header = view[pos:pos + 8]
        numel = struct.unpack("<q", header)[0] if len(header) == 8 else storage.numel
        size, left = numel * storage.itemsize, len(data) - pos - 8
        if numel == storage.numel and len(header) == 8 and size <= left:
            storage.raw = view[pos + 8:pos + 8 + size]
            pos += 8 + size
            continue
        problem = (f"its storage {key!r} has {numel} elements where the pickle declares "
                   f"{storage.numel}" if numel != storage.numel
                   else f"its storage {key!r} is cut short (the file is truncated)")
        for later in keys[i:]:  # the sections after a bad one cannot be located
            if up.key_text(later) in storages:
                storages[up.key_text(later)].error = problem
        break
    for storage in storages.values():
        if storage.raw is None and storage.error is None:
            storage.error = f"the file lacks the data of its storage {storage.key!r} (truncated?)"
    return obj


def _unwrap(obj):
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _walk(obj, path: str) -> dict:
    """Returns ``{dotted name: LazyTensor or np.ndarray}`` of the dicts in ``obj``, walked
    without recursion and within ``_MAX_DEPTH`` / ``_MAX_ENTRIES``."""
    out, entries, stack = {}, 0, [(obj, "", 0)]
    while stack:
        node, prefix, depth = stack.pop()
        if isinstance(node, (up.LazyTensor, np.ndarray)):
            if prefix[:-1] in out:
                raise UserError(f"{path!r} holds two tensors named {prefix[:-1]!r}")
            out[prefix[:-1]] = node
            continue
        if not isinstance(node, dict):
            continue  # lists, numbers, strings: not tensors a model loads
        if depth >= _MAX_DEPTH:
            raise UserError(f"{path!r}: dicts nested deeper than {_MAX_DEPTH} levels at "
                            f"{up.short(prefix[:-1])}: corrupt or hostile checkpoint")
        entries += len(node)
        if entries > _MAX_ENTRIES:
            raise UserError(f"{path!r} holds more than {_MAX_ENTRIES} dict entries: "
                            "corrupt or hostile checkpoint")
        for k, v in reversed(list(node.items())):
            stack.append((v, f"{prefix}{up.key_text(k)}.", depth + 1))
    return out


def read(path: str) -> dict:
    """Returns ``{name: np.ndarray}`` from a torch checkpoint (zip or legacy format).

    A checkpoint holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped; nested
    dicts are flattened with ``.``. Raises ``UserError`` for a malicious, truncated or
    foreign file, naming the file and, where one is to blame, the tensor.
    """
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
        lazy = _walk(_unwrap(obj), path)
        tensors = {name: t.materialise(f"{path!r}: tensor {name!r}")
                   if isinstance(t, up.LazyTensor) else t for name, t in lazy.items()}
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error,
            zipfile.BadZipFile, zlib.error, IndexError, KeyError, AttributeError, OSError,
            RuntimeError, OverflowError, MemoryError) as e:  # RuntimeError: RecursionError too
        text = str(e).splitlines()[0][:200] if str(e) else ""
        raise UserError(f"cannot read torch checkpoint {path!r} (corrupt or truncated): "
                        f"{type(e).__name__}: {text}") from None
    if not tensors:
        raise UserError(f"{path!r} holds no tensors")
    return tensors
