"""A dataset as model inputs: every split preprocessed (images) or tokenized (text).

``load_inputs`` gives a run its splits; a split too large for memory stays on disk
(``tljax.data.streaming``) and reads batch by batch, looking like an array to its users.
"""

import dataclasses
import os

import numpy as np

from tljax import data, probe
from tljax.errors import UserError
from tljax.models import zoo


@dataclasses.dataclass
class Inputs:
    """Preprocessed model inputs: ``{split name: (float images or int32 token ids, labels)}``,
    and with a target domain its train split's inputs alone (``target_train``: no labels,
    so nothing can read them; its test and val splits are ``target`` and ``target_val``)."""

    num_classes: int
    splits: dict
    target_train: object = None


def load_dataset(cfg, spec: str, splits: dict | None = None, prep=None) -> data.Dataset:
    """Returns dataset ``spec`` as ``cfg`` reads it (data dir, download, text columns, the
    stored size of an image folder), with ``splits`` (tljax split -> the dataset's split
    string; None: its default). Given the model's image ``prep``, a split whose float32
    input exceeds ``cfg.stream_above_mb`` stays on disk (``tljax.data.streaming``)."""
    if prep is not None and prep.kind == "image":
        return data.streaming.load(spec, cfg.data_dir or None, cfg.download, prep,
                                   cfg.stream_above_mb, cfg.folder_image_size, splits)
    return data.load(spec, data_dir=cfg.data_dir or None, download=cfg.download, splits=splits,
                     columns=data.Columns(cfg.text_column, cfg.label_column, cfg.pair_column),
                     folder_image_size=cfg.folder_image_size)


def dataset_classes(cfg, spec: str) -> int:
    """Returns the number of classes of dataset ``spec``; an image dataset's images are not
    read (it may be too large for memory)."""
    if data.kind(data.parse_spec(spec)[0]) != "image":
        return load_dataset(cfg, spec).num_classes
    return data.streaming.num_classes(spec, cfg.data_dir or None, cfg.download,
                                      cfg.folder_image_size)


def _model_input(cfg, split, prep) -> np.ndarray:
    """Returns one split as model input: preprocessed images, or packed token ids of its
    texts from the weights' own tokenizer (``tljax.text``), cached beside the features."""
    if prep.kind != "text":
        return data.preprocess(split.images, prep)
    from tljax import text

    cache = {"": probe.default_cache_dir(), "none": ""}.get(cfg.feature_cache, cfg.feature_cache)
    return text.encode_split(split, text.find_tokenizer(cfg.tokenizer, zoo.resolve(cfg.weights)),
                             cfg.max_length, os.path.join(cache, "tokens") if cache else "")


def load_inputs(cfg, spec: str, prep) -> Inputs:
    """Returns every split of ``spec`` and each of ``cfg.shifted``'s test splits, preprocessed
    with ``prep`` (images) or tokenized (text). ``cfg.splits`` picks the target's splits;
    with ``cfg.final_fit == "train+val"`` the train split is train and val together."""
    ds = load_dataset(cfg, spec, cfg.splits.to_dict() or None, prep)
    splits = {}
    for name, split in ds.splits.items():
        if len(split.labels) == 0:
            raise UserError(f"split {name!r} of dataset {spec!r} is empty")
        splits[name] = (_model_input(cfg, split, prep), split.labels)
    for name, shifted_spec in cfg.shifted.items():
        shifted = load_dataset(cfg, shifted_spec, prep=prep)
        if shifted.num_classes != ds.num_classes:
            raise UserError(f"shifted split {name!r} ({shifted_spec}) has {shifted.num_classes} "
                            f"classes; the target dataset {spec!r} has {ds.num_classes}")
        test = shifted.splits["test"]
        splits[name] = (_model_input(cfg, test, prep), test.labels)
    target_train = None
    if cfg.target:
        target = load_dataset(cfg, cfg.target, prep=prep)
        if target.num_classes != ds.num_classes:
            raise UserError(f"target {cfg.target!r} has {target.num_classes} classes; the "
                            f"dataset {spec!r} has {ds.num_classes} (the same classes, "
                            "another domain)")
        target_train = _model_input(cfg, target.splits["train"], prep)  # its labels: never
        for name, split in (("target", "test"), ("target_val", "val")):
            found = target.splits[split]
            splits[name] = (_model_input(cfg, found, prep), found.labels)
    if cfg.final_fit == "train+val":  # the sweep's final phase (val still reported, not used)
        splits["train"] = tuple(np.concatenate([a, b]) for a, b in zip(splits["train"],
                                                                      splits["val"]))
    return Inputs(ds.num_classes, splits, target_train)
