"""Weight files -> flat ``{stored name: np.ndarray}``, by format, without torch or TF.

The format is told from the content, not the suffix: an orbax directory, safetensors (8-byte header length + JSON), HDF5 (Keras ``.h5``), ``.npz`` (a zip of ``.npy``), and
torch checkpoints (a zip with ``data.pkl``, or the legacy pickle stream).
"""

import json
import math
import os
import struct
import zipfile
import zlib

import numpy as np

from tljax.errors import UserError
from tljax.weights import torch_pickle
from tljax.weights.hdf5 import read_h5

FORMATS = ("orbax directory", "safetensors", "torch .pth/.bin (zip or legacy)", "npz",
           "keras .h5", "Hugging Face model directory (config.json + weights)")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit
_MAX_NDIM = 32
_MAX_INFLATION = 1100  # deflate cannot beat ~1032:1; more is a zip bomb


def _safetensors_dtypes() -> dict:
    import ml_dtypes

    return {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
            "F8_E5M2": ml_dtypes.float8_e5m2, "F8_E4M3": ml_dtypes.float8_e4m3fn,
            "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
            "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
            "BOOL": np.bool_}


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise UserError(f"tensor {next(k for k in keys if keys.count(k) > 1)!r} is named twice")
    return dict(pairs)


def _safetensors_entry(name, meta, dtypes) -> tuple:
    """Returns (start, end, dtype, shape) of one header entry, checked for form and for
    ``end - start`` being exactly the bytes its dtype and shape need."""
    if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= set(meta):
        raise UserError("its entry is not {dtype, shape, data_offsets}")
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if not isinstance(dtype, str) or dtype not in dtypes:
        raise UserError(f"unsupported dtype {str(dtype)[:20]!r}; known: {', '.join(dtypes)}")
    ints = (lambda xs: isinstance(xs, list) and all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 62 for x in xs))
    if not ints(shape) or len(shape) > _MAX_NDIM or math.prod(d for d in shape if d) >= 1 << 56:
        raise UserError(f"shape {str(shape)[:60]} is not a list of non-negative integers "
                        "of a size numpy can hold")
    if not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise UserError(f"data_offsets {str(offsets)[:60]} are not [start, end] with "
                        "0 <= start <= end")
    dtype = np.dtype(dtypes[dtype])
    need = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != need:
        raise UserError(f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but "
                        f"{meta['dtype']} {shape} needs {need}")
    return offsets[0], offsets[1], dtype, tuple(shape)


