"""Splits too large for memory, read batch by batch from their prepared array_record.

A split whose float32 model input would take more than ``stream_above_mb`` (a config
key; 0 = stream every split, -1 = never) is not decoded up front. Its labels are read
into memory (a few bytes per example); its images stay in the split's array_record and
are read by index when a batch asks for them. Two lazy arrays stand in for the arrays of
the in-memory path, so batching, k-shot selection, evaluation loops and per-process row
selection work on either unchanged:

- ``Records``: the split's uint8 images (n, h, w, c); ``records[idx]`` reads those rows,
  with the view's corruption applied exactly as on the whole split (each example seeded
  by its index in the full split, ``corruptions.apply(indices=...)``).
- ``ModelInputs``: its float32 model inputs; ``inputs[idx]`` is ``preprocess(records[idx])``,
  the same numbers the in-memory path computes for those rows.

Training batches come from ``ModelInputs.prefetch_batches``: a grain ``MapDataset`` over
batch numbers whose elements are the batches ``pipeline.batches`` would give for the same
seed (the same permutations, fast-forwarded for a resumed run), read, decoded and
preprocessed on worker threads ahead of the step. ``ModelInputs.chunks`` does the same for
evaluation and feature extraction, in order. The prefetch buffer is bounded in bytes, so
host memory holds a few batches, never the split.
"""

import dataclasses
import functools
import hashlib
import os
import threading

import numpy as np

from tljax import files
from tljax.data import corruptions, datasets
from tljax.data.pipeline import preprocess
from tljax.errors import UserError

_BIG = 10 ** 15  # batches in a training stream: endless in practice; grain needs a length
_PREFETCH_BYTES = 1 << 30  # float32 prefetched ahead (all threads together), at most
_READ_CHUNK = 1024  # records per read when collecting labels or a whole small split


def threads() -> int:
    """Returns the worker threads that read and preprocess batches: up to 4, one per core."""
    return max(1, min(4, os.cpu_count() or 1))


def input_mb(n: int, prep) -> float:
    """Returns the MB (2**20 bytes) that ``n`` examples take as float32 model input."""
    return n * prep.image_size * prep.image_size * prep.channels * 4 / 2 ** 20


def streams(n: int, prep, stream_above_mb: float) -> bool:
    """Returns whether a split of ``n`` examples is streamed under ``stream_above_mb``
    (negative: never; 0: always; else when its float32 input is larger)."""
    if prep is None or getattr(prep, "kind", "image") != "image" or stream_above_mb < 0:
        return False
    return input_mb(n, prep) > stream_above_mb


# ------------------------------------------------------------------------ lazy arrays


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
        first = self._read(self.rows[:1])[0] if len(self.rows) else np.zeros((0, 0, 0))
        self.shape = (len(self.rows),) + first.shape
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
        for start in range(0, len(self), _READ_CHUNK):
            out[start:start + _READ_CHUNK] = self[start:start + _READ_CHUNK]
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


def files_digest(paths) -> str:
    """Returns a digest of the files' names and stamps (``tljax.files.stamp``): prepared
    array_record files are written once, so these name their content without reading
    it (a re-prepared or copied-in dataset gets new ctimes, hence a new digest)."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(f"{os.path.basename(path)}:{files.stamp(path)}|".encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class _Full:
    """A dataset's splits, opened: sources, labels in memory, content keys."""

    num_classes: int
    names: tuple
    image_key: str
    sources: dict  # tljax split -> random-access source
    labels: dict   # tljax split -> int64 labels of the full split
    keys: dict     # tljax split -> digest of its prepared files and split string


def _labels(name, data_dir, download, split_map, label_key, image_key, folder) -> dict:
    """Returns ``{split: int64 labels}``, read without decoding the images where tfds can."""
    import tensorflow_datasets as tfds

    try:
        sources = datasets.open_sources(name, data_dir, download, split_map, folder_dir=folder,
                                        decoders={image_key: tfds.decode.SkipDecoding()})[3]
    except (TypeError, ValueError, NotImplementedError):
        sources = datasets.open_sources(name, data_dir, download, split_map,
                                        folder_dir=folder)[3]
    out = {}
    for split, source in sources.items():
        labels = []
        for start in range(0, len(source), _READ_CHUNK):
            keys = range(start, min(len(source), start + _READ_CHUNK))
            labels += [int(ex[label_key]) for ex in source.__getitems__(list(keys))]
        out[split] = np.array(labels, np.int64)
    return out


