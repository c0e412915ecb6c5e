"""Data parallelism: a device mesh with NamedSharding (default) or pmap (legacy).

Mesh: the batch is split over the ``data`` axis of a 1-D mesh of all local devices
(global devices after ``jax.distributed.initialize()`` on several hosts), params and
optimizer state are replicated, or, for params whose path matches ``fsdp_regex``, split
along their largest divisible dimension (FSDP-style); jit inserts the collectives. The
mesh uses Auto axes so sharding propagates through the step unannotated.
"""

import re

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tljax.errors import UserError, unknown

MODES = ("mesh", "pmap")


def initialize_multihost() -> None:
    """Joins a multi-host run (JAX's own runtime: coordinator address, process count and
    id from the environment or the cluster, e.g. SLURM, Cloud TPU)."""
    jax.distributed.initialize()


def make_mesh(num_devices: int | None = None):
    """Returns a 1-D ``data`` mesh over ``num_devices`` devices (default: all)."""
    n = num_devices or jax.device_count()
    return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch(batch_size: int, num_devices: int) -> None:
    """Raises ``UserError`` unless ``batch_size`` splits evenly over the devices."""
    if batch_size % num_devices:
        raise UserError(f"batch_size {batch_size} does not split over {num_devices} devices; "
                        f"use a multiple of {num_devices}")


def shard_batch(mesh, *arrays):
    """Returns the arrays placed on ``mesh`` split along their first (batch) axis."""
    sharding = NamedSharding(mesh, P("data"))
    return tuple(jax.device_put(a, sharding) for a in arrays)


def place_state(mesh, state, fsdp_regex: str = ""):
    """Returns ``state`` on ``mesh``: replicated, except params (and their optimizer
    moments) matching ``fsdp_regex``, split along their largest dimension that divides
    by the mesh size."""
    n = mesh.devices.size
    pattern = re.compile(fsdp_regex) if fsdp_regex else None

    def spec(path, leaf):
        names = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        shape = np.shape(leaf)
        if pattern is None or not shape or not pattern.search(names):
            return NamedSharding(mesh, P())
        dims = [d for d in np.argsort(shape)[::-1] if shape[d] % n == 0]
        if not dims:
            return NamedSharding(mesh, P())
        axes = [None] * len(shape)
        axes[dims[0]] = "data"
        return NamedSharding(mesh, P(*axes))

    shardings = jax.tree_util.tree_map_with_path(spec, state)
    return jax.device_put(state, shardings)


def pmap_step(step_fn, num_devices: int):
    """Returns a pmapped ``step`` over ``num_devices`` local devices (the legacy route).

    ``step_fn`` must be built with ``axis_name="data"`` (``train.make_step``) so gradients,
    loss and BatchNorm statistics are averaged across devices. It takes and returns the
    state replicated (``replicate``) and batches split by ``split_batch``.
    """
    return jax.pmap(step_fn, axis_name="data", donate_argnums=0,
                    devices=jax.local_devices()[:num_devices])


def replicate(tree, num_devices: int):
    """Returns ``tree`` with a leading device axis, one copy per local device (pmap)."""
    # pmap splits a leading axis over its devices; stacking copies replicates.
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (num_devices,) + np.shape(x)),
                        tree)


def unreplicate(tree):
    """Returns the first device's copy of a pmap-replicated tree."""
    return jax.tree.map(lambda x: x[0], tree)


def split_batch(num_devices: int, *arrays):
    """Returns the arrays reshaped to (devices, batch / devices, ...) for pmap."""
    return tuple(a.reshape((num_devices, -1) + a.shape[1:]) for a in arrays)


def check_mode(mode: str) -> None:
    """Raises ``UserError`` for an unknown parallel mode."""
    if mode not in MODES:
        raise unknown("parallel mode", mode, MODES)


__all__ = ["MODES", "check_batch", "check_mode", "initialize_multihost", "make_mesh",
           "place_state", "pmap_step", "replicate", "shard_batch", "split_batch",
           "unreplicate"]
