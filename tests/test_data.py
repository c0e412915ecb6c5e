"""The built-in digits dataset, class-subset views and preprocessing."""

import numpy as np
import pytest

from tljax import data, models
from tljax.errors import UserError


def test_digits_splits_are_disjoint_complete_and_stratified():
    ds = data.load("digits")
    sizes = {k: len(v.labels) for k, v in ds.splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=10)
    assert ds.num_classes == 10
    for split in ds.splits.values():
        assert split.images.shape[1:] == (8, 8, 1) and split.images.dtype == np.uint8
        assert set(np.unique(split.labels)) == set(range(10))
    # Real digits, not noise: the sklearn originals scaled to 0..255.
    from sklearn.datasets import load_digits

    originals = {tuple(np.round(im * 255 / 16).astype(np.uint8).ravel()) for im in load_digits().images}
    train = ds.splits["train"].images
    assert all(tuple(im.ravel()) in originals for im in train[:50])
    test = {tuple(im.ravel()) for im in ds.splits["test"].images}
    assert len(test & {tuple(im.ravel()) for im in train}) < 5  # a few true duplicates exist


def test_digits_splits_are_the_same_every_load():
    a, b = data.load("digits:0-4"), data.load("digits:0-4")
    np.testing.assert_array_equal(a.splits["train"].labels, b.splits["train"].labels)


def test_class_subset_relabels_in_the_given_order():
    full, sub = data.load("digits"), data.load("digits:7,2")
    assert sub.num_classes == 2 and sub.class_names == ("7", "2")
    want = full.splits["test"].labels
    want = want[np.isin(want, [7, 2])]
    np.testing.assert_array_equal(sub.splits["test"].labels, np.where(want == 7, 0, 1))


def test_classes_joined_by_plus_share_one_label():
    """A superclass (BREEDS-style subpopulation shifts): each '+' group is one label."""
    full, sub = data.load("digits"), data.load("digits:6+8,5+7+9")
    assert sub.num_classes == 2 and sub.class_names == ("6+8", "5+7+9")
    want = full.splits["test"].labels
    want = want[np.isin(want, [5, 6, 7, 8, 9])]
    np.testing.assert_array_equal(sub.splits["test"].labels, np.where(np.isin(want, [6, 8]), 0, 1))


@pytest.mark.parametrize("spec,match", [("digits:0-x", "bad class subset"),
                                        ("digits:3", "two or more"),
                                        ("digits:3+4", "two or more"),
                                        ("digits:0+2,2+4", "each class in one of them"),
                                        ("digits:0+11,1", "class 11 is not in dataset"),
                                        ("digits:0-12", "class 10 is not in dataset"),
                                        ("no_such_dataset", "unknown dataset 'no_such_dataset'")])
def test_bad_dataset_specs_are_named(spec, match):
    with pytest.raises(UserError, match=match):
        data.load(spec)


def test_preprocess_resizes_grey_to_rgb_and_normalises():
    prep = models.create("resnet18", 2, image_size=24).preprocessing
    images = np.full((3, 8, 8, 1), 255, np.uint8)
    x = data.preprocess(images, prep)
    assert x.shape == (3, 24, 24, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 5, 5], (1 - np.array(prep.mean)) / np.array(prep.std),
                               rtol=1e-5)
    with pytest.raises(UserError, match="rank 3 .* or 4"):
        data.preprocess(np.zeros((2, 2, 2, 2, 1), np.uint8), prep)


def test_batches_cover_an_epoch_without_repeats_and_depend_on_seed_only():
    x = np.arange(10)[:, None]
    y = np.arange(10)
    it = data.batches(x, y, 5, seed=3)
    epoch = np.concatenate([next(it)[1] for _ in range(2)])
    assert sorted(epoch) == list(range(10))
    again = data.batches(x, y, 5, seed=3)
    np.testing.assert_array_equal(next(again)[1], epoch[:5])
    with pytest.raises(UserError, match="batch_size 11 is larger than the training split"):
        next(data.batches(x, y, 11, seed=0))


def test_first_use_says_in_tljax_words_that_digits_is_built_locally(tmp_path):
    # Issue 8 item 19: no absl "Variant folder ... has no dataset_info.json" warning and no
    # tfds "Downloading and preparing dataset Unknown size" banner; one tljax line instead.
    import os
    import subprocess
    import sys

    env = dict(os.environ, TLJAX_DATA_DIR=str(tmp_path))
    code = "from tljax import data; data.load('digits'); data.load('digits:0-4')"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env=env)
    both = first.stdout + first.stderr
    for noise in ("dataset_info.json", "WARNING:absl", "Downloading and preparing",
                  "downloaded and prepared", "Unknown size"):
        assert noise not in both, both
    line = (f"tljax: preparing the built-in dataset 'digits' (scikit-learn's bundled handwritten "
            f"digits; no download) in {tmp_path}")
    assert first.stderr.count(line) == 1, first.stderr
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env=env)
    assert "preparing" not in again.stdout + again.stderr  # prepared once, then only read


def test_resize_runs_on_the_host_cpu_whatever_the_default_backend(monkeypatch):
    # On a GPU host the resize must stay on the CPU threads that feed the step (no image to
    # the GPU and back) and round as a CPU run does: the resize is called with the CPU as
    # the default device, so its program runs there.
    import jax

    from tljax.data import pipeline

    real, placed = pipeline._resizer, []

    def recording(shape, size):
        one = real(shape, size)

        def call(image):
            placed.append(jax.config.jax_default_device)
            return one(image)
        return call

    monkeypatch.setattr(pipeline, "_resizer", recording)
    monkeypatch.setattr(pipeline, "_DISPATCH", 2)  # two rounds of calls in flight
    x = np.random.default_rng(0).random((3, 9, 9, 3)).astype(np.float32)
    out = pipeline.resize(x, 4)
    assert placed == [jax.local_devices(backend="cpu")[0]] * 3
    np.testing.assert_array_equal(out, np.stack([np.asarray(real((9, 9, 3), 4)(im)) for im in x]))


def test_resize_runs_where_jax_was_started_without_its_cpu_backend(monkeypatch):
    # JAX_PLATFORMS=cuda leaves no CPU backend: the resize then runs on the default device.
    import jax

    from tljax.data import pipeline

    real = jax.local_devices

    def no_cpu(*args, backend=None, **kwargs):
        if backend == "cpu":
            raise RuntimeError("Unknown backend cpu. Available backends are ['cuda']")
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(jax, "local_devices", no_cpu)
    x = np.random.default_rng(0).random((2, 9, 9, 3)).astype(np.float32)
    assert pipeline.resize(x, 4).shape == (2, 4, 4, 3)
