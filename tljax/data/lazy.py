"""Lazy arrays: a split's images or model inputs read by index from its array_record.

``Records`` (uint8 images, the view's corruption applied by index), ``ModelInputs``
(their float32 model inputs, prefetched on worker threads) and ``Concatenated`` stand in
for the arrays of the in-memory path; ``tljax.data.streaming`` decides when a split
streams and opens them.
"""

import hashlib
import os
import threading

import numpy as np

from tljax.data import corruptions
from tljax.data.pipeline import preprocess
from tljax.errors import env_whole_number

READ_CHUNK = 1024  # records per read when collecting labels or a whole small split
_BIG = 10 ** 15  # batches in a training stream: endless in practice; grain needs a length
_PREFETCH_BYTES = 1 << 30  # float32 prefetched ahead (all threads together), at most


def threads() -> int:
    """Returns the worker threads that read and preprocess batches: ``TLJAX_DATA_THREADS``
    if set, else one per core, up to 4 on CPU (where the step's own threads need the cores)
    and up to 16 where an accelerator runs the step (one thread delivers about 100-200
    images/s at 224 px, and a GPU takes thousands). Raises ``UserError`` for a bad value."""
    chosen = env_whole_number("TLJAX_DATA_THREADS", 1)
    if chosen is not None:
        return chosen
    import jax

    most = 4 if jax.default_backend() == "cpu" else 16
    return max(1, min(most, os.cpu_count() or 1))


def _rows(n: int, idx) -> np.ndarray:
    """Returns the row numbers ``idx`` (int, slice, int or bool array) selects of ``n``."""
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    idx = np.asarray(idx)
    if idx.dtype == bool:
        return np.flatnonzero(idx)
    return np.where(idx < 0, idx + n, idx).astype(np.int64)


class Records:
    """A split's uint8 images, (n, h, w, c), read by index from its random-access source.

    ``rows`` maps this view's rows to the full split's (a class subset keeps some);
    ``corruption`` is ``(name, severity, seed)`` or None; ``key`` names the content (the
    prepared files' digest, split, rows, corruption) for caches.
    """

    def __init__(self, source, image_key: str, rows: np.ndarray, corruption=None,
                 key: str = ""):
        self.source, self.image_key = source, image_key
        self.rows = np.asarray(rows, np.int64)
        self.corruption = corruption
        rows_digest = hashlib.sha256(self.rows.tobytes()).hexdigest()[:16]
        self.key = f"{key}|rows={rows_digest}|corruption={corruption}"
        first = self[:1][0] if len(self.rows) else np.zeros((0, 0, 0))  # corrupted: photo_blend
        self.shape = (len(self.rows),) + first.shape                 # makes grey images RGB
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, full_rows: np.ndarray) -> np.ndarray:
        """Returns the images at ``full_rows`` of the full split, uncorrupted, (k, h, w, c)."""
        keys = [int(i) for i in full_rows]
        examples = (self.source.__getitems__(keys) if hasattr(self.source, "__getitems__")
                    else [self.source[k] for k in keys])
        images = np.stack([np.asarray(ex[self.image_key]) for ex in examples])
        return images[..., None] if images.ndim == 3 else images

    def __getitem__(self, idx) -> np.ndarray:
        if np.ndim(idx) == 0 and not isinstance(idx, slice):
            return self[np.array([idx])][0]
        full_rows = self.rows[_rows(len(self), idx)]
        if not len(full_rows):
            return np.zeros((0,) + self.shape[1:], np.uint8)
        images = self._read(full_rows)
        if self.corruption is not None:
            name, severity, seed = self.corruption
            images = corruptions.apply(images, name, severity, seed, indices=full_rows)
        return images

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.uint8)
        for start in range(0, len(self), READ_CHUNK):
            out[start:start + READ_CHUNK] = self[start:start + READ_CHUNK]
        return out if dtype is None else out.astype(dtype)

    def model_inputs(self, prep) -> "ModelInputs":
        """Returns these images as lazy float32 model input for ``prep``."""
        return ModelInputs(self, prep)


