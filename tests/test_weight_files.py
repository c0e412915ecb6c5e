"""Weight files read exactly, without torch, and never run code they carry."""

import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from tljax import models, weights
from tljax.errors import UserError

torch = pytest.importorskip("torch")


def _reference_tensors():
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
        "conv.weight": torch.nn.Parameter(torch.randn(2, 3, 3, 3, generator=g)),
    }
    return tensors


def _as_numpy(t):
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.detach().float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_checkpoints_read_exactly_without_torch(tmp_path, zip_format):
    tensors = _reference_tensors()
    path = tmp_path / "model.pth"
    torch.save({"state_dict": tensors}, path, _use_new_zipfile_serialization=zip_format)
    expected = {k: _as_numpy(v) for k, v in tensors.items()}
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


def test_truncated_and_foreign_files_are_named(tmp_path):
    model = torch.nn.Linear(3, 2)
    good = tmp_path / "good.pth"
    torch.save(model.state_dict(), good, _use_new_zipfile_serialization=False)
    raw = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) - 10])
    with pytest.raises(UserError, match="cut.pth.* truncated"):
        weights.read(str(tmp_path / "cut.pth"))
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


def test_torch_resnet_file_with_wrong_shape_and_missing_tensor_names_each(tmp_path):
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
