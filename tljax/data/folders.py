"""Image folders as datasets: a directory of class folders, prepared once as array_record.

A dataset spec that contains ``/`` is a path (``/data/pets``, ``./pets``, ``../pets:0-4``,
``/data/pets@contrast:2``); one ending in ``.csv`` or ``.jsonl`` is a text file
(``tljax.data.textfiles``), any other is a directory of images laid out as

- ``ROOT/CLASS/.../IMAGE``: split 70/10/20, stratified by class, with the fixed seed of
  ``digits`` (``tljax.data.digits.split_indices``); or
- ``ROOT/train/CLASS/...``, ``ROOT/val/CLASS/...`` (or ``validation``, ``valid``, ``dev``),
  ``ROOT/test/CLASS/...`` when every subfolder of ROOT is a split name (in any case:
  ``Train``): the user's splits are kept; without a
  ``val`` folder, val is 10% of train (stratified, same seed); ``test`` is required.

Class names are the class folders' names, sorted (label 0 is the first); images in
nested folders belong to their class folder. Images are ``.png .jpg .jpeg .bmp .gif
.webp`` (any case); every other file, hidden files and folders included, is ignored and
named in a count when the folder is prepared. Because a path is split on ``:`` and ``@``
like any spec, a dataset path may not contain either character.

Decoding (Pillow). EXIF orientation is applied (phone photos come out upright); a
folder whose images are all greyscale is stored with one channel (``L``), any other as
RGB, alpha dropped as torchvision's loader drops it; 16-bit grey is scaled to 8 bits;
a GIF gives its first frame. ``data.preprocess`` later turns 1 into 3 channels (or back)
as the model needs.

Size. One uint8 array per split needs one image size, so every image is stored as its
centre square (side = its shorter side; nothing is stretched) resized to S x S
(Pillow's bilinear, antialiased when shrinking). S is ``folder_image_size`` when set;
by default (0) it is the largest shorter side in the folder, capped at 256. So a folder
of 32-px images stays at 32 px (as TFDS stores CIFAR-10), mixed small images go to the
largest of them (none is shrunk), and photographs go to 256, the usual
"resize 256, centre-crop" size, from which ``data.preprocess`` resizes to a 224-px
model's input without upsampling. The dataset is then the same whatever model reads it,
so a corrupted view (applied at this stored size, like CIFAR-10-C at 32 px) is too.

Preparing. Unreadable images (truncated, not really an image, a decompression bomb) are
skipped and named on stderr with a count (the full list is written beside the data);
a class left with no training image is an error. The result is a TFDS dataset written as
array_record with the same ``Tensor`` features as ``digits``, under
``DATA_DIR/tljax_image_folder/KEY/``, where KEY hashes the images' relative paths and
bytes (each file's sha256, kept in the data dir and read again only for a file whose
size, mtime, ctime or inode changed) and the size setting: a second run reads it
without decoding anything, a folder with an image added, removed or replaced (even by
one of the same size with its mtime kept) is prepared again (the older copy of the same
folder is removed), and a copy of the folder elsewhere, or one whose files were only
chmod-ed or touched, is the same dataset. One process prepares a
folder; others that need it meanwhile wait for it (``tljax.locks``). ``sources`` gives a
random-access source per split for readers that stream.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import tensorflow_datasets as tfds

from tljax import locks
from tljax.data import digits
from tljax.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEXT_EXTENSIONS = (".csv", ".jsonl")  # a path with these suffixes is a text dataset
# Split folder names, matched in any case (Kaggle's Train/Test, Roboflow's valid, dev sets).
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "valid": "val",
                 "dev": "val", "test": "test"}
SPLITS = ("train", "val", "test")
AUTO_SIZE_CAP = 256
VAL_FRACTION = 0.1  # of train, where fixed splits come without a val folder
FORMAT = 1  # part of the key: bump it when what is stored changes, so folders re-prepare
BUILDER = "tljax_image_folder"
DIGESTS = "digests"  # under BUILDER: each folder's image digests, by stamp
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_NAMED = 10  # files named in a message; the rest are counted
_CHUNK = 256  # images decoded per batch of threads: bounds the decoded images held at once


def is_folder_spec(name: str) -> bool:
    """Returns whether dataset name ``name`` (a spec without subset or corruption) is a
    path to an image folder: it contains ``/`` and is not a ``.csv``/``.jsonl`` file."""
    return ("/" in name or os.sep in name) and not name.lower().endswith(TEXT_EXTENSIONS)


def check_path(name: str) -> None:
    """Raises ``UserError`` unless ``name`` is an existing directory (in one line)."""
    if not os.path.exists(name):
        raise UserError(f"dataset path {name} does not exist")
    if not os.path.isdir(name):
        raise UserError(f"dataset path {name} is a file; an image dataset is a directory of "
                        f"class folders ({name}/CLASS/IMAGE), a text dataset a "
                        f"{' or '.join(TEXT_EXTENSIONS)} file")


@dataclasses.dataclass(frozen=True)
class Scan:
    """What a folder holds, from listing it (nothing opened).

    ``files`` maps each split folder (``train``/``val``/``test``) to ``(relative path,
    label)`` pairs, or ``None`` to every image when the folder has no split folders;
    ``stamp`` is ``(relative path, bytes, mtime ns, ctime ns, inode)`` per image;
    ``ignored`` the relative paths of everything that is not an image.
    """

    root: str
    classes: tuple
    files: dict
    stamp: tuple
    ignored: tuple


def _walk(top: str, root: str) -> tuple:
    """Returns ``(images, ignored)``: relative paths under ``top`` (following links once)."""
    images, ignored, seen = [], [], set()
    for here, dirs, names in os.walk(top, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        ignored += [os.path.relpath(os.path.join(here, d), root) for d in dirs
                    if d.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            rel = os.path.relpath(os.path.join(here, n), root)
            ok = not n.startswith(".") and n.lower().endswith(EXTENSIONS)
            (images if ok else ignored).append(rel)
    return images, ignored


def _subfolders(path: str) -> tuple:
    """Returns ``(visible subfolder names sorted, other entries)`` of ``path``."""
    entries = sorted(os.listdir(path))
    dirs = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(path, e))]
    return dirs, [e for e in entries if e not in dirs]


def scan(path: str) -> Scan:
    """Returns the ``Scan`` of image folder ``path``.

    Raises ``UserError`` for a missing path, a folder with fewer than two class folders,
    a class folder without images, or split folders without ``train`` or ``test``.
    """
    check_path(path)
    root = os.path.abspath(path)
    top, loose = _subfolders(root)
    kinds = [SPLIT_FOLDERS.get(d.lower()) for d in top]
    fixed = bool(top) and None not in kinds and "train" in kinds
    if fixed:
        twins = [d for d, k in zip(top, kinds) if kinds.count(k) > 1]
        if twins:
            raise UserError(f"image folder {path} has split folders {' and '.join(twins)} "
                            "for one split; keep one")
        if "test" not in kinds:
            raise UserError(f"image folder {path} has split folders {', '.join(top)} but no "
                            f"test/; add one, or put the class folders directly under {path} "
                            "for a 70/10/20 split")
        parts = {k: d for d, k in zip(top, kinds)}
    else:
        parts = {None: ""}
    ignored = list(loose)
    per_part = {}
    for split, folder in parts.items():
        base = os.path.join(root, folder)
        dirs, stray = _subfolders(base) if folder else (top, [])
        ignored += [os.path.join(folder, s) for s in stray]
        per_part[split] = {}
        for c in dirs:
            images, skipped = _walk(os.path.join(base, c), root)
            per_part[split][c] = images
            ignored += skipped
    classes = tuple(sorted({c for part in per_part.values() for c in part}))
    where = "train/" if fixed else ""
    if len(classes) < 2:
        raise UserError(f"image folder {path} has {len(classes)} class folder(s) under "
                        f"{path}/{where}; need two or more ({path}/{where}CLASS/IMAGE)")
    for c in classes:
        if not per_part["train" if fixed else None].get(c):
            raise UserError(f"class folder {path}/{where}{c} has no images "
                            f"({' '.join(EXTENSIONS)})")
    label = {c: i for i, c in enumerate(classes)}
    files = {split: tuple((rel, label[c]) for c in sorted(part) for rel in part[c])
             for split, part in per_part.items()}
    stamp = []
    for part in files.values():
        for rel, _ in part:
            try:
                st = os.stat(os.path.join(root, rel))
            except OSError:  # a dangling link, a file gone since listed: skipped when decoded
                stamp.append((rel, -1, -1, -1, -1))
                continue
            # The ctime and inode too: an image swapped for another of the same size with
            # its mtime kept (cp -p, rsync -t, tar -x) still changes them.
            stamp.append((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return Scan(root, classes, files, tuple(sorted(stamp)), tuple(sorted(ignored)))


def _digests(s: Scan, data_dir: str) -> dict:
    """Returns ``{relative path: sha256 of the image's bytes}`` for every image of ``s``.

    A digest is read again only for a file whose stamp (size, mtime, ctime, inode) is not
    the one it was digested at: the stamps and digests are kept in the data dir
    (``DIGESTS/``, one file per folder), so a second run reads no image, and a file
    replaced with its mtime kept (``cp -p``) is read again."""
    store = os.path.join(data_dir, BUILDER, DIGESTS,
                         hashlib.sha256(s.root.encode()).hexdigest()[:20] + ".json")
    try:
        with open(store) as f:
            known = {rel: tuple(v) for rel, v in json.load(f).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        known = {}
    out, changed = {}, False
    stamps = {rel: list(stamp) for rel, *stamp in s.stamp}
    for rel, stamp in stamps.items():
        if stamp[0] < 0:  # gone since listed: skipped when decoded
            continue
        seen = known.get(rel)
        if seen is not None and list(seen[:-1]) == stamp:
            out[rel] = seen[-1]
            continue
        try:
            with open(os.path.join(s.root, rel), "rb") as f:
                out[rel] = hashlib.sha256(f.read()).hexdigest()
        except OSError:  # unreadable: skipped when decoded, and named then
            continue
        changed = True
    if changed or set(known) != set(out):
        os.makedirs(os.path.dirname(store), exist_ok=True)
        tmp = f"{store}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({rel: [*stamps[rel], digest] for rel, digest in out.items()}, f)
        os.replace(tmp, store)  # atomic: a concurrent reader sees one whole file or the other
    return out


def content_key(s: Scan, data_dir: str | None = None) -> str:
    """Returns the key of what a folder holds: a hash of its images' relative paths (which
    give their classes and splits) and the sha256 of each one's bytes, and ``FORMAT``.

    Only bytes count: a folder copied elsewhere (``cp -a``, ``rsync -a``, a per-host copy)
    or whose files are chmod-ed keeps its key; a file replaced by another, even of the
    same size with its mtime kept, changes it. ``data_dir`` keeps the digests."""
    from tljax.data.datasets import default_data_dir

    data_dir = data_dir or default_data_dir()
    memo = (s.root, s.stamp, data_dir)  # a sweep asks once per grid point
    if memo not in _CONTENT_KEYS:
        blob = json.dumps([FORMAT, sorted(_digests(s, data_dir).items())])
        _CONTENT_KEYS[memo] = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return _CONTENT_KEYS[memo]


_CONTENT_KEYS = {}


def folder_key(s: Scan, image_size: int, data_dir: str | None = None) -> str:
    """Returns the key of a prepared copy: ``content_key`` with the size setting."""
    blob = json.dumps([content_key(s, data_dir), int(image_size)])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _header(path: str) -> tuple:
    """Returns ``(width, height, mode)`` read from the file's header (no pixels decoded)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0], im.size[1], im.mode


