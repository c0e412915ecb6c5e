"""Data parallelism: a device mesh with NamedSharding (default) or pmap (legacy), on one
or several processes.

Mesh: the batch is split over the ``data`` axis of a 1-D mesh of all devices (every
process's, after ``initialize_multihost``), params and optimizer state are replicated, or,
for params whose path matches ``fsdp_regex``, split along their largest divisible
dimension (FSDP-style); jit inserts the collectives. The mesh uses Auto axes so sharding
propagates through the step unannotated.

Several processes: each loads only its rows of every global batch (``process_rows``) and
the global array is assembled from the pieces (``global_batch``); results come back to
every process whole (``to_host``, ``map_batches``), and process 0 alone writes files
(``is_writer``). pmap maps over one process's devices, so it is refused there.
"""

import functools
import os
import re

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tljax.errors import UserError, unknown

MODES = ("mesh", "pmap")


ENV_KEYS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_multihost(environ=None) -> None:
    """Joins a multi-process run through ``jax.distributed.initialize``; returns nothing.

    With ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` in ``environ`` (default
    ``os.environ``), all three of ``ENV_KEYS`` are read and passed on: JAX itself reads
    only the coordinator address outside a cluster it detects. Without them JAX detects
    the cluster (SLURM, Cloud TPU, MPI, Kubernetes). Raises ``UserError`` for a missing or
    malformed variable, or when no cluster is found.
    """
    env = os.environ if environ is None else environ
    # CPU devices of different processes talk through gloo; GPU and TPU collectives are
    # not affected by this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    address, count, index = (env.get(k, "").strip() for k in ENV_KEYS)
    if not count and not index:
        try:
            jax.distributed.initialize()
        except ValueError as e:  # nothing detected: JAX says what it missed
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"--distributed found no cluster ({first}); set "
                            f"{', '.join(ENV_KEYS)}, run under SLURM or on a Cloud TPU VM, "
                            "or try it on one machine with `tljax launch`") from None
        return
    missing = [k for k, v in zip(ENV_KEYS, (address, count, index)) if not v]
    if missing:
        raise UserError(f"--distributed needs {', '.join(ENV_KEYS)} together; "
                        f"{', '.join(missing)} not set")
    try:
        num_processes, process_id = int(count), int(index)
    except ValueError:
        raise UserError(f"JAX_NUM_PROCESSES {count!r} and JAX_PROCESS_ID {index!r} must be "
                        "integers") from None
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise UserError(f"JAX_PROCESS_ID {process_id} is not in 0..{num_processes - 1} "
                        f"(JAX_NUM_PROCESSES {num_processes})")
    jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)


def one_step_at_a_time() -> bool:
    """Returns whether a training step must finish before the next is launched: on CPU
    devices of several processes. There, XLA runs every device's work on one thread pool
    (as many threads as cores); with steps queued ahead, a launch blocked behind a step
    that has not started can hold the last free thread while the other device's gloo
    all-reduce holds the rest, waiting for it: seen as a run that hangs after some
    hundred steps on 2 cores with 2 devices per process."""
    return jax.process_count() > 1 and jax.default_backend() == "cpu"


def is_writer() -> bool:
    """Returns True in the one process that writes files (process 0)."""
    return jax.process_index() == 0


def process_prefix() -> str:
    """Returns ``"[p1/2] "`` (this process of how many) in a multi-process run, else ''."""
    n = jax.process_count()
    return f"[p{jax.process_index()}/{n}] " if n > 1 else ""


def barrier(name: str) -> None:
    """Waits until every process has reached ``name`` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# A day is the longest ``wait_for_writer`` waits (the coordination service needs a limit).
_WRITER_WAIT_MS = 24 * 3600 * 1000


def writer_done(name: str, value: str = "") -> None:
    """Tells the other processes that process 0 has made ``name``, and ``value`` (what it
    made, e.g. its path); a no-op elsewhere and with one process. Saying it again is
    allowed."""
    if jax.process_count() > 1 and is_writer():
        from jax._src import distributed

        distributed.global_state.client.key_value_set(f"tljax/made/{name}", value,
                                                      allow_overwrite=True)


def wait_for_writer(name: str) -> str:
    """Returns process 0's ``value`` of ``writer_done(name, value)`` once it has said it
    ('' with one process, and in process 0).

    Unlike a collective, it has no short timeout: process 0 may take hours to make what
    it makes (a dataset, a source model). If process 0 fails meanwhile, this process is
    stopped (``tljax.peers``)."""
    if jax.process_count() > 1 and not is_writer():
        from jax._src import distributed

        return distributed.global_state.client.blocking_key_value_get(f"tljax/made/{name}",
                                                                       _WRITER_WAIT_MS)
    return ""


def agree(name: str, value: str, what: str) -> None:
    """Raises ``UserError`` in every process whose ``value`` of ``name`` differs from
    process 0's (a no-op with one process): processes that disagree on what a run is
    would each skip, resume or wait for different things. ``what`` says in words what
    ``value`` is a digest of, for the message."""
    if jax.process_count() < 2:
        return
    writer_done(f"agree/{name}", value)
    theirs = wait_for_writer(f"agree/{name}")
    if not is_writer() and theirs != value:
        raise UserError(f"this process ({jax.process_index()}) and process 0 disagree on "
                        f"{what} ({value[:12]} here, {theirs[:12]} there): every process "
                        "needs the same config, tljax and data (the same bytes of every "
                        "file it reads)")


def from_writer(value):
    """Returns process 0's ``value`` (a pytree of arrays of the same shapes on every
    process) on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(value)


