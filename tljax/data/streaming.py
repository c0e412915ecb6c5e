"""Splits too large for memory, read batch by batch from their prepared array_record.

A split whose float32 model input would take more than ``stream_above_mb`` (a config
key; 0 = stream every split, -1 = never) is not decoded up front. Its labels are read
into memory (a few bytes per example); its images stay in the split's array_record and
are read by index when a batch asks for them. Two lazy arrays (``tljax.data.lazy``) stand
in for the arrays of the in-memory path, so batching, k-shot selection, evaluation loops
and per-process row selection work on either unchanged:

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

import numpy as np

from tljax import files
from tljax.data import corruptions, datasets
from tljax.data.lazy import READ_CHUNK, Records



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
        for start in range(0, len(source), READ_CHUNK):
            keys = range(start, min(len(source), start + READ_CHUNK))
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
        remap, names = datasets.subset_remap(name, full.num_classes, full.names, classes)
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
    return len(datasets.subset_remap(name, total, tuple(map(str, range(total))), classes)[1])
