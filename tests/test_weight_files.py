"""Weight files read exactly, without torch, and never run code they carry.

Hostile torch checkpoints are built byte by byte (``weight_forge``), so every safety test
here runs where torch is not installed; only the round trips against torch's own
writer need it (the ``torch`` fixture skips them).
"""

import collections
import json
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from tljax import cli, models, weights
from tljax.errors import UserError
from weight_forge import (Call, Global, Storage, safetensors_bytes, storage_of, tensor,
                          write_legacy, write_zip)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def torch():
    """Returns the torch module; skips the test where torch is not installed."""
    return pytest.importorskip("torch")


def _reference_tensors(torch):
    """Tensors of every dtype, plus views and non-contiguous ones sharing storages."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(2, 3, generator=g, dtype=torch.float64),
        "f16": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "i64": torch.arange(7),
        "i32": torch.arange(-3, 3, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "c64": torch.complex(torch.ones(2), torch.arange(2.0)),
        "scalar": torch.tensor(3.5),
        "transposed": base.t(),             # non-contiguous view
        "row_slice": base[2:4],             # view at an offset into a shared storage
        "strided": base[::2, 1::2],         # strided view
        "whole": base,
        "expanded": torch.arange(4.0).expand(3, 4),  # stride 0, as position_ids buffers
        "conv.weight": torch.nn.Parameter(torch.randn(2, 3, 3, 3, generator=g)),
    }
    return tensors


def _as_numpy(t, torch):
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.detach().float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_checkpoints_read_exactly_without_torch(tmp_path, zip_format, torch):
    tensors = _reference_tensors(torch)
    path = tmp_path / "model.pth"
    torch.save({"state_dict": tensors}, path, _use_new_zipfile_serialization=zip_format)
    expected = {k: _as_numpy(v, torch) for k, v in tensors.items()}
    np.savez(tmp_path / "expected.npz", **{k: v.view(np.uint16) if v.dtype.name == "bfloat16"
                                            else v for k, v in expected.items()})
    # A fresh process in which `import torch` fails: the reader must not need it.
    script = f"""
import sys
sys.modules["torch"] = None
import numpy as np
from tljax.weights import read
got = read({str(path)!r})
want = np.load({str(tmp_path / "expected.npz")!r})
assert "torch" not in sys.modules or sys.modules["torch"] is None
assert sorted(got) == sorted(want.files), (sorted(got), want.files)
for k in want.files:
    g = got[k].view(np.uint16) if got[k].dtype.name == "bfloat16" else got[k]
    assert g.dtype == want[k].dtype and g.shape == want[k].shape, (k, g.dtype, want[k].dtype)
    assert g.tobytes() == np.ascontiguousarray(want[k]).tobytes(), k
print("ok", len(got))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"ok {len(tensors)}"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _malicious_legacy(path):
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f)
        pickle.dump(1001, f)
        pickle.dump({"little_endian": True}, f)
        pickle.dump({"weight": _Exploit()}, f)


def _malicious_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"weight": _Exploit()}))
        z.writestr("archive/byteorder", "little")


