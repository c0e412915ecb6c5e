"""Image corruptions with severities 1-5, after CIFAR-10-C (Hendrycks & Dietterich, 2019).

A corrupted view is written into the dataset spec, ``digits:5-9@gaussian_noise:3`` or
``cifar10@contrast:2``, and ``data.load`` returns every split corrupted: uint8 images of
the same shape, the same labels. ``describe()`` lists the corruptions (``tljax list``).

Native resolution. Images are corrupted at the dataset's own size (8x8 for ``digits``),
before ``data.preprocess`` resizes them for a model, so a view is a property of the data
alone: the same spec gives the same pixels whatever backbone (and input size) reads them,
severity 0 is exactly the clean dataset, and a view keeps the clean view's shapes. This is
also what CIFAR-10-C does (corrupting at 32x32, not at a network's input size).

Parameters. The ladders are CIFAR-10-C's (``make_cifar_c.py``) except Gaussian noise, which
takes ImageNet-C's stronger one (see ``_gaussian_noise``). Photometric ones (noise, contrast,
brightness) act on values and do not depend on size. Spatial ones are CIFAR-10-C's
pixel figures for 32x32, scaled up by ``side / 32`` for larger images but never scaled down:
below 32 px a scaled-down blur or shift falls under a pixel and vanishes when rounded back
to uint8 (a 0.1-pixel blur leaves 8x8 digits unchanged). Pixelate keeps CIFAR-10-C's
factors but takes one pixel less per severity where the factors round to the same size, so
an 8x8 image goes to 7, 6, 5, 4, 3 pixels and back (32x32: 30, 28, 27, 24, 20, as in
CIFAR-10-C). ``translate`` and ``invert`` are not in CIFAR-10-C; their ladders are below.
Each ladder moves images strictly further from the clean ones as severity rises (tested on
digits by mean absolute pixel distance).

Randomness. Noise and translation directions come from a generator seeded by a hash of
(dataset name, corruption, severity, split) and the example's index in the full split,
never from global state: the same spec gives the same bytes in any process, and a class
subset sees exactly the pixels its examples have in the full view.
"""

import functools
import hashlib

import numpy as np

from tljax.errors import UserError

SEVERITIES = (1, 2, 3, 4, 5)
_CHUNK = 1024  # images corrupted per step: bounds the float32 working copy


def _gaussian_noise(x, severity, rngs):
    # ImageNet-C's ladder, not CIFAR-10-C's 0.04-0.10: on digits (white strokes on black,
    # where clipping at 0 removes half of each draw on the background) CIFAR-10-C's severity
    # 5 barely registers (a pixel logistic regression keeps 0.939 of its clean 0.953).
    std = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    noise = np.stack([rng.normal(0.0, std, x.shape[1:]) for rng in rngs]).astype(np.float32)
    return x + noise


def _gaussian_blur(x, severity, rngs):
    from scipy import ndimage

    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1] * _spatial_scale(x)
    # Edges extend the nearest pixel (skimage's default, as CIFAR-10-C used).
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")


def _contrast(x, severity, rngs):
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * c + mean


def _brightness(x, severity, rngs):
    # CIFAR-10-C adds c to HSV value; with hue and saturation held, RGB scales with value,
    # and a black pixel (saturation 0) becomes grey c. Grey images: x + c.
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    v = x.max(axis=-1, keepdims=True)
    v_new = np.minimum(v + c, 1.0)
    return np.where(v > 0, x * (v_new / np.maximum(v, 1e-12)), v_new)


def _pixelate(x, severity, rngs):
    side_h, side_w = x.shape[1:3]
    factor = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]

    def size(side):
        return max(1, min(int(side * factor), side - severity))

    # Box-filter down (area averaging, PIL's BOX) as CIFAR-10-C, and back up by box overlap
    # too. (PIL's BOX upsampling, which CIFAR-10-C used, is nearest-neighbour: at ratios
    # like 8 -> 5 -> 8 it misplaces whole pixels, and severity 3 came out closer to the
    # clean digits than severity 2.) Sizes that divide the side give the same blocks either way.
    h, w = size(side_h), size(side_w)
    down_h, down_w = _area_matrix(h, side_h), _area_matrix(w, side_w)
    up_h, up_w = _area_matrix(side_h, h), _area_matrix(side_w, w)
    rows, cols = up_h @ down_h, up_w @ down_w
    y = np.matmul(rows, x.transpose(0, 3, 1, 2)) @ cols.T  # (n, c, h, w), one BLAS call each
    return y.transpose(0, 2, 3, 1)


