"""Hostile safetensors, npz and HDF5 files: each refused with one line naming the file
and the tensor, and nothing outside the file is ever read. No torch needed."""

import json
import struct
import zipfile

import h5py
import numpy as np
import pytest

from tljax import weights
from tljax.errors import UserError
from weight_forge import safetensors_bytes


def _refused(path, *fragments):
    """Asserts ``weights.read(path)`` raises one ``UserError`` line naming the file and
    each of ``fragments``; returns the message."""
    with pytest.raises(UserError) as err:
        weights.read(str(path))
    message = str(err.value)
    assert "\n" not in message and path.name in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- safetensors ---------------------------------------------------------------------

def _entry(dtype, shape, start, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


GOOD_DATA = np.arange(6, dtype=np.float32).tobytes()

BAD_SAFETENSORS = {
    "overlapping": ({"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [2], 8, 24)},
                    GOOD_DATA, ["'b'", "overlapping"]),
    "gap": ({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 16, 24)},
            GOOD_DATA, ["'b'", "gap"]),
    "past_the_end": ({"a": _entry("F32", [8], 0, 32)}, GOOD_DATA, ["'a'", "truncated"]),
    "negative_offset": ({"a": _entry("F32", [2], -8, 0)}, GOOD_DATA, ["'a'", "data_offsets"]),
    "start_after_end": ({"a": _entry("F32", [0], 16, 8)}, GOOD_DATA, ["'a'", "data_offsets"]),
    "shape_vs_bytes": ({"a": _entry("F32", [5], 0, 24)}, GOOD_DATA, ["'a'", "needs 20"]),
    "dtype_vs_bytes": ({"a": _entry("F64", [6], 0, 24)}, GOOD_DATA, ["'a'", "needs 48"]),
    "negative_dim": ({"a": _entry("F32", [-6], 0, 24)}, GOOD_DATA, ["'a'", "shape"]),
    "float_dim": ({"a": _entry("F32", [6.0], 0, 24)}, GOOD_DATA, ["'a'", "shape"]),
    "huge_dims": ({"a": _entry("F32", [1 << 31, 1 << 31, 0], 0, 0),
                   "b": _entry("F32", [6], 0, 24)}, GOOD_DATA, ["'a'", "shape"]),
    "unknown_dtype": ({"a": _entry("O", [6], 0, 24)}, GOOD_DATA, ["'a'", "unsupported dtype"]),
    "entry_not_a_dict": ({"a": [0, 24]}, GOOD_DATA, ["'a'", "not {dtype"]),
    "missing_offsets": ({"a": {"dtype": "F32", "shape": [6]}}, GOOD_DATA, ["'a'"]),
    "trailing_bytes": ({"a": _entry("F32", [4], 0, 16)}, GOOD_DATA, ["cover 16 bytes"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_safetensors_with_inconsistent_offsets_shapes_or_dtypes_is_refused(tmp_path, case):
    header, data, fragments = BAD_SAFETENSORS[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    _refused(path, *fragments)


def test_safetensors_with_a_lying_or_hostile_header_is_refused(tmp_path):
    path = tmp_path / "huge_len.safetensors"
    path.write_bytes(safetensors_bytes({"a": _entry("F32", [6], 0, 24)}, GOOD_DATA,
                                       header_len=1 << 62))
    _refused(path, "header length", "runs past the file")
    path = tmp_path / "deep.safetensors"
    text = b"{" + b'"a":[' * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    _refused(path, "corrupt safetensors header")
    path = tmp_path / "twice.safetensors"
    text = b'{"a": %s, "a": %s}' % ((json.dumps(_entry("F32", [6], 0, 24)).encode(),) * 2)
    path.write_bytes(struct.pack("<Q", len(text)) + text + GOOD_DATA)
    _refused(path, "'a' is named twice")
    path = tmp_path / "latin1.safetensors"
    text = b'{"\xe9": 1}'
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    _refused(path, "corrupt safetensors header")


def test_safetensors_cut_short_is_named_truncated(tmp_path):
    from safetensors.numpy import save_file

    save_file({"w": np.ones((4, 4), np.float32)}, str(tmp_path / "ok.safetensors"))
    raw = (tmp_path / "ok.safetensors").read_bytes()
    for cut in (len(raw) - 4, 20, 9):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(raw[:cut])
        _refused(path, "truncated")


def test_safetensors_of_every_supported_dtype_reads_exactly(tmp_path):
    import ml_dtypes

    arrays = {"bf16": np.arange(3).astype(ml_dtypes.bfloat16), "u16": np.arange(2, dtype=np.uint16),
              "empty": np.zeros((0, 3), np.float32), "b": np.array([True, False])}
    header, data = {}, b""
    names = {"bfloat16": "BF16", "uint16": "U16", "float32": "F32", "bool": "BOOL"}
    for name, a in arrays.items():
        header[name] = _entry(names[a.dtype.name], list(a.shape), len(data), len(data) + a.nbytes)
        data += a.tobytes()
    path = tmp_path / "all.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    got = weights.read(str(path))
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        assert got[name].tobytes() == a.tobytes()


# --- npz -----------------------------------------------------------------------------

def _npy(header: dict, data: bytes) -> bytes:
    text = repr(header).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def test_npz_with_pickled_or_non_numeric_arrays_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, w=np.array([{"a": 1}, None], dtype=object))
    _refused(path, "array 'w'", "not numeric")
    path = tmp_path / "strings.npz"
    np.savez(path, w=np.array(["a", "b"]))
    _refused(path, "array 'w'", "not numeric")


def test_npz_whose_header_lies_about_its_size_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", _npy({"descr": "<f4", "fortran_order": False,
                                  "shape": (1 << 40,)}, b"\0" * 16))
    _refused(path, "array 'w'", "4398046511104 bytes", "stores 16")
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", _npy({"descr": "<f4", "fortran_order": False, "shape": (8,)},
                                 b"\0" * 16))
    _refused(path, "array 'w'", "stores 16")