@pytest.mark.parametrize("make", [_malicious_legacy, _malicious_zip], ids=["legacy", "zip"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    make("evil.pth")
    with pytest.raises(UserError, match=r"refusing to load .*evil.pth.*(posix|os|nt)\.system"):
        weights.read("evil.pth")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_and_foreign_files_are_named(tmp_path, fmt):
    weight, bias = storage_of("0", np.ones(6, np.float32)), storage_of("1", np.zeros(2, np.float32))
    good = _write(fmt, tmp_path / "good.pth", {"weight": tensor(weight, 0, (2, 3), (3, 1)),
                                               "bias": tensor(bias, 0, (2,), (1,))},
                  [weight, bias])
    assert sorted(weights.read(good)) == ["bias", "weight"]
    raw = (tmp_path / "good.pth").read_bytes()
    for cut in (len(raw) - 10, len(raw) // 2, 40, 1):
        (tmp_path / "cut.pth").write_bytes(raw[:cut])
        _refused(tmp_path / "cut.pth", "truncated")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="unknown weights format .*notes.txt.*; known: orbax"):
        weights.read(str(tmp_path / "notes.txt"))


def test_safetensors_and_npz_read_exactly(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "b": np.array([1, 2], np.int64), "c": np.array([1.5], np.float16)}
    save_file(arrays, str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", **arrays)
    for name in ("w.safetensors", "w.npz"):
        got = weights.read(str(tmp_path / name))
        assert sorted(got) == sorted(arrays)
        for k in arrays:
            assert got[k].dtype == arrays[k].dtype
            np.testing.assert_array_equal(got[k], arrays[k])


def test_torch_resnet_file_with_wrong_shape_and_missing_tensor_names_each(tmp_path, torch):
    model = models.create("resnet18", 10)
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    state = {}
    # A torchvision-layout state dict made from tljax's own variables (inverse layouts).
    for name, array in weights.flatten_variables(variables).items():
        collection, top, *rest = name.split("/")
        if top == "head":
            rest = ["fc"] + rest
        module, leaf = ".".join(rest[:-1]), rest[-1]
        if leaf == "kernel":
            array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
            leaf = "weight"
        leaf = {"scale": "weight", "mean": "running_mean", "var": "running_var"}.get(leaf, leaf)
        state[f"{module}.{leaf}"] = torch.from_numpy(np.array(array))
    torch.save(state, tmp_path / "ok.pth")
    loaded = weights.load(str(tmp_path / "ok.pth"), variables, model.torch_names, keep_head=True)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(a, b)

    del state["layer2.0.conv1.weight"]
    state["layer3.1.bn2.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError) as err:
        weights.load(str(tmp_path / "bad.pth"), variables, model.torch_names)
    message = str(err.value)
    assert "missing: params/backbone/layer2/0/conv1/kernel (3, 3, 64, 128)" in message
    assert ("mis-shaped: params/backbone/layer3/1/bn2/bias (7,) in weights vs (256,) in model"
            in message)


# --- crafted torch checkpoints (no torch needed) -------------------------------------

def _four():
    return storage_of("0", np.arange(4, dtype=np.float32))


def _write(fmt, path, obj, storages, **kw):
    return (write_zip if fmt == "zip" else write_legacy)(path, obj, storages, **kw)


def _refused(path, *fragments):
    """Asserts ``weights.read(path)`` raises one ``UserError`` line naming the file and
    each of ``fragments``; returns the message."""
    with pytest.raises(UserError) as err:
        weights.read(str(path))
    message = str(err.value)
    assert "\n" not in message and os.path.basename(str(path)) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


OUT_OF_BOUNDS = {  # (offset, size, stride) of a view of a 4-element storage
    "negative_stride": (3, (64,), (-1,)),  # read heap bytes before the fix
    "negative_stride_from_0": (0, (2,), (-1,)),
    "negative_offset": (-2, (4,), (1,)),
    "offset_past_end": (4, (1,), (1,)),
    "scalar_past_end": (9, (), ()),
    "stride_past_end": (0, (2, 2), (2, 3)),
    "huge_stride": (0, (2,), (1 << 62,)),
    "negative_size": (0, (-4,), (1,)),
    "huge_empty_shape": (0, (1 << 40, 1 << 40, 0), (1, 1, 1)),
    "size_and_stride_differ_in_length": (0, (2, 2), (1,)),
    "float_size": (0, (4.0,), (1,)),
}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(OUT_OF_BOUNDS))
def test_views_reaching_outside_their_storage_are_refused(tmp_path, case, fmt):
    offset, size, stride = OUT_OF_BOUNDS[case]
    s = _four()
    path = _write(fmt, tmp_path / f"{case}.pth", {"good": tensor(s, 0, (4,), (1,)),
                                                 "w": tensor(s, offset, size, stride)}, [s])
    _refused(path, "tensor 'w'")


def test_views_inside_their_storage_read_exactly(tmp_path):
    a = np.arange(12, dtype=np.float32)
    big = np.arange(3000 * 1500, dtype=np.float32)  # one index array would be too large
    s, b = storage_of("0", a), storage_of("1", big)
    views = {"t": tensor(s, 0, (4, 3), (1, 4)), "offset": tensor(s, 2, (2, 3), (3, 1)),
             "broadcast": tensor(s, 0, (3, 4), (0, 1)), "reversed": tensor(s, 11, (12,), (-1,)),
             "scalar": tensor(s, 5, (), ()), "empty": tensor(s, 0, (0, 3), (3, 1)),
             "big_t": tensor(b, 0, (1500, 3000), (1, 1500)),
             "unit_dim": tensor(s, 1, (1, 3, 2), (1 << 70, 1, 3)),  # its stride is never used
             "every_other": tensor(s, 1, (2, 2), (6, 2))}
    want = {"t": a.reshape(3, 4).T, "offset": a[2:8].reshape(2, 3),
            "broadcast": np.broadcast_to(a[:4], (3, 4)), "reversed": a[::-1],
            "scalar": np.float32(5), "empty": np.zeros((0, 3), np.float32),
            "big_t": big.reshape(3000, 1500).T, "unit_dim": a[1:7].reshape(2, 3).T[None],
            "every_other": a[1:].reshape(-1)[[[0, 2], [6, 8]]]}
    for fmt in ("zip", "legacy"):
        got = weights.read(_write(fmt, tmp_path / f"views.{fmt}.pth", views, [s, b]))
        for name, expected in want.items():
            assert got[name].shape == np.shape(expected), name
            np.testing.assert_array_equal(got[name], expected, err_msg=name)


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "a/b", "", 1.5])
def test_storage_keys_that_are_not_plain_names_are_refused(tmp_path, key):
    s = Storage(key, b"\0" * 16)
    records = {f"archive/data/{key}": b"\0" * 16}  # present, so only the name check stops it
    path = write_zip(tmp_path / "key.pth", {"w": tensor(s, 0, (4,), (1,))}, [], records=records)
    _refused(path, "is not a plain name")
    _refused(write_legacy(tmp_path / "key_legacy.pth", {"w": tensor(s, 0, (4,), (1,))}, [s]),
             "is not a plain name")


def test_zip_storage_records_of_the_wrong_size_or_order_are_refused(tmp_path):
    s = _four()
    obj = {"w": tensor(s, 0, (4,), (1,))}
    for size in (8, 32):
        path = write_zip(tmp_path / f"size{size}.pth", obj, [],
                         records={"archive/data/0": b"\0" * size})
        _refused(path, "tensor 'w'", f"holds {size} bytes where the pickle declares 16")
    _refused(write_zip(tmp_path / "none.pth", obj, [], records={}), "tensor 'w'", "lacks")
    _refused(write_zip(tmp_path / "big.pth", obj, [s], byteorder=b"big"), "little-endian")
    twice = Storage("0", b"\0" * 16, numel=2)
    _refused(write_zip(tmp_path / "twice.pth", {"w": tensor(s, 0, (4,), (1,)),
                                                "v": tensor(twice, 0, (2,), (1,))}, [s]),
             "declared both as 16 and as 8 bytes")


def test_legacy_storage_sections_with_lying_sizes_are_refused(tmp_path):
    s = _four()
    obj = {"w": tensor(s, 0, (4,), (1,))}
    for numel in (1 << 40, -1, 3):
        path = write_legacy(tmp_path / f"n{numel}.pth", obj, [s], sections=[(numel, s.data)])
        _refused(path, "tensor 'w'", f"has {numel} elements where the pickle declares 4")
    huge = Storage("0", b"\0" * 16, numel=1 << 40)
    path = write_legacy(tmp_path / "huge.pth", {"w": tensor(huge, 0, (4,), (1,))}, [huge])
    _refused(path, "tensor 'w'", "cut short")
    path = write_legacy(tmp_path / "be.pth", obj, [s])
    raw = (tmp_path / "be.pth").read_bytes()
    header = pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    (tmp_path / "be.pth").write_bytes(raw.replace(header, pickle.dumps(
        {"protocol_version": 1001, "little_endian": False}, protocol=2)))
    _refused(tmp_path / "be.pth", "big-endian")
    other = Storage("9", b"\0" * 16)
    path = write_legacy(tmp_path / "unknown.pth", obj, [other])
    _refused(path, "storage '9', which no tensor uses")


def test_legacy_pickle_claiming_more_bytes_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "claims.pth"
    # The magic number, then BINBYTES8 announcing 2**62 bytes: the reader must not try
    # to allocate them.
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
                     + b"\x80\x04\x8e" + (1 << 62).to_bytes(8, "little") + b"\0" * 16)
    _refused(path, "cannot read torch checkpoint", "truncated")


