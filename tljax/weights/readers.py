"""Weight files -> flat ``{stored name: np.ndarray}``, by format, without torch or TF.

The format is told from the content, not the suffix: an orbax directory, safetensors
(8-byte header length + JSON), HDF5 (Keras ``.h5``), ``.npz`` (a zip of ``.npy``), and
torch checkpoints (a zip with ``data.pkl``, or the legacy pickle stream).
"""

import json
import os
import struct
import zipfile

import numpy as np

from tljax.errors import UserError
from tljax.weights import torch_pickle

FORMATS = ("orbax directory", "safetensors", "torch .pth/.bin (zip or legacy)", "npz",
           "keras .h5")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def read_safetensors(path: str) -> dict:
    """Returns the tensors of a safetensors file (bfloat16 kept, via ml_dtypes)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise UserError(f"{path!r}: corrupt safetensors header ({e})") from None
        data = f.read()
    import ml_dtypes

    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in dtypes:
            raise UserError(f"{path!r}: tensor {name!r} has unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        if end > len(data):
            raise UserError(f"{path!r} is truncated: tensor {name!r} ends past the file")
        out[name] = np.frombuffer(data[start:end], dtype=dtypes[meta["dtype"]]).reshape(
            meta["shape"]).copy()
    return out


def read_npz(path: str) -> dict:
    """Returns the arrays of an ``.npz`` file (pickled objects refused)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        raise UserError(f"cannot read npz {path!r}: {e}") from None


def read_h5(path: str) -> dict:
    """Returns every dataset of an HDF5 file by its path (Keras: ``layer/layer/kernel:0``)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj)

        root.visititems(visit)
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


def read(path: str) -> dict:
    """Returns ``{name: np.ndarray}`` from the weights at ``path``, in any known format."""
    if not os.path.exists(path):
        raise UserError(f"weights not found: {path!r}")
    if os.path.isdir(path):
        return read_orbax(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
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
    if head[:1] == b"\x80":  # a pickle protocol marker: torch's legacy format
        return torch_pickle.read(path)
    if _is_safetensors(head, size):
        return read_safetensors(path)
    raise UserError(f"unknown weights format for {path!r}; known: {', '.join(FORMATS)}")
