"""Corrupted dataset views (``digits@gaussian_noise:3``): severity, reproducibility, errors."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from tljax import cli, data
from tljax.data import corruptions
from tljax.errors import UserError


def _digest(ds) -> str:
    h = hashlib.sha256()
    for name in sorted(ds.splits):
        split = ds.splits[name]
        h.update(name.encode() + split.images.tobytes() + split.labels.tobytes())
    return h.hexdigest()


def test_the_brief_corruptions_are_all_there():
    assert {"gaussian_noise", "gaussian_blur", "contrast", "brightness", "pixelate", "translate",
            "invert"} <= set(corruptions.NAMES)
    assert set(corruptions.describe()) == set(corruptions.NAMES)


@pytest.mark.parametrize("name", corruptions.NAMES)
def test_every_severity_moves_real_digits_strictly_further_from_clean(name):
    clean = data.load("digits")
    distances = []
    for severity in corruptions.SEVERITIES:
        view = data.load(f"digits@{name}:{severity}")
        for split, c in clean.splits.items():
            v = view.splits[split]
            # photo_blend colours grey digits (MNIST-M): 3 channels, the rest as they were.
            channels = 3 if name == "photo_blend" else c.images.shape[3]
            assert v.images.dtype == np.uint8
            assert v.images.shape == c.images.shape[:3] + (channels,)
            np.testing.assert_array_equal(v.labels, c.labels)
        test = view.splits["test"].images.astype(np.float64)
        distances.append(np.abs(test - clean.splits["test"].images).mean())
    assert distances[0] > 0.5, distances  # severity 1 is visible after rounding to uint8
    assert all(a < b for a, b in zip(distances, distances[1:])), (name, distances)


def test_same_spec_gives_the_same_bytes_in_another_process():
    specs = ["digits:5-9@gaussian_noise:3", "digits@translate:4"]
    here = [_digest(data.load(s)) for s in specs]
    code = ("import hashlib, sys\nfrom tljax import data\n"
            "def d(ds):\n    h = hashlib.sha256()\n    for n in sorted(ds.splits):\n"
            "        s = ds.splits[n]\n"
            "        h.update(n.encode() + s.images.tobytes() + s.labels.tobytes())\n"
            "    return h.hexdigest()\n"
            "import numpy as np; np.random.seed(12345)  # global state must not matter\n"
            f"for s in {specs!r}:\n    print(d(data.load(s)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ))
    assert out.stdout.split() == here


def test_noise_differs_between_splits_severities_and_examples():
    a = data.load("digits@gaussian_noise:3").splits
    clean = data.load("digits").splits
    noise = {s: a[s].images.astype(int) - clean[s].images for s in a}
    assert not np.array_equal(noise["train"][:10], noise["val"][:10])
    assert not np.array_equal(noise["train"][0], noise["train"][1])
    b = data.load("digits@gaussian_noise:4").splits["train"].images
    assert not np.array_equal(a["train"].images, b)


def test_a_class_subset_of_a_corrupted_view_has_the_full_views_pixels():
    full, sub = data.load("digits@gaussian_noise:3"), data.load("digits:5-9@gaussian_noise:3")
    assert sub.num_classes == 5 and sub.class_names == ("5", "6", "7", "8", "9")
    keep = full.splits["test"].labels >= 5
    np.testing.assert_array_equal(sub.splits["test"].images, full.splits["test"].images[keep])
    np.testing.assert_array_equal(sub.splits["test"].labels, full.splits["test"].labels[keep] - 5)


def test_parse_spec_puts_the_name_first_with_and_without_a_corruption():
    assert data.parse_spec("digits") == ("digits", None, None)
    assert data.parse_spec("digits:0-2") == ("digits", (0, 1, 2), None)
    assert data.parse_spec("digits@contrast:2") == ("digits", None, ("contrast", 2))
    assert data.parse_spec("digits:5-9@gaussian_noise:3") == (
        "digits", (5, 6, 7, 8, 9), ("gaussian_noise", 3))


KNOWN = "known: gaussian_noise, gaussian_blur, contrast, brightness, pixelate, translate, invert"


@pytest.mark.parametrize("spec,match", [
    ("digits@fog:3", f"unknown corruption 'fog' in dataset 'digits@fog:3'; {KNOWN}"),
    ("digits:0-4@gausian_noise:1", "unknown corruption 'gausian_noise'"),
    ("digits@contrast:0", "bad severity '0' for corruption 'contrast' .*; valid: 1, 2, 3, 4, 5"),
    ("digits@contrast:6", "bad severity '6'"),
    ("digits@contrast:2.5", "bad severity '2.5'"),
    ("digits@contrast", "needs a severity; write e.g. 'digits@contrast:3'"),
    ("digits@contrast:2@invert:1", "more than one '@'"),
])
def test_bad_corruptions_are_named_with_the_valid_ones(spec, match):
    with pytest.raises(UserError, match=match):
        data.parse_spec(spec)  # what config validation calls, before anything is loaded
    with pytest.raises(UserError, match=match):
        data.load(spec)


def test_translate_pads_with_the_background_and_never_wraps():
    # One bright pixel in a corner on a grey background, moved 3 and 2 pixels (severity 5).
    img = np.full((8, 8, 1), 100, np.uint8)
    img[0, 0] = 255
    out = corruptions.apply(np.repeat(img[None], 64, axis=0), "translate", 5, seed_value=7)
    assert set(np.unique(out)) <= {100, 255}  # the uncovered strip is the background, 100
    moved = [tuple(np.argwhere(o[..., 0] == 255)[0]) for o in out if (o == 255).any()]
    assert moved and set(moved) <= {(3, 2), (2, 3)}  # inward; shifted out means gone, not wrapped
    assert len(moved) < 64  # some directions push the pixel out of the image


def test_invert_at_severity_5_is_the_negative_and_pixelate_4_is_2x2_blocks_on_8x8():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
    np.testing.assert_array_equal(corruptions.apply(x, "invert", 5, 0), 255 - x)
    blocks = x.reshape(3, 4, 2, 4, 2, 1).astype(np.float64).mean(axis=(2, 4))
    want = np.round(np.repeat(np.repeat(blocks, 2, axis=1), 2, axis=2))
    np.testing.assert_allclose(corruptions.apply(x, "pixelate", 4, 0), want, atol=1)


def test_corruptions_keep_rgb_images_and_scale_spatial_ones_with_size():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    for name in corruptions.NAMES:
        y = corruptions.apply(x, name, 3, 0)
        assert y.shape == x.shape and y.dtype == np.uint8 and (y != x).any(), name
    # Brightness on RGB keeps hue: channel ratios are (nearly) unchanged where nothing clips.
    dim = np.array([[[[40, 80, 20]]]], np.uint8)
    b = corruptions.apply(dim, "brightness", 2, 0).astype(float)[0, 0, 0]
    np.testing.assert_allclose(b / b[1], [0.5, 1.0, 0.25], atol=0.02)
    assert b[1] == pytest.approx(80 + 0.1 * 255, abs=1)
    # Spatial offsets are in eighths of the side: severity 1 moves a 64x64 image 8 pixels.
    spot = np.zeros((16, 64, 64, 1), np.uint8)
    spot[:, 0, 0] = 255
    moved = {tuple(np.argwhere(o[..., 0])[0]) for o in corruptions.apply(spot, "translate", 1, 3)
             if o.any()}
    assert moved and moved <= {(8, 0), (0, 8)}


def test_list_shows_every_corruption(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in corruptions.NAMES:
        assert f"  {name} " in out
    assert "@NAME:SEVERITY" in out