def _raw_zip(path, pkl: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
    return str(path)


def test_deeply_nested_and_exponential_pickles_are_refused(tmp_path):
    n = 100_000  # dicts nested n deep: built by the unpickler without recursion
    deep = b"\x80\x02" + b"}X\x01\x00\x00\x00a" * n + b"}" + b"s" * n + b"."
    _refused(_raw_zip(tmp_path / "deep.pth", deep), "nested deeper than")
    s = _four()
    d = {"t": tensor(s, 0, (4,), (1,))}
    for _ in range(40):  # 2**40 paths through 80 shared dicts
        d = {"a": d, "b": d}
    _refused(write_zip(tmp_path / "laughs.pth", d, [s]), "more than 1000000 dict entries")
    lists = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    _refused(_raw_zip(tmp_path / "lists.pth", lists), "holds no tensors")
    self_ref = b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s."  # d = {}; d["a"] = d
    _refused(_raw_zip(tmp_path / "cycle.pth", self_ref), "nested deeper than")


def test_pickle_cannot_rewrite_a_checked_tensor_or_call_other_rebuilds(tmp_path):
    s = _four()
    rebuilt = Call(Global("torch._utils", "_rebuild_tensor_v2"), s, 0, (4,), (1,), False,
                   collections.OrderedDict(), state={"size": (64,), "stride": (-1,)})
    _refused(write_zip(tmp_path / "build.pth", {"w": rebuilt}, [s]), "sets state")
    other = Call(Global("torch._tensor", "_rebuild_from_type_v2"),
                 Global("collections", "OrderedDict"), Global("torch", "Tensor"), (), {})
    _refused(write_zip(tmp_path / "from_type.pth", {"w": other}, []),
             "a function other than a tensor rebuild")
    pid = Call(Global("torch._utils", "_rebuild_tensor_v2"), "not a storage", 0, (4,), (1,),
               False, collections.OrderedDict())
    _refused(write_zip(tmp_path / "pid.pth", {"w": pid}, []), "tensor 'w'", "not a storage")


# --- the CLI: one line, exit 2, nothing written ---------------------------------------

def _crafted(kind, tmp_path):
    """Returns the path of a hostile file of ``kind`` (items 1-2 of the audit)."""
    s = _four()
    if kind in ("negative_stride.zip", "negative_stride.legacy"):
        fmt = kind.split(".")[1]
        return _write(fmt, tmp_path / f"bad_{fmt}.pth", {"w": tensor(s, 3, (64,), (-1,))}, [s])
    import h5py

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\1" * 64)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("model_weights/w", shape=(16,), dtype="f4",
                         external=[(str(secret), 0, 64)])
    return str(tmp_path / "bad.h5")