def _decode(path: str, size: int, grey: bool) -> np.ndarray:
    """Returns the image at ``path`` as uint8 (size, size, 1 if grey else 3): upright, its
    centre square resized to ``size``. Raises whatever Pillow raises for a bad file."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey: keep the top 8 bits
            im = Image.fromarray((np.asarray(im, np.int64).clip(0, 65535) // 257)
                                 .astype(np.uint8))
        im = im.convert("L" if grey else "RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
        out = np.asarray(im, np.uint8)
    return out[..., None] if grey else out


def _plan(s: Scan) -> tuple:
    """Returns ``({split: [(rel, label)]}, [(rel, reason)] unreadable, (width, height)
    per readable image, all greyscale)``, reading only headers."""
    readable, bad, sizes, modes = {}, [], [], set()
    for split, part in s.files.items():
        readable[split] = []
        for rel, label in part:
            try:
                w, h, mode = _header(os.path.join(s.root, rel))
            except Exception as e:  # not an image, unreadable: the user's file, skipped
                bad.append((rel, _reason(e, os.path.join(s.root, rel))))
                continue
            readable[split].append((rel, label))
            sizes.append((w, h))
            modes.add(mode)
    if None in readable:  # no split folders: the digits split, over the readable images
        items = readable.pop(None)
        labels = np.array([label for _, label in items], np.int64)
        idx = digits.split_indices(labels) if len(items) else {k: [] for k in SPLITS}
        readable = {k: [items[i] for i in idx[k]] for k in SPLITS}
    elif "val" not in readable:
        train = readable["train"]
        labels = np.array([label for _, label in train], np.int64)
        idx = digits.split_indices(labels, {"train": 1 - VAL_FRACTION, "val": VAL_FRACTION,
                                            "test": 0.0})
        readable["train"], readable["val"] = ([train[i] for i in idx["train"]],
                                              [train[i] for i in idx["val"]])
    return readable, bad, sizes, bool(modes) and modes <= set(_GREY_MODES)


def _reason(e: Exception, path: str) -> str:
    """Returns Pillow's complaint in one line, without the path it repeats."""
    text = (str(e).splitlines() or [""])[0].replace(f" {path!r}", "").replace(path, "")
    text = text.rstrip(": ")  # "No such file or directory: PATH" loses its PATH
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _names(items, total: int, listed_in: str = "") -> str:
    """Returns the first ``_NAMED`` of ``items`` joined, and how many more there are."""
    shown = ", ".join(items[:_NAMED])
    more = total - min(total, _NAMED)
    if more:
        shown += f" and {more} more" + (f" (all listed in {listed_in})" if listed_in else "")
    return shown