def test_npz_with_a_corrupt_header_or_member_is_refused(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, w=np.random.default_rng(0).normal(size=1000).astype(np.float32))
    raw = path.read_bytes()
    for pos, fragment in ((100, "unreadable .npy header"), (len(raw) // 2, "Bad CRC-32")):
        bad = bytearray(raw)
        bad[pos] ^= 0xFF  # inside the deflated member: its header, then its data
        (tmp_path / f"bad{pos}.npz").write_bytes(bytes(bad))
        _refused(tmp_path / f"bad{pos}.npz", "array 'w'", fragment)


# --- HDF5 ----------------------------------------------------------------------------

def _secret(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.array([11, 22, 33, 44], np.float32).tobytes())
    return secret


def test_h5_dataset_with_external_storage_is_refused(tmp_path):
    secret = _secret(tmp_path)
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as f:
        f["model_weights/dense/dense/bias:0"] = np.zeros(2, np.float32)
        f.create_dataset("model_weights/dense/dense/kernel:0", shape=(4,), dtype="f4",
                         external=[(str(secret), 0, 16)])
    message = _refused(path, "dense/dense/kernel:0", "external storage", "secret.bin")
    assert "11" not in message.replace(str(tmp_path), "")  # no secret value leaks


def test_h5_virtual_datasets_and_links_out_of_the_file_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.array([11, 22, 33], np.float32)
        f["model_weights/w"] = np.array([11, 22, 33], np.float32)
    path = tmp_path / "virtual.h5"
    with h5py.File(path, "w") as f:
        layout = h5py.VirtualLayout(shape=(3,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(3,))
        f.create_virtual_dataset("model_weights/v", layout)
    _refused(path, "dataset 'v'", "virtual dataset")
    path = tmp_path / "extlink.h5"
    with h5py.File(path, "w") as f:
        f["model_weights/a/kernel:0"] = np.ones(2, np.float32)
        f["model_weights/a/bias:0"] = h5py.ExternalLink(str(other), "/data")
    _refused(path, "'a/bias:0' is an external link", "other.h5:/data")
    path = tmp_path / "rootlink.h5"
    with h5py.File(path, "w") as f:
        f["model_weights"] = h5py.ExternalLink(str(other), "/model_weights")
    _refused(path, "'model_weights' is a soft or external link")
    path = tmp_path / "softlink.h5"
    with h5py.File(path, "w") as f:
        f["optimizer_weights/m"] = np.ones(2, np.float32)
        f["model_weights/a/kernel:0"] = h5py.SoftLink("/optimizer_weights/m")
    _refused(path, "'a/kernel:0' is a soft link", "/optimizer_weights/m")


def test_h5_datasets_needing_plugins_or_claiming_absent_bytes_are_refused(tmp_path):
    path = tmp_path / "plugin.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("w", shape=(4,), dtype="f4", chunks=(4,), compression=32015,
                              allow_unknown_filter=True)  # zstd: a plugin, not built in
        ds.id.write_direct_chunk((0,), b"\0" * 16)
    _refused(path, "dataset 'w'", "filter 32015")
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:  # 256 MiB declared, nothing stored: reads as zeros
        f.create_dataset("w", shape=(1 << 26,), dtype="f4", chunks=(1 << 16,))
    _refused(path, "dataset 'w'", "declares 268435456 bytes", "stores 0")
    path = tmp_path / "strings.h5"
    with h5py.File(path, "w") as f:
        f["w"] = np.array([b"a", b"b"])
    _refused(path, "dataset 'w'", "not a numeric tensor")


def test_h5_compressed_and_plain_datasets_still_read_exactly(tmp_path):
    path = tmp_path / "ok.h5"
    kernel = np.arange(24, dtype=np.float32).reshape(4, 6)
    with h5py.File(path, "w") as f:
        f.create_dataset("model_weights/d/d/kernel:0", data=kernel, compression="gzip",
                         shuffle=True)
        f["model_weights/d/d/bias:0"] = np.zeros(6, np.float16)
        f["optimizer_weights/ignored"] = np.ones(3)
    got = weights.read(str(path))
    assert sorted(got) == ["d/d/bias:0", "d/d/kernel:0"]
    np.testing.assert_array_equal(got["d/d/kernel:0"], kernel)
    assert got["d/d/bias:0"].dtype == np.float16


def test_h5_cut_short_is_refused(tmp_path):
    path = tmp_path / "ok.h5"
    with h5py.File(path, "w") as f:
        f["model_weights/w"] = np.arange(4096, dtype=np.float32)
    raw = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(raw[: len(raw) // 2])
    _refused(cut, "corrupt or truncated")