class LazyArray:
    """What every lazy float32 array here shares: numpy's ``len``/``shape``/``dtype``/``ndim``,
    ``np.asarray`` (reads it all: for small views and tests), ``np.concatenate`` (stays
    lazy), and batches read ahead on worker threads. Subclasses set ``shape`` and define
    ``__getitem__`` (returning an ndarray) and ``cache_key``."""

    dtype = np.dtype(np.float32)
    ndim = 4
    shape: tuple = (0,)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Returns the bytes the array would take in memory (it never does at once)."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, self.dtype)
        for start, batch in self.chunks(256):
            out[start:start + len(batch)] = batch
        return out if dtype is None else out.astype(dtype)

    def __array_function__(self, func, types, args, kwargs):
        if func is np.concatenate and not kwargs and len(args) == 1:
            return Concatenated(args[0])  # e.g. train + val for a final fit: stays on disk
        if func in (np.shape, np.ndim, np.size) and args[0] is self:  # metadata: read nothing
            return {np.shape: self.shape, np.ndim: self.ndim,
                    np.size: int(np.prod(self.shape))}[func]
        # Anything else sees the whole array, as it would on the in-memory path.
        convert = lambda a: np.asarray(a) if isinstance(a, LazyArray) else (  # noqa: E731
            [convert(x) for x in a] if isinstance(a, (list, tuple)) else a)
        return func(*convert(list(args)), **kwargs)

    def cache_key(self) -> str:
        """Returns a string naming the content, without reading it."""
        raise NotImplementedError

    def _prefetch(self, dataset, batch_bytes: int):
        """Returns an iterator over grain ``dataset``'s elements, computed ahead on worker
        threads; at most ``_PREFETCH_BYTES`` of batches wait in its buffer."""
        import grain

        n_threads = threads()
        buffer = max(1, min(2 * n_threads, _PREFETCH_BYTES // max(1, batch_bytes)))
        it = iter(dataset.to_iter_dataset(grain.ReadOptions(
            num_threads=min(n_threads, buffer), prefetch_buffer_size=buffer)))
        try:
            yield from it
        finally:  # the run ended or the iterator was dropped: stop the threads
            it.close()

    def _row_bytes(self) -> int:
        return self.nbytes // max(1, len(self))

    def prefetch_batches(self, labels: np.ndarray, batch_size: int, seed: int,
                         skip: int = 0, rows=None):
        """Returns an endless iterator of ``(images, labels)`` training batches, the same
        ones ``pipeline.batches`` gives an in-memory array for this seed, ``skip`` and
        ``rows``."""
        import grain

        order = _EpochOrder(len(self), batch_size, seed)

        def batch(b):
            idx = order(int(b))
            idx = idx if rows is None else idx[rows]
            return self[idx], labels[idx]

        dataset = grain.MapDataset.range(skip, skip + _BIG).map(batch)
        size = batch_size if rows is None else len(rows)
        return self._prefetch(dataset, size * self._row_bytes())

    def gather(self, index_batches):
        """Yields ``self[idx]`` for each index array of ``index_batches`` (a sequence), in
        order, read ahead on worker threads."""
        import grain

        dataset = grain.MapDataset.source(index_batches).map(self.__getitem__)
        size = max((len(i) for i in index_batches[:1]), default=1)
        yield from self._prefetch(dataset, size * self._row_bytes())

    def chunks(self, batch_size: int):
        """Yields ``(start, self[start:start + batch_size])`` over the array in order, read
        ahead on worker threads."""
        import grain

        dataset = grain.MapDataset.source(range(0, len(self), batch_size)).map(
            lambda start: (start, self[start:start + batch_size]))
        yield from self._prefetch(dataset, batch_size * self._row_bytes())


class ModelInputs(LazyArray):
    """A split's float32 model inputs, (n, size, size, channels), preprocessed on demand.

    ``inputs[idx]`` (int, slice, index or mask array) returns an ndarray, as numpy would.
    """

    def __init__(self, records: Records, prep):
        self.records, self.prep = records, prep
        self.shape = (len(records), prep.image_size, prep.image_size, prep.channels)

    def __repr__(self) -> str:
        return f"ModelInputs(shape={self.shape}, streamed from {self.records.key})"

    def __getitem__(self, idx) -> np.ndarray:
        if np.ndim(idx) == 0 and not isinstance(idx, slice):
            return self[np.array([idx])][0]
        images = self.records[idx]
        if not len(images):
            return np.zeros((0,) + self.shape[1:], np.float32)
        return preprocess(images, self.prep)

    def cache_key(self) -> str:
        """Returns what names these inputs for the feature cache: the prepared files'
        digest, split, rows, corruption and preprocessing; no pixel is read."""
        return f"streamed|{self.records.key}|{self.prep!r}"


class Concatenated(LazyArray):
    """Arrays (lazy or not) one after another along the first axis, read lazily."""

    def __init__(self, parts):
        self.parts = [p if isinstance(p, LazyArray) else np.asarray(p) for p in parts]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]),) + tuple(self.parts[0].shape[1:])
        self.dtype = np.result_type(*[p.dtype for p in self.parts])

    def __getitem__(self, idx) -> np.ndarray:
        if np.ndim(idx) == 0 and not isinstance(idx, slice):
            return self[np.array([idx])][0]
        rows = _rows(len(self), idx)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        for k in np.unique(part):
            here = part == k
            out[here] = self.parts[k][rows[here] - self.starts[k]]
        return out

    def cache_key(self) -> str:
        keys = [p.cache_key() if isinstance(p, LazyArray) else
                hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest() for p in self.parts]
        return "concat|" + "|".join(keys)


class _EpochOrder:
    """Batch number -> example indices, as ``pipeline.batch_order`` yields them.

    Epoch ``e``'s order is the ``e``-th permutation of one generator seeded with ``seed``,
    so any batch is found by drawing the epochs before it once; worker threads ask out of
    order, so a few recent epochs are kept.
    """

    def __init__(self, n: int, batch_size: int, seed: int, keep: int = 16):
        self.n, self.batch_size, self.keep = n, batch_size, keep
        self.per_epoch = n // batch_size
        self.rng = np.random.default_rng(seed)
        self.perms, self.drawn = {}, 0
        self.lock = threading.Lock()

    def __call__(self, b: int) -> np.ndarray:
        epoch, k = divmod(b, self.per_epoch)
        with self.lock:
            while self.drawn <= epoch:
                self.perms[self.drawn] = self.rng.permutation(self.n)
                self.perms.pop(self.drawn - self.keep, None)
                self.drawn += 1
            order = self.perms[epoch]
        return order[k * self.batch_size:(k + 1) * self.batch_size]


# --------------------------------------------------------------------- opening splits
