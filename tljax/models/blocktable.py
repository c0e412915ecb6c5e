"""Blocks, the unit of freezing, declared once per family.

A family's block table lists its blocks input to output as ``(name, (prefix, ...))``,
each prefix a module or param path inside the backbone (``layer1/0``, ``cls_token``).
Both uses of block names derive from that one table, so they cannot drift:

- ``regexes`` gives the param-path regexes strategies match (``backbone/layer1/0(/.*)?``);
- ``frozen_paths`` turns the frozen block names a train step passes in into module paths,
  and ``batch_norm`` runs a BatchNorm on its running statistics when its own path lies
  under one of them. No module spells a block name.
"""

import re
from typing import Sequence

import flax.linen as nn

from tljax.errors import unknown
from tljax.models.layers import batch_norm as _batch_norm


def regexes(table: Sequence) -> tuple:
    """Returns the block order ``(name, param-path regex)`` for ``table``, input to output.

    A regex matches every param (or ``batch_stats`` leaf) at or under one of the block's
    prefixes, below ``backbone``.
    """
    return tuple((name, "backbone/(" + "|".join(re.escape(p) for p in prefixes) + ")(/.*)?")
                 for name, prefixes in table)


def frozen_paths(module: nn.Module, frozen_blocks: Sequence[str], table: Sequence) -> tuple:
    """Returns the absolute module paths (tuples) of the frozen blocks of ``module``.

    ``module`` is the bound backbone; ``head`` is not a backbone block and is skipped.
    Raises ``UserError`` for a name the table does not declare.
    """
    prefixes = dict(table)
    out = []
    for name in frozen_blocks:
        if name == "head":
            continue
        if name not in prefixes:
            raise unknown("block", name, prefixes)
        out += [tuple(module.path) + tuple(p.split("/")) for p in prefixes[name]]
    return tuple(out)


def batch_norm(parent: nn.Module, name: str, train: bool, frozen: Sequence[tuple], **kwargs):
    """Returns the BatchNorm ``name`` of ``parent`` (see ``layers.batch_norm``).

    It trains (batch statistics, running averages updated) only if ``train`` and its path,
    ``parent``'s path plus ``name``, lies under none of the ``frozen`` paths.
    """
    path = tuple(parent.path) + (name,)
    inside = any(path[:len(p)] == p for p in frozen)
    return _batch_norm(train and not inside, name, **kwargs)
