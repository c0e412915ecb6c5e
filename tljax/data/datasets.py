"""Datasets by name, read as numpy through TFDS; class-subset and corrupted views.

A dataset spec is a TFDS name with an optional class subset and an optional corruption:
``digits``, ``digits:0-4``, ``cifar10:0,1,8``, ``digits:5-9@gaussian_noise:3``,
``digits@contrast:2``. A subset keeps the listed classes, relabelled 0..k-1 in the order
given (``digits:0+2+4,1+3``: classes joined by ``+`` share one label, a superclass whose
subpopulations a source and a target can split); a corruption (``tljax.data.corruptions``)
applies to every split at a severity 1-5.
tljax's own builders (``digits``) are prepared on first use; TFDS catalog names read their
prepared array_record data, and are downloaded and prepared (as array_record) when
``download`` is True. Text classification datasets (a ``.csv``/``.jsonl`` path,
``tljax.data.textfiles``; the built-in ``vader``, ``tljax.data.vader``) hold raw text in
``TextSplit``s and take class subsets the same way, but no corruption. Any other name
containing ``/`` is a path to an image folder (``tljax.data.folders``: a directory of
class folders, prepared once into the data dir as array_record).
"""

import dataclasses
import functools
import sys

import numpy as np

from tljax import locks
from tljax.data import corruptions, textfiles
from tljax.data.tfds_env import default_data_dir, quiet_tfds
from tljax.errors import UserError, unknown

BUILTIN = ("digits",)
TEXT_BUILTIN = ("vader",)  # built-in text datasets, read from an installed package
SPLITS = ("train", "val", "test")
# How tljax's split names map onto a catalog dataset's own, where it has no validation split.
CATALOG_SPLITS = {"train": "train[:90%]", "val": "train[90%:]", "test": "test"}


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images (n, h, w, c) and int64 labels (n,)."""

    images: np.ndarray
    labels: np.ndarray

    def take(self, index, labels: np.ndarray) -> "Split":
        """Returns the examples at ``index`` with ``labels`` in place of their own."""
        return Split(self.images[index], labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset (or class-subset view) with its splits in memory."""

    spec: str
    num_classes: int
    class_names: tuple
    splits: dict


def parse_spec(spec: str) -> tuple:
    """Returns ``(name, classes or None, (corruption, severity) or None)``.

    For ``"name"``, ``"name:0-4,7"``, ``"name@contrast:2"`` or ``"name:5-9@contrast:2"``.
    Raises ``UserError`` for a bad class subset or corruption, naming the valid ones.
    """
    spec = str(spec)
    base, at, corruption = spec.partition("@")
    if "/" in corruption or "/" in base.partition(":")[2]:  # the separators inside a path
        raise UserError(f"dataset path {spec!r} contains ':' or '@', which separate the class "
                        "subset and the corruption; rename the folder or link it without them")
    if at:
        if "@" in corruption:
            raise UserError(f"dataset {spec!r} has more than one '@'; one corruption per "
                            "spec, e.g. 'digits:5-9@gaussian_noise:3'")
        corruption = corruptions.parse(corruption, spec)
    else:
        corruption = None
    name, _, subset = base.partition(":")
    if not subset:
        return name, None, corruption
    classes = []
    try:
        for part in subset.split(","):
            if "+" in part:  # classes joined into one label: a superclass
                classes.append(tuple(int(c) for c in part.split("+")))
                continue
            lo, dash, hi = part.partition("-")
            classes += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    except ValueError:
        raise UserError(f"bad class subset {subset!r} in dataset {spec!r}; expected e.g. "
                        "'digits:0-4', 'cifar10:0,1,8' or 'digits:0+2+4,1+3'") from None
    members = [c for entry in classes for c in _members(entry)]
    if len(set(members)) != len(members) or len(classes) < 2:
        raise UserError(f"bad class subset {subset!r} in dataset {spec!r}; "
                        "need two or more labels, each class in one of them")
    return name, tuple(classes), corruption


def _members(entry) -> tuple:
    """Returns the dataset classes behind one label of a subset: ``3`` or ``(0, 2, 4)``."""
    return entry if isinstance(entry, tuple) else (entry,)


def kind(name: str) -> str:
    """Returns ``"text"`` for a text dataset name (a .csv/.jsonl path, ``vader``), else
    ``"image"``."""
    return "text" if name in TEXT_BUILTIN or textfiles.is_text_file(name) else "image"


def check_known(name: str) -> None:
    """Raises ``UserError`` unless ``name`` is a built-in dataset, a TFDS catalog name, a
    text file or an existing image folder."""
    if name in BUILTIN:
        return
    if kind(name) == "text":
        _text_source(name)
        return
    from tljax.data import folders

    if folders.is_folder_spec(name):
        folders.check_path(name)
        return
    import tensorflow_datasets as tfds

    if name not in tfds.list_builders(with_community_datasets=False):
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(BUILTIN)}, "
                        "any TFDS catalog name, or a path (an image folder: /data/pets)")


