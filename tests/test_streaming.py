"""Streamed splits (tljax.data.streaming) give exactly what the in-memory path gives."""

import json
import os

import numpy as np
import pytest

from tljax import cli, data, models, probe
from tljax.data import datasets, streaming
from tljax.data import lazy as lazy_arrays

PREP = models.create("cnn", 10).preprocessing  # 16 px grey: digits are resized 8 -> 16


def _both(spec: str, **kw) -> tuple:
    """Returns ``(in-memory Dataset, streamed Dataset)`` of ``spec``."""
    return data.load(spec), streaming.load(spec, prep=PREP, stream_above_mb=0, **kw)


@pytest.mark.parametrize("spec", ["digits", "digits:5-9@gaussian_noise:3", "digits:6+8,5+7+9"])
def test_streamed_batches_equal_in_memory_batches_for_the_same_seed(spec):
    mem, lazy = _both(spec)
    assert lazy.num_classes == mem.num_classes and lazy.class_names == mem.class_names
    assert streaming.num_classes(spec) == mem.num_classes  # what planning reads
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(lazy.splits[name].labels, mem.splits[name].labels)
    y = mem.splits["train"].labels
    x_mem = data.preprocess(mem.splits["train"].images, PREP)
    x_lazy = data.preprocess(lazy.splits["train"].images, PREP)
    assert isinstance(x_lazy, lazy_arrays.ModelInputs) and x_lazy.shape == x_mem.shape
    # Resumed at batch 20 of ~19 per epoch: the order fast-forwards over an epoch boundary.
    for skip in (0, 20):
        ours = data.batches(x_lazy, y, 64, seed=7, skip=skip)
        theirs = data.batches(x_mem, y, 64, seed=7, skip=skip)
        for _ in range(25):
            (a, ya), (b, yb) = next(ours), next(theirs)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ya, yb)
    # One process's rows of every global batch (multi-host), and whole splits for eval.
    rows = np.arange(16, 48)
    a, ya = next(data.batches(x_lazy, y, 64, seed=1, rows=rows))
    b, yb = next(data.batches(x_mem, y, 64, seed=1, rows=rows))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    test_mem = data.preprocess(mem.splits["test"].images, PREP)
    np.testing.assert_array_equal(np.asarray(data.preprocess(lazy.splits["test"].images, PREP)),
                                  test_mem)


def test_streaming_reads_records_by_index_never_the_whole_split(monkeypatch):
    streaming.load("digits", prep=PREP, stream_above_mb=0)  # labels read, cached
    monkeypatch.setattr(datasets, "_read_split", lambda *a: pytest.fail("split read whole"))
    lazy = streaming.load("digits:0-4@translate:2", prep=PREP, stream_above_mb=0)
    split = lazy.splits["train"]
    source = split.images.source
    reads = []
    original = type(source).__getitems__
    monkeypatch.setattr(type(source), "__getitems__",
                        lambda self, keys: reads.append(len(keys)) or original(self, keys))
    x = data.preprocess(split.images, PREP)
    batches = data.batches(x, split.labels, 32, seed=0)
    for _ in range(3):
        images, _ = next(batches)
        assert images.shape == (32, 16, 16, 1) and images.dtype == np.float32
    assert reads and max(reads) <= 32


def test_threshold_streams_only_the_splits_above_it():
    # digits at 16 px grey: train 1.2 MB, val 0.17 MB, test 0.35 MB of float32 input.
    some = streaming.load("digits", prep=PREP, stream_above_mb=0.5)
    assert isinstance(some.splits["train"].images, lazy_arrays.Records)
    assert isinstance(some.splits["val"].images, np.ndarray)
    mem = data.load("digits")
    np.testing.assert_array_equal(some.splits["test"].images, mem.splits["test"].images)
    for never in (-1, 2048):  # off, and the default: digits is far below it
        ds = streaming.load("digits", prep=PREP, stream_above_mb=never)
        assert all(isinstance(s.images, np.ndarray) for s in ds.splits.values())


def test_concatenated_streamed_splits_stay_lazy_and_equal():
    mem, lazy = _both("digits")
    parts = [data.preprocess(lazy.splits[s].images, PREP) for s in ("train", "val")]
    joined = np.concatenate(parts)  # the sweep's final fit on train + val
    assert isinstance(joined, lazy_arrays.LazyArray) and len(joined) == len(parts[0]) + len(parts[1])
    expected = np.concatenate([data.preprocess(mem.splits[s].images, PREP)
                               for s in ("train", "val")])
    idx = np.array([0, len(parts[0]) - 1, len(parts[0]), len(expected) - 1, 5])
    np.testing.assert_array_equal(joined[idx], expected[idx])