def make_mesh(num_devices: int | None = None):
    """Returns a 1-D ``data`` mesh over ``num_devices`` devices (default: all)."""
    n = num_devices or jax.device_count()
    return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch(batch_size: int, num_devices: int) -> None:
    """Raises ``UserError`` unless ``batch_size`` splits evenly over the devices."""
    if batch_size % num_devices:
        raise UserError(f"batch_size {batch_size} does not split over {num_devices} devices; "
                        f"use a multiple of {num_devices}")


def process_rows(mesh, size: int) -> np.ndarray:
    """Returns the positions (ascending) in a global batch of ``size`` rows split over
    ``mesh`` that this process's devices hold: the rows it loads, in the order
    ``global_batch`` takes them. All rows with one process."""
    spans = sorted({(s[0].start or 0, size if s[0].stop is None else s[0].stop) for s in
                    NamedSharding(mesh, P("data")).addressable_devices_indices_map(
                        (size,)).values()})
    return np.concatenate([np.arange(a, b) for a, b in spans])


def global_batch(mesh, size: int, *local_arrays) -> tuple:
    """Returns global arrays of ``size`` rows split over ``mesh`` along their first axis,
    built from this process's rows of each (``local_arrays``, rows ``process_rows``)."""
    sharding = NamedSharding(mesh, P("data"))
    return tuple(jax.make_array_from_process_local_data(
        sharding, np.asarray(a), (size,) + np.shape(a)[1:]) for a in local_arrays)


def shard_batch(mesh, *arrays):
    """Returns the arrays placed on ``mesh`` split along their first (batch) axis; each
    process passes the whole batch and contributes its own rows."""
    rows = process_rows(mesh, len(arrays[0]))
    return global_batch(mesh, len(arrays[0]), *(np.asarray(a)[rows] for a in arrays))


def _place(host, sharding):
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def replicate_on(mesh, tree):
    """Returns ``tree`` (host values, the same on every process) replicated on every
    device of ``mesh``."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _place(x, sharding), tree)


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
    # From host values every process holds alike, each process fills its own devices
    # (device_put cannot address another process's devices).
    return jax.tree.map(_place, state, shardings)


def to_host(tree):
    """Returns ``tree`` as numpy arrays, whole on every process: replicated leaves are read
    from a local copy, leaves split across processes (FSDP) are gathered."""
    def get(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


@functools.lru_cache(maxsize=64)
def replicated_jit(fn, mesh):
    """Returns ``jax.jit(fn)`` whose outputs are replicated on every device of ``mesh``
    (so every process can read them whole), memoised on ``(fn, mesh)``."""
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))


def map_batches(fn, mesh, args, inputs, batch_size: int) -> np.ndarray:
    """Returns ``fn(args, batch)`` over ``inputs`` in order, concatenated as numpy on every
    process (``fn`` from ``replicated_jit``).

    Each batch has ``batch_size`` rows rounded up to a multiple of the device count (the
    last one padded with copies of the final row, whose outputs are dropped) and is split
    over ``mesh``; each process loads only its rows of it (``inputs[indices]``).
    """
    if len(inputs) == 0:
        raise ValueError("cannot evaluate on an empty split")
    return np.concatenate([out for _, out in batch_outputs(fn, mesh, args, inputs, batch_size)])


def batch_outputs(fn, mesh, args, inputs, batch_size: int):
    """Yields ``(start, fn(args, inputs[start:start + k]))`` as numpy, batch by batch, as
    ``map_batches`` computes them (for writing results out as they come). A streamed
    array (``tljax.data.streaming``) reads its batches ahead on worker threads."""
    n = len(inputs)
    devices = mesh.devices.size
    size = -(-batch_size // devices) * devices
    rows = process_rows(mesh, size)
    starts = range(0, n, size)
    picks = [np.minimum(np.arange(start, start + size), n - 1)[rows] for start in starts]
    loaded = inputs.gather(picks) if hasattr(inputs, "gather") else (inputs[p] for p in picks)
    for start, local in zip(starts, loaded):
        (batch,) = global_batch(mesh, size, local)
        yield start, np.asarray(fn(args, batch).addressable_data(0))[:n - start]


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
    """Raises ``UserError`` for an unknown parallel mode, and for pmap in a multi-process
    run (it maps over one process's devices only)."""
    if mode not in MODES:
        raise unknown("parallel mode", mode, MODES)
    if mode == "pmap" and jax.process_count() > 1:
        raise UserError(f"parallel='pmap' runs in one process only; this run has "
                        f"{jax.process_count()} processes: use parallel='mesh' (the default)")


__all__ = ["ENV_KEYS", "MODES", "barrier", "check_batch", "check_mode", "from_writer",
           "global_batch", "initialize_multihost", "is_writer", "make_mesh", "map_batches",
           "place_state", "pmap_step", "process_prefix", "process_rows", "replicate",
           "replicate_on", "replicated_jit", "shard_batch", "split_batch", "to_host",
           "unreplicate"]