def _translate(x, severity, rngs):
    # Not in CIFAR-10-C. Offsets in units of side/8 (one pixel on 8x8 digits), growing in
    # length 1, 1.4, 2.2, 2.8, 3.6 units; each example gets one of the 8 orientations of
    # its offset (axes swapped, signs flipped). The uncovered strip is filled with the
    # background value: the median of the image's outermost ring of pixels, per channel
    # (0 for digits). No wrapping: pixels shifted out are gone.
    dy, dx = ((1, 0), (1, 1), (2, 1), (2, 2), (3, 2))[severity - 1]
    h, w = x.shape[1:3]
    unit_h, unit_w = max(1, round(h / 8)), max(1, round(w / 8))
    offsets = []
    for rng in rngs:
        a, b = (dx, dy) if rng.integers(2) else (dy, dx)
        sy, sx = rng.choice((-1, 1), size=2)
        offsets.append((int(sy * a * unit_h), int(sx * b * unit_w)))
    offsets = np.array(offsets)
    ring = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
    out = np.broadcast_to(np.median(ring, axis=1)[:, None, None, :], x.shape).copy()
    for oy, ox in np.unique(offsets, axis=0):  # at most 8 orientations: shift each group at once
        group = np.flatnonzero((offsets[:, 0] == oy) & (offsets[:, 1] == ox))
        src = x[group, max(0, -oy):h - max(0, oy), max(0, -ox):w - max(0, ox)]
        out[group, max(0, oy):max(0, oy) + src.shape[1], max(0, ox):max(0, ox) + src.shape[2]] = src
    return out


def _invert(x, severity, rngs):
    # Not in CIFAR-10-C. A blend towards the negative, (1 - a) x + a (1 - x); severity 5 is
    # the full negative. a skips the band around 0.5, where the blend is a flat grey image
    # with no content left: severities 1-2 fade towards grey, 3-5 are ever stronger negatives.
    a = (0.2, 0.3, 0.7, 0.8, 1.0)[severity - 1]
    return (1.0 - a) * x + a * (1.0 - x)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple:
    """Returns scikit-learn's two bundled colour photographs (china.jpg, flower.jpg), float32
    in [0, 1], shape (427, 640, 3): the backgrounds of ``photo_blend``, offline."""
    from sklearn.datasets import load_sample_images

    return tuple(np.asarray(im, np.float32) / 255.0 for im in load_sample_images().images)


def _photo_blend(x, severity, rngs):
    # Not in CIFAR-10-C: MNIST-M's construction (Ganin & Lempitsky 2015), each image over a
    # random patch of a colour photograph, out = |patch - image| per channel (a digit's
    # strokes invert the photo's colours), blended in with weight a; severity 5 is MNIST-M's
    # operation itself. The patch is a square of 4x the image's side (at most the photo's
    # height), box-downsampled to the image's size: colour and texture at the digit's scale.
    a = (0.2, 0.4, 0.6, 0.8, 1.0)[severity - 1]
    n, h, w, c = x.shape
    image = np.broadcast_to(x[..., :1], (n, h, w, 3)) if c < 3 else x[..., :3]  # grey(+alpha)
    photos = _photos()
    side = min(4 * max(h, w), min(p.shape[0] for p in photos))
    down_h, down_w = _area_matrix(h, side), _area_matrix(w, side)
    patches = np.empty((n, h, w, 3), np.float32)
    for k, rng in enumerate(rngs):
        photo = photos[int(rng.integers(len(photos)))]
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = photo[top:top + side, left:left + side]
        # Two matrix products per channel (a three-operand einsum loops over every index).
        patches[k] = np.stack([down_h @ crop[..., ch] @ down_w.T for ch in range(3)], -1)
    return (1.0 - a) * image + a * np.abs(patches - image)


