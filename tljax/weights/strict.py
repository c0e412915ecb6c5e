"""Strict assignment of flat named tensors into a model's variables."""

import numpy as np
from flax import traverse_util

from tljax.errors import UserError

_COLLECTIONS = ("params", "batch_stats")


def flatten_variables(variables: dict) -> dict:
    """Returns ``{"params/backbone/conv1/kernel": array, ...}`` for a variables tree."""
    return {k: v for k, v in traverse_util.flatten_dict(
        {c: variables[c] for c in _COLLECTIONS if c in variables}, sep="/").items()}


def assign(variables: dict, tensors: dict, keep_head: bool = False) -> dict:
    """Returns ``variables`` with every backbone tensor (and the head if ``keep_head``) from
    ``tensors``, a flat map in tljax's own naming (``params/backbone/...``).

    Strict: one ``UserError`` names every missing, unexpected and mis-shaped tensor with
    its shape. Without ``keep_head``, head tensors in ``tensors`` are ignored and the
    model's fresh head is kept.
    """
    def wanted(name):
        return name.split("/")[1] == "backbone" or (keep_head and name.split("/")[1] == "head")

    model = {k: v for k, v in flatten_variables(variables).items() if wanted(k)}
    given = {k: v for k, v in tensors.items() if wanted(k) or k.split("/")[1] != "head"}
    missing = sorted(set(model) - set(given))
    unexpected = sorted(set(given) - set(model))
    misshaped = sorted(k for k in set(model) & set(given)
                       if tuple(np.shape(given[k])) != tuple(np.shape(model[k])))
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(f"{k} {tuple(np.shape(model[k]))}" for k in missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(
            f"{k} {tuple(np.shape(given[k]))}" for k in unexpected))
    if misshaped:
        problems.append("mis-shaped: " + ", ".join(
            f"{k} {tuple(np.shape(given[k]))} in weights vs {tuple(np.shape(model[k]))} in model"
            for k in misshaped))
    if problems:
        raise UserError("weights do not fit the model; " + "; ".join(problems))
    flat = flatten_variables(variables)
    for k in model:
        flat[k] = np.asarray(given[k], dtype=np.asarray(model[k]).dtype)
    return traverse_util.unflatten_dict(flat, sep="/")
