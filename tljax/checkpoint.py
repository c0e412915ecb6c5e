"""Orbax checkpoints of a model's variables, and of a run's train state for resume."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from tljax import parallel


def save_variables(path: str, variables: dict, alone: bool = False) -> str:
    """Writes ``variables`` (``params``, ``batch_stats``) to ``path``; returns the absolute path.

    ``orbax.checkpoint.StandardCheckpointer().restore(path)`` returns the same tree. In a
    multi-process run every process calls it with the same values and process 0 writes;
    with ``alone``, process 0 calls it by itself (the others wait for it elsewhere).
    """
    path = os.path.abspath(path)
    tree = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    options = ocp.options.MultiprocessingOptions()
    if jax.process_count() > 1:
        # Every process calls this (orbax synchronises them); with host values process 0
        # alone writes them. A one-device array would be taken for a shard of each process.
        tree = jax.tree.map(np.asarray, tree) if alone else parallel.to_host(tree)
        if alone:
            assert parallel.is_writer(), "only process 0 saves alone"
            options = ocp.options.MultiprocessingOptions(
                primary_host=0, active_processes={0}, barrier_sync_key_prefix="tljax-alone")
    with ocp.StandardCheckpointer(multiprocessing_options=options) as ckptr:
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


class RunCheckpoints:
    """Checkpoints of one run's whole train state (params, batch_stats, optimizer state,
    step) under ``directory``, through orbax's CheckpointManager: the newest two are kept;
    a half-written one (a run killed mid-save) is never listed, and an unreadable one is
    skipped, with a warning, for the one before it.

    In a multi-process run every process creates, saves, restores and closes it alike
    (orbax synchronises them); a state of global arrays is written shard by shard by the
    processes that hold them, and restored onto the shardings of ``like``.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False))

    def save(self, state, step: int) -> None:
        """Writes ``state`` as step ``step`` and waits until it is on disk."""
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()

    def restore_latest(self, like, warn=print) -> tuple:
        """Returns ``(step, state)`` of the newest readable checkpoint, ``(0, None)`` if none.

        ``like`` is a state of the same structure (shapes, dtypes and shardings are taken
        from it).
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return step, self.manager.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as e:  # orbax raises many types for a damaged checkpoint
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                warn(f"warning: checkpoint at step {step} in {self.directory} is unreadable "
                     f"({first}); trying an earlier one")
        return 0, None

    def close(self) -> None:
        """Releases the manager's resources."""
        self.manager.close()
