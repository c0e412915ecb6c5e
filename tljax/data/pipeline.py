"""From stored images to model input: channels, resize, normalise; and batch iterators."""

import functools
from typing import Iterator

import jax
import numpy as np

from tljax.errors import UserError

_DISPATCH = 256  # images resized in flight at once: bounds the device memory they hold


@functools.lru_cache(maxsize=16)
def _resizer(shape: tuple, size: int):
    """Returns a jitted ``image (h, w, c) -> (size, size, c)``, bilinear with antialiasing,
    for images of ``shape``.

    One image per call, so every image is computed by the same program whatever batch it
    came in: XLA:CPU picks a batched resize's kernels by the batch's size, and with them
    its rounding, and a streamed split (preprocessed batch by batch) must give what the
    same split in memory gives, bit for bit.
    """
    return jax.jit(lambda image: jax.image.resize(image, (size, size, shape[-1]), "bilinear"))


def _host_cpu():
    """Returns the host's first CPU device, or None (the default device) where JAX was
    started without its CPU backend (``JAX_PLATFORMS=cuda``)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Returns float32 images ``x`` (n, h, w, c) resized to (n, size, size, c), each image
    exactly as it is resized alone, on the host's CPU whatever the default backend.

    On the CPU: the host's worker threads do the input work while the accelerator steps,
    no image makes a round trip to the device and back, and a GPU run's inputs are computed
    as a CPU run computes them (a GPU's bilinear resize rounds otherwise)."""
    one = _resizer(x.shape[1:], size)
    out = np.empty((len(x), size, size, x.shape[-1]), np.float32)
    with jax.default_device(_host_cpu()):
        for start in range(0, len(x), _DISPATCH):  # calls in flight at once: async dispatch
            done = jax.device_get([one(image) for image in x[start:start + _DISPATCH]])
            out[start:start + len(done)] = done
    return out


def preprocess(images: np.ndarray, prep) -> np.ndarray:
    """Returns float32 model input (n, size, size, channels) from uint8 or float images.

    uint8 images are scaled to [0, 1]; grey becomes RGB by repetition and RGB becomes grey
    by averaging; the resize is bilinear with antialiasing; then ``(x - mean) / std`` with
    the model's (or weights') own statistics. A streamed split's ``Records``
    (``tljax.data.lazy``) give lazy ``ModelInputs``, preprocessed batch by batch.
    """
    if hasattr(images, "model_inputs"):
        return images.model_inputs(prep)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise UserError(f"images must have rank 3 (n, h, w) or 4 (n, h, w, c); got shape "
                        f"{images.shape}")
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else \
        images.astype(np.float32)
    have, want = x.shape[-1], prep.channels
    if have == 1 and want == 3:
        x = np.repeat(x, 3, axis=-1)
    elif have == 3 and want == 1:
        x = x.mean(axis=-1, keepdims=True)
    elif have != want:
        raise UserError(f"cannot turn {have}-channel images into the model's {want} channels; "
                        "valid: 1 -> 3, 3 -> 1 or equal")
    size = prep.image_size
    if x.shape[1:3] != (size, size):
        x = resize(x, size)
    mean = np.asarray(prep.mean, np.float32)
    std = np.asarray(prep.std, np.float32)
    return (x - mean) / std


def batches(images, labels: np.ndarray, batch_size: int, seed: int,
            skip: int = 0, rows=None) -> Iterator:
    """Returns an iterator of ``(images, labels)`` batches forever, reshuffled every epoch,
    full batches only.

    The order depends on ``seed`` alone, so a run is reproducible end to end; ``skip``
    starts after that many batches (a resumed run sees the batches it would have seen).
    ``images`` is an array, or a streamed split (``tljax.data.lazy.ModelInputs``),
    whose batches are read and preprocessed ahead on worker threads in the same order.
    ``rows`` (positions in a batch) keeps only those rows of every batch: what one process
    of a multi-process run loads of each global batch.
    """
    n = len(images)
    if batch_size > n:
        raise UserError(f"batch_size {batch_size} is larger than the training split ({n} "
                        f"examples); valid: 1..{n}")
    if hasattr(images, "prefetch_batches"):
        return images.prefetch_batches(labels, batch_size, seed, skip, rows)
    return ((images[idx], labels[idx]) for idx in batch_order(n, batch_size, seed, skip, rows))


def batch_order(n: int, batch_size: int, seed: int, skip: int = 0, rows=None) -> Iterator:
    """Yields the example indices of every batch of ``batches``, forever, from batch ``skip``
    (only positions ``rows`` of each, where given)."""
    per_epoch = n // batch_size
    rng = np.random.default_rng(seed)
    for _ in range(skip // per_epoch):
        rng.permutation(n)  # advance the generator exactly as the skipped epochs did
    first = skip % per_epoch
    while True:
        order = rng.permutation(n)
        for b in range(first, per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield idx if rows is None else idx[rows]
        first = 0