CRAFTED = ["negative_stride.zip", "negative_stride.legacy", "h5_external_storage"]


def _one_line_exit_2(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    # One error line (a first use may print "preparing dataset" before it).
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]], err
    return err.splitlines()[-1]


@pytest.mark.parametrize("kind", CRAFTED)
def test_convert_refuses_crafted_files_with_one_line(tmp_path, capsys, kind):
    bad = _crafted(kind, tmp_path)
    line = _one_line_exit_2(["convert", bad, str(tmp_path / "out"), "--model", "cnn"], capsys)
    assert os.path.basename(bad) in line and ("tensor 'w'" in line or "dataset 'w'" in line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", CRAFTED)
def test_run_refuses_crafted_weights_with_one_line(tmp_path, capsys, kind):
    bad = _crafted(kind, tmp_path)
    config = os.path.join(ROOT, "experiments", "lp_vs_ft_self_pretrained.py")
    line = _one_line_exit_2(["run", config, "--set", "pretrain.dataset=\"\"", f"weights={bad}",
                             "--workdir", str(tmp_path / "w")], capsys)
    assert os.path.basename(bad) in line and ("tensor 'w'" in line or "dataset 'w'" in line)
    assert not (tmp_path / "w" / "results.jsonl").exists()


def test_safety_tests_run_where_torch_is_absent():
    """With ``import torch`` failing, every hostile-file test runs and passes; only the
    round trips through torch's own writer skip."""
    script = "import sys; sys.modules['torch'] = None; import pytest; sys.exit(pytest.main())"
    proc = subprocess.run(
        [sys.executable, "-c", script, "-q", "-p", "no:cacheprovider",
         "tests/test_weight_files.py", "tests/test_weight_formats.py",
         "-k", "not torch_is_absent and not run_refuses"],
        cwd=ROOT, capture_output=True, text=True)
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    counts = {word: int(n) for n, word in
              (part.split()[:2] for part in summary.split(" in ")[0].split(", "))}
    # Only the three round trips through torch's own writer may skip.
    assert counts.get("skipped") == 3 and counts.get("passed", 0) >= 60, summary


def test_a_safetensors_header_length_starting_with_0x80_is_read_as_safetensors(tmp_path):
    """The format is told by structure, not by one byte: a header of 4224 bytes (0x1080)
    starts the file with 0x80, a pickle's protocol marker (one valid file in 256)."""
    from safetensors.numpy import load_file

    values = np.arange(4, dtype=np.float32)
    header = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "__metadata__": {"pad": ""}}
    header["__metadata__"]["pad"] = "x" * (0x1080 - len(json.dumps(header).encode()))
    raw = safetensors_bytes(header, values.tobytes())
    assert raw[:2] == b"\x80\x10"
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw)
    np.testing.assert_array_equal(load_file(str(path))["w"], values)  # valid, says its reader
    np.testing.assert_array_equal(weights.read(str(path))["w"], values)