# What each built-in builder is made from, for the line printed when it is first prepared.
BUILTIN_SOURCES = {"digits": "scikit-learn's bundled handwritten digits; no download"}


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    if name == "digits":
        from tljax.data.digits import Digits

        return Digits(data_dir=data_dir, file_format="array_record")
    check_known(name)
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")


def _read_split(source, image_key: str, label_key: str) -> Split:
    images = np.stack([np.asarray(ex[image_key]) for ex in source]) if len(source) else None
    if images is None:
        raise UserError("empty split")
    labels = np.array([int(ex[label_key]) for ex in source], np.int64)
    if images.ndim == 3:
        images = images[..., None]
    return Split(images, labels)


def _prepared_builder(name: str, data_dir: str, download: bool, folder_dir: str = ""):
    """Returns the builder of ``name``, prepared as array_record.

    Preparing prints one tljax line to stderr: for a built-in builder instead of tfds's
    "has no dataset_info.json" warning and download banner; for a catalog dataset before
    tfds's own download report. An image folder is read from ``folder_dir``, its prepared
    copy (``folder_dir(name, ...)``), or prepared here at the default size.
    """
    from tljax.data import folder_store, folders

    if folders.is_folder_spec(name):
        import tensorflow_datasets as tfds

        return tfds.builder_from_directory(folder_dir or folder_store.prepare(name, data_dir).dir)
    builtin = name in BUILTIN
    with quiet_tfds(swallow_prints=builtin):
        builder = _builder(name, data_dir)
        if builder.is_prepared():
            return builder
        if builtin:
            what = f"the built-in dataset {name!r} ({BUILTIN_SOURCES[name]})"
        elif download:
            what = f"TFDS dataset {name!r} (downloading it)"
        else:
            raise UserError(f"dataset {name!r} is not prepared under {data_dir}; "
                            "set download=True or prepare it with tfds")
        # One process prepares; the others (of a multi-process run, or other runs sharing
        # the data dir) wait, then find it prepared: two preparers would race to rename
        # their copies into place, and one would fail.
        with locks.held(locks.lock_path(data_dir, name), f"preparing dataset {name!r}"):
            builder = _builder(name, data_dir)
            if builder.is_prepared():
                return builder
            print(f"tljax: preparing {what} in {builder.data_dir}", file=sys.stderr)
            builder.download_and_prepare(file_format="array_record")
    return builder


def folder_dir(name: str, data_dir: str, folder_image_size: int = 0) -> str:
    """Returns the TFDS directory of image folder ``name`` prepared under ``data_dir``
    (decoded only when the folder changed since), or '' when ``name`` is not a path. The
    directory is named by the folder's content, so it keys caches of what is read."""
    from tljax.data import folder_store, folders

    return folder_store.prepare(name, data_dir, folder_image_size).dir \
        if kind(name) == "image" and folders.is_folder_spec(name) else ""


@functools.lru_cache(maxsize=16)
def _load_full(name: str, data_dir: str, download: bool, split_map: tuple,
               folder: str = "") -> tuple:
    builder, image_key, label_key, sources = open_sources(name, data_dir, download, split_map,
                                                          folder_dir=folder)
    splits = {ours: _read_split(source, image_key, label_key) for ours, source in sources.items()}
    label_feature = builder.info.features[label_key]
    return label_feature.num_classes, tuple(label_feature.names), splits


def open_sources(name: str, data_dir: str, download: bool, split_map: tuple,
                 decoders: dict | None = None, folder_dir: str = "") -> tuple:
    """Returns ``(builder, image key, label key, {tljax split: random-access source})``.

    Each source is the split's prepared array_record as a ``tfds.data_source`` (``len`` and
    ``source[i]`` -> one decoded example); nothing is read yet. ``decoders`` as in tfds
    (e.g. ``SkipDecoding`` of the image, to read labels alone). ``folder_dir``: an image
    folder's prepared copy (``folder_dir()``), so its ``folder_image_size`` holds.
    """
    builder = _prepared_builder(name, data_dir, download, folder_dir)
    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    have = set(info.splits.keys())
    sources = {}
    for ours, theirs in split_map:
        if theirs.split("[")[0] not in have:
            raise unknown(f"split of {name}", theirs, have)
        sources[ours] = builder.as_data_source(split=theirs, decoders=decoders)
    return builder, image_key, label_key, sources


@functools.lru_cache(maxsize=4)
def _corrupted(name: str, data_dir: str, download: bool, split_map: tuple,
               corruption: tuple, folder: str = "") -> dict:
    """Returns ``{split: Split}`` of the full dataset with ``corruption`` applied to each split.

    The full split is corrupted (then subset by the caller), so an example's pixels do not
    depend on the class subset; the seed names the dataset, corruption and split only.
    """
    _, _, full = _load_full(name, data_dir, download, split_map, folder)
    kind, severity = corruption
    return {split: Split(corruptions.apply(s.images, kind, severity,
                                           corruptions.seed(name, kind, severity, split)),
                         s.labels)
            for split, s in full.items()}


