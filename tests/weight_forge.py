"""Weight files written byte by byte, honest or crafted, with no torch in the process.

Torch checkpoints are pickles that name torch's globals; the pure-Python pickler below
writes those names as plain ``GLOBAL`` opcodes, so tests can build any checkpoint, valid
or hostile, where torch is not installed.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Global:
    """A global written by name (``torch._utils._rebuild_tensor_v2``), never imported."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __reduce__(self):
        return self.name  # a string: pickle saves it with save_global (overridden below)

    def __call__(self, *args):  # pickle only checks that a reduce function is callable
        raise TypeError("a stand-in")


class Call:
    """``fn(*args)`` at load time, then pickle's BUILD with ``state`` when one is given."""

    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


class Storage:
    """A storage: its raw bytes, torch type name, key and the element count its pickle
    declares (``numel``, default: what the bytes hold)."""

    def __init__(self, key, data, type_name="FloatStorage", numel=None, itemsize=4, view=None):
        self.key, self.data, self.type_name, self.view = key, bytes(data), type_name, view
        self.numel = len(self.data) // itemsize if numel is None else numel


def storage_of(key, array: np.ndarray) -> Storage:
    """Returns a storage holding ``array``'s bytes with torch's type name for its dtype."""
    names = {"float32": "FloatStorage", "float64": "DoubleStorage", "int64": "LongStorage",
             "uint8": "ByteStorage", "float16": "HalfStorage"}
    return Storage(key, np.ascontiguousarray(array).tobytes(), names[array.dtype.name],
                   itemsize=array.dtype.itemsize)


def tensor(storage, offset, size, stride):
    """Returns the pickled form of ``torch._utils._rebuild_tensor_v2`` on ``storage``."""
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, tuple(size),
                tuple(stride), False, collections.OrderedDict())


class _Pickler(pickle._Pickler):  # the pure-Python pickler: save_global can be replaced
    def save_global(self, obj, name=None):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            pid = ("storage", Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
            return pid + (obj.view,) if self.legacy else pid  # legacy ids end in a view
        return None


def dumps(obj, legacy=False) -> bytes:
    """Returns ``obj`` pickled (protocol 2, as torch writes) with globals by name."""
    buf = io.BytesIO()
    pickler = _Pickler(buf, protocol=2)
    pickler.legacy = legacy
    pickler.dump(obj)
    return buf.getvalue()


def write_zip(path, obj, storages, byteorder=b"little", prefix="archive", records=None):
    """Writes a torch zip checkpoint of ``obj``; ``records`` (name -> bytes) replaces the
    storage records when given."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", dumps(obj))
        if byteorder is not None:
            z.writestr(f"{prefix}/byteorder", byteorder)
        z.writestr(f"{prefix}/version", "3\n")
        if records is None:
            records = {f"{prefix}/data/{s.key}": s.data for s in storages}
        for name, data in records.items():
            z.writestr(name, data)
    return str(path)


def write_legacy(path, obj, storages, sections=None):
    """Writes a legacy torch checkpoint of ``obj``; ``sections`` (a list of (numel, bytes))
    replaces the storage sections when given."""
    buf = io.BytesIO()
    for head in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(head, buf, protocol=2)
    buf.write(dumps(obj, legacy=True))
    pickle.dump([s.key for s in storages], buf, protocol=2)
    for numel, data in sections if sections is not None else [(s.numel, s.data)
                                                               for s in storages]:
        buf.write(struct.pack("<q", numel) + data)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return str(path)


def safetensors_bytes(header: dict, data: bytes, header_len=None) -> bytes:
    """Returns a safetensors file: 8-byte header length, JSON ``header``, ``data``."""
    import json

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if header_len is None else header_len) + text + data