@functools.lru_cache(maxsize=8)
def _open_full(name: str, data_dir: str, download: bool, split_map: tuple,
               folder: str) -> _Full:
    builder, image_key, label_key, sources = datasets.open_sources(
        name, data_dir, download, split_map, folder_dir=folder)
    info = builder.info
    keys = {}
    for ours, theirs in split_map:
        paths = [os.path.join(builder.data_dir, f)
                 for f in info.splits[theirs.split("[")[0]].filenames]
        keys[ours] = f"{name}/{theirs}:{files_digest(paths)[:32]}"
    label_feature = info.features[label_key]
    return _Full(label_feature.num_classes, tuple(label_feature.names), image_key, sources,
                 _labels(name, data_dir, download, split_map, label_key, image_key, folder),
                 keys)


def _full_sizes(name: str, data_dir: str, download: bool, split_map: tuple,
                folder: str) -> dict:
    """Returns ``{split: examples}`` of the full splits without reading a record."""
    return {s: len(src) for s, src in datasets.open_sources(
        name, data_dir, download, split_map, folder_dir=folder)[3].items()}


def load(spec: str, data_dir: str | None = None, download: bool = False, prep=None,
         stream_above_mb: float = -1, folder_image_size: int = 0,
         splits: dict | None = None) -> datasets.Dataset:
    """Returns dataset ``spec`` as ``datasets.load`` does, except that each split whose
    float32 input under ``prep`` exceeds ``stream_above_mb`` holds ``Records`` (read by
    index, never whole) instead of an array; ``preprocess`` turns those into
    ``ModelInputs``. With nothing to stream it is ``datasets.load`` itself.
    """
    name, classes, corruption = datasets.parse_spec(spec)
    in_memory = functools.partial(datasets.load, spec, data_dir, download, splits,
                                  folder_image_size=folder_image_size)
    if datasets.kind(name) != "image" or stream_above_mb < 0 or prep is None:
        return in_memory()
    data_dir = data_dir or datasets.default_data_dir()
    split_map = datasets.resolve_splits(name, data_dir, splits)
    folder = datasets.folder_dir(name, data_dir, folder_image_size)
    if not any(streams(n, prep, stream_above_mb)
               for n in _full_sizes(name, data_dir, download, split_map, folder).values()):
        return in_memory()  # every split fits: the in-memory path
    full = _open_full(name, data_dir, download, split_map, folder)
    remap = np.arange(full.num_classes)
    names = full.names
    if classes is not None:
        bad = [c for c in classes if not 0 <= c < full.num_classes]
        if bad:
            raise UserError(f"class {bad[0]} is not in dataset {name!r}; valid: "
                            f"0-{full.num_classes - 1}")
        remap = np.full(full.num_classes, -1, np.int64)
        remap[list(classes)] = np.arange(len(classes))
        names = tuple(full.names[c] for c in classes)
    views = {}
    for split, labels in full.labels.items():
        rows = np.flatnonzero(remap[labels] >= 0)
        seeded = None if corruption is None else (
            *corruption, corruptions.seed(name, *corruption, split))
        records = Records(full.sources[split], full.image_key, rows, seeded, full.keys[split])
        view_labels = remap[labels[rows]]
        images = records if streams(len(rows), prep, stream_above_mb) else np.asarray(records)
        views[split] = datasets.Split(images, view_labels)
    return datasets.Dataset(spec, len(names), names, views)


def num_classes(spec: str, data_dir: str | None = None, download: bool = False,
                folder_image_size: int = 0) -> int:
    """Returns the number of classes of image dataset ``spec`` (its view), reading no
    images."""
    name, classes, _ = datasets.parse_spec(spec)
    data_dir = data_dir or datasets.default_data_dir()
    split_map = datasets.resolve_splits(name, data_dir)
    builder, _, label_key, _ = datasets.open_sources(
        name, data_dir, download, split_map,
        folder_dir=datasets.folder_dir(name, data_dir, folder_image_size))
    total = builder.info.features[label_key].num_classes
    if classes is None:
        return total
    bad = [c for c in classes if not 0 <= c < total]
    if bad:
        raise UserError(f"class {bad[0]} is not in dataset {name!r}; valid: "
                                 f"0-{total - 1}")
    return len(classes)