def _text_source(name: str):
    """Returns ``() -> (class names, {split: TextSplit})`` for text dataset ``name``
    without reading it (a missing file or package is a ``UserError`` already)."""
    if name in TEXT_BUILTIN:
        from tljax.data import vader

        vader.lexicon_path()
        return lambda columns: vader.load()
    textfiles.check_file(name)
    return lambda columns: textfiles.read(name, columns)


def _load_text(spec: str, name: str, classes, corruption, columns) -> Dataset:
    if corruption is not None:
        raise UserError(f"corruptions apply to images; dataset {name!r} is text: drop "
                        f"'@{corruption[0]}:{corruption[1]}' from {spec!r}")
    names, splits = _text_source(name)(columns or textfiles.Columns())
    if classes is not None:
        names, splits = class_view(name, len(names), names, splits, classes)
    return Dataset(spec, len(names), names, splits)


def resolve_splits(name: str, data_dir: str, splits: dict | None = None) -> tuple:
    """Returns ``((tljax split, the dataset's own TFDS split string), ...)``, sorted: ``splits``
    as given, else the dataset's train/validation/test (90/10 of train where it has no
    validation split)."""
    from tljax.data import folders

    if splits is None:
        splits = {s: s for s in SPLITS} if name in BUILTIN or folders.is_folder_spec(name) \
            else None
    if splits is None:
        check_known(name)
        splits = dict(CATALOG_SPLITS)
        have = _builder(name, data_dir).info.splits.keys()
        if "validation" in have:
            splits["train"], splits["val"] = "train", "validation"
    return tuple(sorted(splits.items()))


def load(spec: str, data_dir: str | None = None, download: bool = False,
         splits: dict | None = None, columns: "textfiles.Columns | None" = None,
         folder_image_size: int = 0) -> Dataset:
    """Returns dataset ``spec`` (or its class-subset / corrupted view), ``train``/``val``/``test``.

    ``splits`` maps tljax's split names to the dataset's own TFDS split strings; the
    default is the dataset's train/validation/test, or 90/10 of train where it has no
    validation split. ``columns`` names the text/label/pair columns of a text file;
    ``folder_image_size`` the stored side of an image folder's images (0: from the folder).
    """
    name, classes, corruption = parse_spec(spec)
    if kind(name) == "text":
        return _load_text(spec, name, classes, corruption, columns)
    data_dir = data_dir or default_data_dir()
    split_map = resolve_splits(name, data_dir, splits)
    folder = folder_dir(name, data_dir, folder_image_size)  # content-named: keys the caches
    num_classes, names, full = _load_full(name, data_dir, download, split_map, folder)
    if corruption is not None:
        full = _corrupted(name, data_dir, download, split_map, corruption, folder)
    if classes is None:
        return Dataset(spec, num_classes, names, full)
    names, views = class_view(name, num_classes, names, full, classes)
    return Dataset(spec, len(classes), names, views)


def subset_remap(name: str, num_classes: int, names: tuple, classes: tuple) -> tuple:
    """Returns ``(remap, view names)`` for a class subset: ``remap[c]`` is class c's label in
    the view (-1: dropped), labels 0..k-1 in the order of ``classes``, a tuple entry of
    classes sharing one label (named ``a+b``). Raises ``UserError`` for a class not in the
    dataset."""
    bad = [c for entry in classes for c in _members(entry) if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"class {bad[0]} is not in dataset {name!r}; valid: 0-{num_classes - 1}")
    remap = np.full(num_classes, -1, np.int64)
    for label, entry in enumerate(classes):
        remap[list(_members(entry))] = label
    return remap, tuple("+".join(str(names[c]) for c in _members(entry)) for entry in classes)


def class_view(name: str, num_classes: int, names: tuple, splits: dict,
               classes: tuple) -> tuple:
    """Returns ``(names, splits)`` kept to ``classes`` (``subset_remap``), image and text
    splits alike: each has ``labels`` and ``take``. Raises ``UserError`` for a class not in
    the dataset."""
    remap, view_names = subset_remap(name, num_classes, names, classes)
    views = {}
    for split_name, split in splits.items():
        keep = np.flatnonzero(remap[split.labels] >= 0)
        views[split_name] = split.take(keep, remap[split.labels[keep]])
    return view_names, views


def k_shot_indices(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Returns sorted indices of ``k`` examples per class, drawn with ``seed``.

    Raises ``UserError`` where a class has fewer than ``k`` examples.
    """
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise UserError(f"{k}-shot needs {k} examples of class {c}; the split has {len(idx)}")
        out.append(rng.choice(idx, k, replace=False))
    return np.sort(np.concatenate(out))