# name -> (function, needs per-example randomness, one line for `tljax list`)
_CORRUPTIONS = {
    "gaussian_noise": (_gaussian_noise, True,
                       "additive Gaussian noise, std 0.08-0.38 of the range (ImageNet-C)"),
    "gaussian_blur": (_gaussian_blur, False,
                      "Gaussian blur, sigma 0.4-1.0 px at <=32 px, scaled with size (CIFAR-10-C)"),
    "contrast": (_contrast, False,
                 "contrast towards each image's mean, factor 0.75-0.15 (CIFAR-10-C)"),
    "brightness": (_brightness, False,
                   "brightness (HSV value) +0.05 to +0.3 (CIFAR-10-C)"),
    "pixelate": (_pixelate, False,
                 "box-downsample to 0.95-0.65 of the side and back (8x8: 7 to 3 px) (CIFAR-10-C)"),
    "translate": (_translate, True,
                  "shift by 1-3.6 eighths of the side in a random direction, background-padded"),
    "invert": (_invert, False,
               "blend towards the negative, 0.2, 0.3, 0.7, 0.8, 1.0 (full negative)"),
    "photo_blend": (_photo_blend, True,
                    "MNIST-M's |photo patch - image| (RGB out), blended 0.2-1.0 (5: MNIST-M)"),
}
NAMES = tuple(_CORRUPTIONS)


def describe() -> dict:
    """Returns ``{corruption name: one line}`` for every corruption, for ``tljax list``."""
    return {name: text for name, (_, _, text) in _CORRUPTIONS.items()}


def parse(text: str, spec: str) -> tuple:
    """Returns ``(name, severity)`` for ``"gaussian_noise:3"``, the part after ``@`` in ``spec``.

    Raises ``UserError`` naming the bad value and the valid ones.
    """
    name, colon, level = text.partition(":")
    if name not in _CORRUPTIONS:
        raise UserError(f"unknown corruption {name!r} in dataset {spec!r}; known: "
                        f"{', '.join(NAMES)}")
    if not colon:
        raise UserError(f"corruption {name!r} in dataset {spec!r} needs a severity; "
                        f"write e.g. '{spec}:3' (severities 1-5)")
    try:
        severity = int(level)
    except ValueError:
        severity = None
    if severity not in SEVERITIES:
        raise UserError(f"bad severity {level!r} for corruption {name!r} in dataset {spec!r}; "
                        "valid: 1, 2, 3, 4, 5")
    return name, severity


def seed(dataset: str, name: str, severity: int, split: str) -> int:
    """Returns the 64-bit seed of one corrupted split, a hash of what names it (no global state)."""
    key = f"{dataset}@{name}:{severity}/{split}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def apply(images: np.ndarray, name: str, severity: int, seed_value: int,
          indices=None) -> np.ndarray:
    """Returns ``images`` (uint8, (n, h, w, c)) corrupted, as uint8 of the same shape (but
    3 channels for ``photo_blend``, which colours grey images).

    Example ``i`` draws its randomness from ``(seed_value, i)`` alone, so the result for an
    example does not depend on the other examples or on the chunking. ``indices`` gives
    each image's index in the full split where ``images`` are some of its rows (a streamed
    batch): they then get exactly the pixels they have in the whole split's view.
    """
    fn, random, _ = _CORRUPTIONS[name]
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"corruptions need uint8 images (n, h, w, c); got {images.dtype} "
                        f"{images.shape}")
    out = np.empty_like(images)
    for start in range(0, len(images), _CHUNK):
        x = images[start:start + _CHUNK].astype(np.float32) / 255.0
        rows = range(start, start + len(x)) if indices is None else indices[start:start + len(x)]
        rngs = [np.random.default_rng([seed_value, int(i)]) for i in rows] if random else None
        y = fn(x, severity, rngs)
        if y.shape[3] != out.shape[3]:  # a view with its own channels (photo_blend: RGB)
            out = np.empty(images.shape[:3] + y.shape[3:], np.uint8)
        out[start:start + len(x)] = np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
    return out


def _spatial_scale(x) -> float:
    """Returns how much a 32-px pixel figure grows for these images: side/32, at least 1."""
    return max(1.0, min(x.shape[1:3]) / 32.0)


def _area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Returns the (n_out, n_in) box-filter resampling matrix (down or up): each output
    pixel averages the input pixels its box covers, weighted by overlap."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)