@dataclasses.dataclass
class _Config(tfds.core.BuilderConfig):
    size: int = 0
    channels: int = 3
    classes: tuple = ()


class TljaxImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One image folder, decoded with Pillow into uint8 ``Tensor`` features (as ``digits``)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, plan=None, root="", **kwargs):
        self._split_plan, self._root = plan or {}, root
        self.failed, self.kept = [], {}  # filled while generating
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return self.dataset_info_from_configs(
            description="An image folder prepared by tljax.data.folders.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(c.size, c.size, c.channels),
                                              dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(c.classes)),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, items)
                for split, items in self._split_plan.items()}

    def _generate_examples(self, split, items):
        c = self.builder_config
        grey = c.channels == 1
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for i in range(0, len(items), _CHUNK):
                chunk = items[i:i + _CHUNK]
                paths = [os.path.join(self._root, rel) for rel, _ in chunk]
                futures = [pool.submit(_decode, p, c.size, grey) for p in paths]
                for (rel, label), future in zip(chunk, futures):
                    try:
                        image = future.result()
                    except Exception as e:  # truncated or broken pixels: skipped, named
                        self.failed.append((rel, _reason(e, os.path.join(self._root, rel))))
                        continue
                    self.kept[(split, label)] = self.kept.get((split, label), 0) + 1
                    yield rel, {"image": image, "label": label}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An image folder prepared as a TFDS dataset: ``dir`` (its TFDS directory, read with
    ``tfds.builder_from_directory``), ``root`` and ``class_names``."""

    dir: str
    root: str
    class_names: tuple

    def sources(self) -> dict:
        """Returns ``{split: random-access source}`` (``len``, ``[i]`` -> ``{"image": uint8
        (S, S, C), "label": int}``), read lazily from array_record."""
        builder = tfds.builder_from_directory(self.dir)
        return {split: builder.as_data_source(split=split) for split in SPLITS}


def _meta_path(tfds_dir: str) -> str:
    return os.path.join(tfds_dir, "tljax_folder.json")


def prepare(path: str, data_dir: str | None = None, image_size: int = 0) -> Prepared:
    """Returns image folder ``path`` prepared under ``data_dir`` (default: tljax's data
    dir), decoding it only when no copy with the same key exists (see the module
    docstring). ``image_size`` 0 picks S from the folder. Raises ``UserError`` for a bad
    folder or a class with no readable training image; skipped and ignored files are
    named on stderr.
    """
    from tljax.data.datasets import default_data_dir

    if image_size < 0:
        raise UserError(f"folder_image_size must be >= 0 (0 = from the folder); got {image_size}")
    data_dir = data_dir or default_data_dir()
    try:
        s = scan(path)
    except OSError as e:  # a folder we may not list or stat
        raise UserError(f"cannot read image folder {path}: {e.strerror or e} "
                        f"({e.filename})") from None
    key = folder_key(s, image_size, data_dir)
    tfds_dir = os.path.join(data_dir, BUILDER, key, "1.0.0")
    if os.path.exists(os.path.join(tfds_dir, "dataset_info.json")):
        return Prepared(tfds_dir, s.root, s.classes)
    # One process decodes; the others wait for it, then read its copy (two writers would
    # race to rename their copies into place).
    with locks.held(locks.lock_path(data_dir, f"{BUILDER}-{key}"),
                    f"preparing image folder {path}"):
        if os.path.exists(os.path.join(tfds_dir, "dataset_info.json")):
            return Prepared(tfds_dir, s.root, s.classes)
        return _write(path, s, key, data_dir, image_size)


def _write(path: str, s: Scan, key: str, data_dir: str, image_size: int) -> Prepared:
    from tljax.data.datasets import _quiet_tfds

    plan, bad, sizes, grey = _plan(s)
    _check_splits(path, s, {split: len(items) for split, items in plan.items()})
    split_like = [c for c in s.classes if c.lower() in SPLIT_FOLDERS]
    if None in s.files and split_like:  # e.g. train/ dev/ test/ plus one stray folder
        others = [c for c in s.classes if c not in split_like]
        print(f"tljax: warning: image folder {s.root} has subfolders "
              f"{', '.join(split_like)} named like splits, but not every subfolder is a "
              f"split ({', '.join(others[:_NAMED])} is not), so all {len(s.classes)} are "
              f"taken as classes; for split folders keep only train/, val/ (or validation/, "
              f"valid/, dev/) and test/ under it", file=sys.stderr)
    size = image_size or min(AUTO_SIZE_CAP, max((min(wh) for wh in sizes), default=1))
    n = sum(len(v) for v in plan.values())
    config = _Config(name=key, size=size, channels=1 if grey else 3, classes=s.classes)
    with _quiet_tfds(swallow_prints=True):  # no "custom data configuration" warning
        builder = TljaxImageFolder(plan=plan, root=s.root, data_dir=data_dir, config=config,
                                   file_format="array_record")
    print(f"tljax: preparing image folder {s.root} ({_count(n, 'image')}, {len(s.classes)} "
          f"classes, stored as {size}x{size} {'L' if grey else 'RGB'} centre squares) in "
          f"{builder.data_dir}", file=sys.stderr)
    if s.ignored:
        print(f"tljax: ignored {_count(len(s.ignored), 'file')} in {s.root} that are not "
              f"images ({' '.join(EXTENSIONS)}): {_names(s.ignored, len(s.ignored))}",
              file=sys.stderr)
    try:
        with _quiet_tfds(swallow_prints=True):
            builder.download_and_prepare(file_format="array_record")
    except AssertionError:  # tfds's "No examples were yielded": every image of a split failed
        counts = {split: sum(v for (sp, _), v in builder.kept.items() if sp == split)
                  for split in plan}
        _check_splits(path, s, counts)
        raise
    try:  # decoding takes a while: the folder may have been written to meanwhile
        settled = folder_key(scan(path), image_size, data_dir) == key
    except (UserError, OSError):
        settled = False
    if not settled:  # a copy of no state the folder stays in: never read as the folder's
        shutil.rmtree(os.path.dirname(builder.data_dir), ignore_errors=True)
        raise UserError(f"image folder {path} changed while it was prepared (images added, "
                        "removed or rewritten); run again once it is complete")
    failed = bad + builder.failed
    if failed:
        listing = os.path.join(builder.data_dir, "skipped.txt")
        with open(listing, "w") as f:
            f.writelines(f"{rel}\t{why}\n" for rel, why in failed)
        named = _names([f"{rel} ({why})" for rel, why in failed], len(failed), listing)
        print(f"tljax: skipped {_count(len(failed), 'unreadable image')} in {s.root}: {named}",
              file=sys.stderr)
    empty = [c for i, c in enumerate(s.classes) if not builder.kept.get(("train", i))]
    if empty:
        shutil.rmtree(os.path.dirname(builder.data_dir), ignore_errors=True)
        raise UserError(f"class {empty[0]!r} of image folder {path} has no readable "
                        f"training image after skipping unreadable files; fix or remove "
                        f"{path}/{empty[0]}")
    with open(_meta_path(builder.data_dir), "w") as f:
        json.dump({"root": s.root, "image_size": image_size, "key": key}, f)
    _remove_older(data_dir, s.root, image_size, key)
    return Prepared(str(builder.data_dir), s.root, s.classes)


def _check_splits(path: str, s: Scan, counts: dict) -> None:
    """Raises ``UserError`` naming the first split with no (readable) image."""
    for split in SPLITS:
        if not counts.get(split):
            how = (f"its {split}/ folder" if split in s.files else
                   "the stratified 70/10/20 split" if None in s.files else
                   f"{VAL_FRACTION:.0%} of train/")
            need = " (6 or more per class for the 70/10/20 split)" if None in s.files else ""
            raise UserError(f"image folder {path} gives an empty {split} split ({how}; "
                            f"{sum(counts.values())} readable images in all); add images"
                            + need)


def _remove_older(data_dir: str, root: str, image_size: int, key: str) -> None:
    """Deletes the other prepared copies of the same folder and size setting: they are
    of an older state of it, and would otherwise pile up in the data dir."""
    top = os.path.join(data_dir, BUILDER)
    for other in os.listdir(top):
        meta = _meta_path(os.path.join(top, other, "1.0.0"))
        if other == key or not os.path.exists(meta):
            continue
        try:
            with open(meta) as f:
                m = json.load(f)
        except (OSError, ValueError):
            continue
        if m.get("root") == root and m.get("image_size") == image_size:
            shutil.rmtree(os.path.join(top, other), ignore_errors=True)


def sources(path: str, data_dir: str | None = None, image_size: int = 0) -> dict:
    """Returns ``{split: random-access source}`` of image folder ``path``, preparing it
    first if needed (see ``Prepared.sources``)."""
    return prepare(path, data_dir, image_size).sources()
