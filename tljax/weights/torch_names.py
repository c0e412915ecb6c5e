"""PyTorch state-dict names and layouts -> tljax's flat variable names.

One rule set serves every family whose flax modules mirror the PyTorch module names
(ResNet, EfficientNet, ViT, BERT, VGG): ``a.b.weight`` becomes ``params/backbone/a/b/...``
with the layout change its rank implies; the family says which modules are its
classifier head, which are embeddings, and which stored tensors it does not use.
"""

import re

import numpy as np

_BUFFERS = r"(.*\.)?(num_batches_tracked|position_ids)"


def to_tljax(tensors: dict, head=(), embeddings: str = r"(?!)", ignore: str = r"(?!)",
             strip: str = "", rename=None) -> dict:
    """Returns ``{"params/backbone/conv1/kernel": array, ...}`` from torch-named tensors.

    Layouts: conv ``OIHW -> HWIO`` (depthwise ``(C,1,H,W) -> (H,W,1,C)``), conv1d
    ``OIW -> WIO``, linear ``W -> W.T``, 1-D ``weight -> scale`` (BatchNorm, LayerNorm),
    ``running_mean/var -> batch_stats mean/var``, embedding tables unchanged. Modules in
    ``head`` map to ``params/head``; names matching ``ignore`` and buffers
    (``num_batches_tracked``, ``position_ids``) are dropped; ``strip`` is a name prefix
    to remove first (``module.``, ``bert.``); ``rename`` is the family's function from
    another layout of the same architecture (Hugging Face's, say) to the one its modules
    mirror.
    """
    if rename is not None:
        tensors = rename(tensors)
    out = {}
    for name, array in tensors.items():
        if strip and name.startswith(strip):
            name = name[len(strip):]
        if re.fullmatch(ignore, name) or re.fullmatch(_BUFFERS, name):
            continue
        module, _, leaf = name.rpartition(".")
        if module in head:
            top = "head"
        else:
            top = "backbone/" + module.replace(".", "/") if module else "backbone"
        array = np.asarray(array)
        if leaf == "running_mean":
            out[f"batch_stats/{top}/mean"] = array
        elif leaf == "running_var":
            out[f"batch_stats/{top}/var"] = array
        elif leaf == "weight" and re.fullmatch(embeddings, module):
            out[f"params/{top}/embedding"] = array
        elif leaf == "weight" and array.ndim == 4:
            out[f"params/{top}/kernel"] = array.transpose(2, 3, 1, 0)
        elif leaf == "weight" and array.ndim == 3:
            out[f"params/{top}/kernel"] = array.transpose(2, 1, 0)
        elif leaf == "weight" and array.ndim == 2:
            out[f"params/{top}/kernel"] = array.T
        elif leaf == "weight" and array.ndim == 1:
            out[f"params/{top}/scale"] = array
        else:  # bias, and free-standing params such as cls_token or pos_embed
            out[f"params/{top}/{leaf}"] = array
    return out


def is_tljax_naming(tensors: dict) -> bool:
    """Returns True where the names are already tljax's (``params/...``, ``batch_stats/...``)."""
    return all(k.split("/")[0] in ("params", "batch_stats") for k in tensors)
