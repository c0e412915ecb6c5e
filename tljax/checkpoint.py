"""Orbax checkpoints of a model's variables."""

import os

import numpy as np
import orbax.checkpoint as ocp


def save_variables(path: str, variables: dict) -> str:
    """Writes ``variables`` (``params``, ``batch_stats``) to ``path``; returns the absolute path.

    ``orbax.checkpoint.StandardCheckpointer().restore(path)`` returns the same tree.
    """
    path = os.path.abspath(path)
    tree = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree, force=True)
        ckptr.wait_until_finished()
    return path


def restore_variables(path: str) -> dict:
    """Returns the variables saved at ``path`` as numpy arrays."""
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(os.path.abspath(path))
    return _to_numpy(tree)


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