def test_probe_features_of_a_streamed_split_are_written_to_the_cache_batch_by_batch(
        tmp_path, monkeypatch):
    from tljax import parallel

    mem, lazy = _both("digits")
    model = models.create("cnn", 10)
    variables = model.init(__import__("jax").random.key(0))
    x_lazy = data.preprocess(lazy.splits["val"].images, PREP)
    expected, _ = probe.extract_features(model.module, variables,
                                         data.preprocess(mem.splits["val"].images, PREP), 64,
                                         cache_dir="")
    filled = []
    original = parallel.batch_outputs

    def watched(*args):
        for start, out in original(*args):
            yield start, out
            # After the consumer wrote the previous batch, the file on disk holds it already.
            (tmp,) = [f for f in os.listdir(tmp_path) if f.endswith(".tmp.npy")]
            on_disk = np.load(tmp_path / tmp, mmap_mode="r")
            filled.append(int(np.any(on_disk != 0, axis=1).sum()))

    monkeypatch.setattr(parallel, "batch_outputs", watched)
    features, hit = probe.extract_features(model.module, variables, x_lazy, 64,
                                           cache_dir=str(tmp_path), key="k")
    assert not hit and filled == [64, 128, len(x_lazy)]  # three batches of the val split
    np.testing.assert_allclose(features, expected, rtol=1e-6, atol=1e-6)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".npy")] and not [
        f for f in os.listdir(tmp_path) if f.endswith(".tmp.npy")]
    again, hit = probe.extract_features(model.module, variables, x_lazy, 64,
                                        cache_dir=str(tmp_path), key="k")
    assert hit
    np.testing.assert_array_equal(again, features)

    def broken(*args):
        yield from list(original(*args))[:1]
        raise KeyboardInterrupt

    monkeypatch.setattr(parallel, "batch_outputs", broken)
    with pytest.raises(KeyboardInterrupt):
        probe.extract_features(model.module, variables, x_lazy, 64, cache_dir=str(tmp_path),
                               key="other")
    assert len(os.listdir(tmp_path)) == 1  # no partial file, no entry for "other"


def test_streamed_run_gives_the_in_memory_results(tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text(
        "from tljax import config\n"
        "def get_config():\n"
        "    return config.transfer(model='cnn', dataset='digits', seeds=[0], steps=12,\n"
        "        batch_size=32, strategies=['linear_probe', 'full_ft'], log_every=4,\n"
        "        checkpoint_every=6, probe_solver='ridge', eval_batch_size=64)\n")
    records = {}
    for mode, threshold in (("memory", -1), ("stream", 0)):
        assert cli.main(["run", str(config), "--workdir", str(tmp_path / mode), "--set",
                         f"stream_above_mb={threshold}"]) == 0
        records[mode] = [json.loads(line) for line in open(tmp_path / mode / "results.jsonl")]
    for a, b in zip(records["memory"], records["stream"]):
        assert a["strategy"] == b["strategy"] and a["status"] == b["status"] == "ok"
        assert a["metrics"] == b["metrics"] and a.get("history") == b.get("history")
        assert a["correct"] == b["correct"]
    assert not records["stream"][0]["probe"]["feature_cache_hit"]  # extracted, streamed


def test_worker_threads_scale_with_cores_where_an_accelerator_runs_the_step(monkeypatch):
    # On CPU the step's own threads need the cores: at most 4 readers. On a GPU host one
    # reader thread cannot feed the step, so up to 16; TLJAX_DATA_THREADS overrides both.
    import jax

    from tljax.data import lazy
    from tljax.errors import UserError

    monkeypatch.delenv("TLJAX_DATA_THREADS", raising=False)
    monkeypatch.setattr(lazy.os, "cpu_count", lambda: 64)
    assert lazy.threads() == 4
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert lazy.threads() == 16
    monkeypatch.setattr(lazy.os, "cpu_count", lambda: 6)
    assert lazy.threads() == 6
    monkeypatch.setenv("TLJAX_DATA_THREADS", "24")
    assert lazy.threads() == 24
    for bad in ("0", "four", "-2", "²"):
        monkeypatch.setenv("TLJAX_DATA_THREADS", bad)
        with pytest.raises(UserError, match=f"TLJAX_DATA_THREADS must be .* got '{bad}'"):
            lazy.threads()
