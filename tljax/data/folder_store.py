"""An image folder's prepared copy: decoded once, stored as array_record in the data dir.

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
import json
import os
import shutil
import sys

import numpy as np
import tensorflow_datasets as tfds

from tljax import locks
from tljax.data import digits
from tljax.data.folders import (AUTO_SIZE_CAP, BUILDER, EXTENSIONS, SPLIT_FOLDERS, SPLITS,
                                VAL_FRACTION, Scan, folder_key, scan)
from tljax.data.tfds_env import default_data_dir, quiet_tfds
from tljax.errors import UserError

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_NAMED = 10  # files named in a message; the rest are counted
_CHUNK = 256  # images decoded per batch of threads: bounds the decoded images held at once


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
    with quiet_tfds(swallow_prints=True):  # no "custom data configuration" warning
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
        with quiet_tfds(swallow_prints=True):
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
