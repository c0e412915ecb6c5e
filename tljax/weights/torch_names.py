"""PyTorch state-dict names and layouts -> tljax's flat variable names.

One rule set serves every family whose flax modules mirror the PyTorch module names
(ResNet, EfficientNet, ViT, BERT, VGG): ``a.b.weight`` becomes ``params/backbone/a/b/...``
with the layout change its rank implies; the family says which modules are its
classifier head, which are embeddings, and which stored tensors it does not use.
"""

import re

import numpy as np

from tljax.errors import UserError

_BUFFERS = r"(.*\.)?(num_batches_tracked|position_ids)"
# A torch weight's axes -> tljax's, by rank: 1-D scale as is, linear W.T, conv1d OIW -> WIO,
# conv OIHW -> HWIO (depthwise (C,1,H,W) -> (H,W,1,C)).
_LAYOUTS = {1: (0,), 2: (1, 0), 3: (2, 1, 0), 4: (2, 3, 1, 0)}


def to_tljax(tensors: dict, head=(), embeddings: str = r"(?!)", ignore: str = r"(?!)",
             strip: str = "", rename=None, ignore_why: str = "",
             trace: dict | None = None) -> dict:
    """Returns ``{"params/backbone/conv1/kernel": array, ...}`` from torch-named tensors.

    Layouts: conv ``OIHW -> HWIO`` (depthwise ``(C,1,H,W) -> (H,W,1,C)``), conv1d
    ``OIW -> WIO``, linear ``W -> W.T``, 1-D ``weight -> scale`` (BatchNorm, LayerNorm),
    ``running_mean/var -> batch_stats mean/var``, embedding tables unchanged. Modules in
    ``head`` map to ``params/head``; names matching ``ignore`` and buffers
    (``num_batches_tracked``, ``position_ids``) are dropped; ``strip`` is a name prefix
    to remove first (``module.``, ``bert.``); ``rename`` is the family's function from
    another layout of the same architecture (Hugging Face's, say) to the one its modules
    mirror; ``ignore_why`` says what the ignored tensors are, for the load report.
    ``trace``, if given, receives ``ignored`` (``{name: shape}`` of every ignored tensor,
    buffers aside) and ``origin`` (``{tljax name: (stored name, stored shape)}``), both by
    the names the file stores.
    """
    ignored, origin, before = {}, {}, {}
    if trace is not None:
        trace.update(ignored=ignored, origin=origin)
    if rename is not None:
        if trace is not None:  # each stored name's renamed name (fused tensors keep none)
            for name, array in tensors.items():
                for renamed in rename({name: array}):
                    before.setdefault(renamed, name)
        tensors = rename(tensors)
    out = {}
    for name, array in tensors.items():
        stored = before.get(name, name)
        if strip and name.startswith(strip):
            name = name[len(strip):]
        if re.fullmatch(_BUFFERS, name):
            continue
        if re.fullmatch(ignore, name):
            ignored[stored] = tuple(np.shape(array))
            continue
        module, _, leaf = name.rpartition(".")
        if module in head:
            top = "head"
        else:
            top = "backbone/" + module.replace(".", "/") if module else "backbone"
        array = np.asarray(array)
        where = (stored, tuple(array.shape))
        if leaf == "running_mean":
            key = f"batch_stats/{top}/mean"
        elif leaf == "running_var":
            key = f"batch_stats/{top}/var"
        elif leaf == "weight" and re.fullmatch(embeddings, module):
            key = f"params/{top}/embedding"
        elif leaf == "weight" and array.ndim in (1, 2, 3, 4):
            key = f"params/{top}/" + ("scale" if array.ndim == 1 else "kernel")
            array = array.transpose(_LAYOUTS[array.ndim])
        else:  # bias, and free-standing params such as cls_token or pos_embed
            key = f"params/{top}/{leaf}"
        if key in out:  # e.g. "bert.x" and "x" both stored: neither may silently win
            raise UserError(f"tensors {origin[key][0]!r} and {stored!r} both map to {key}")
        out[key], origin[key] = array, where
    return out


def is_tljax_naming(tensors: dict) -> bool:
    """Returns True where the names are already tljax's (``params/...``, ``batch_stats/...``)."""
    return all(k.split("/")[0] in ("params", "batch_stats") for k in tensors)


def renamed(name: str, rules) -> str:
    """Returns ``name`` after each ``(regex, replacement)`` of ``rules`` in turn (a family's
    map from another layout's names to its own)."""
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name
