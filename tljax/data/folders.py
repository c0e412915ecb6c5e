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

How a folder is decoded, sized and stored: ``tljax.data.folder_store``.
"""

import dataclasses
import hashlib
import json
import os

from tljax.data.tfds_env import default_data_dir
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