def read_safetensors(path: str) -> dict:
    """Returns the tensors of a safetensors file (bfloat16 kept, via ml_dtypes).

    Checked as the format's own reader does: the header fits the file, every tensor's
    byte range matches its dtype and shape, and the ranges tile the data exactly (no
    overlap, no gap, nothing past the end).
    """
    with open(path, "rb") as f:
        head = f.read(8)
        size = os.fstat(f.fileno()).st_size
        if len(head) < 8:
            raise UserError(f"{path!r} is truncated: no safetensors header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise UserError(f"{path!r}: safetensors header length {n} runs past the file "
                            f"({size} bytes) or the format's limit: truncated or corrupt")
        try:
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
        except UserError as e:
            raise UserError(f"{path!r}: corrupt safetensors header ({e})") from None
        except (ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8
            raise UserError(f"{path!r}: corrupt safetensors header "
                            f"({type(e).__name__}: {str(e)[:120]})") from None
        data = f.read()
    if not isinstance(header, dict):
        raise UserError(f"{path!r}: corrupt safetensors header (not a JSON object)")
    dtypes, entries = _safetensors_dtypes(), []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            entries.append((*_safetensors_entry(name, meta, dtypes), name))
        except UserError as e:
            raise UserError(f"{path!r}: tensor {name!r}: {e}") from None
    end = 0
    for start, stop, _, _, name in sorted(entries, key=lambda e: (e[0], e[1])):
        if start != end:
            raise UserError(f"{path!r}: tensor {name!r} starts at byte {start} of the data, "
                            f"not at {end} where the previous tensor ends "
                            f"({'overlapping' if start < end else 'a gap between'} tensors)")
        end = stop
    if end != len(data):
        last = max(entries, key=lambda e: e[1])[4] if entries else None
        raise UserError(f"{path!r}: the tensors cover {end} bytes of data but the file holds "
                        f"{len(data)}" + (f" (tensor {last!r} ends past the file: truncated)"
                                          if end > len(data) else ""))
    return {name: np.frombuffer(data, dtype, math.prod(shape), start).reshape(shape).copy()
            for start, _, dtype, shape, name in entries}


def _check_npy_member(z: zipfile.ZipFile, member: str, where: str) -> None:
    """Raises ``UserError`` unless ``member`` of an npz is a numeric .npy whose header's
    shape and dtype fit the bytes it stores (checked before numpy allocates anything)."""
    from numpy.lib import format as npy

    info = z.getinfo(member)
    if info.file_size > _MAX_INFLATION * max(info.compress_size, 1):
        raise UserError(f"{where}: claims {info.file_size} bytes from {info.compress_size} "
                        "compressed, more than deflate can give; refusing to inflate it")
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    with z.open(member) as f:
        try:
            version = npy.read_magic(f)
            if version not in readers:  # 3.0 exists only for structured dtypes
                raise ValueError(f".npy format version {version} is not read")
            shape, _, dtype = readers[version](f)
        except Exception as e:  # numpy's header parser raises many types on garbage
            raise UserError(f"{where}: unreadable .npy header ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
        header = f.tell() if f.seekable() else None
    if dtype.hasobject or dtype.kind not in "biufc":
        raise UserError(f"{where}: dtype {dtype} is not numeric (object or structured "
                        "arrays, which need pickle, are never loaded)")
    need = math.prod(shape) * dtype.itemsize
    if header is not None and info.file_size - header != need:
        raise UserError(f"{where}: its header says {dtype} {shape} ({need} bytes) but it "
                        f"stores {info.file_size - header}: truncated or corrupt")


def read_npz(path: str) -> dict:
    """Returns the arrays of an ``.npz`` file: numeric arrays only (pickled objects are
    refused), each checked against the bytes it stores before it is read."""
    out, member = {}, None
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                _check_npy_member(z, member, f"{path!r}: array {member[:-4]!r}")
        with np.load(path, allow_pickle=False) as npz:
            for member in npz.files:
                out[member] = npz[member]
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
            MemoryError) as e:  # ValueError: pickled objects, bad headers
        name = member[:-4] if member and member.endswith(".npy") else member
        where = f"array {name!r}: " if name is not None else ""
        raise UserError(f"cannot read npz {path!r}: {where}{type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    return out


def read_orbax(path: str) -> dict:
    """Returns an orbax checkpoint of tljax variables as ``params/...``, ``batch_stats/...``."""
    from tljax.checkpoint import restore_variables
    from tljax.weights.strict import flatten_variables

    try:
        return flatten_variables(restore_variables(path))
    except Exception as e:  # orbax raises many types for a bad directory
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read orbax checkpoint {path!r}: {first}") from None


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """Returns whether a file of ``size`` bytes starting with ``head`` (16 bytes) has the
    structure of safetensors: an 8-byte little-endian header length that fits the file,
    then the header's opening ``{``. Decided by structure, not by one byte: a header
    length whose first byte is 0x80 (4224 = 0x1080, one file in 256) would otherwise
    read as a pickle's protocol marker."""
    if len(head) < 10 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(size - 8, _MAX_SAFETENSORS_HEADER)


def read_file(path: str) -> dict:
    """Returns ``{name: np.ndarray}`` from the weights file (or orbax directory) at ``path``,
    in any known format; a Hugging Face model directory is ``tljax.weights.hub``'s."""
    if not os.path.exists(path):
        raise UserError(f"weights not found: {path!r}")
    if os.path.isdir(path):
        return read_orbax(path)
    with open(path, "rb") as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size
    if _looks_like_safetensors(head, size):  # before the one-byte pickle test: see there
        return read_safetensors(path)
    if head.startswith(_HDF5_MAGIC):
        return read_h5(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("data.pkl") for n in names):
            return torch_pickle.read(path)
        if names and all(n.endswith(".npy") for n in names):
            return read_npz(path)
        raise UserError(f"unknown weights format for {path!r} (a zip of neither torch nor npz); "
                        f"known: {', '.join(FORMATS)}")
    if head.startswith(b"PK\x03\x04"):  # a zip's first record, but no zip directory
        raise UserError(f"{path!r} starts as a zip (torch or npz) but has no zip directory: "
                        "truncated or corrupt")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return torch_pickle.read(path)  # PROTO 2-5: torch's legacy pickle stream
    if head[8:9] == b"{":  # a safetensors header whose length runs past the file
        return read_safetensors(path)  # names the problem
    raise UserError(f"unknown weights format for {path!r}; known: {', '.join(FORMATS)}")
