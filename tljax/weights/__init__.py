"""Weight import: a file or checkpoint -> flat named tensors -> strict assignment.

``read(path)`` gives the tensors by their stored names; ``load(source, variables)``
fills a model's backbone from them, strictly, keeping its fresh head unless asked.
"""

import collections
import os

import numpy as np

from tljax.errors import UserError
from tljax.weights import hub
from tljax.weights.readers import FORMATS, read_file
from tljax.weights.strict import assign, flatten_variables
from tljax.weights.torch_names import is_tljax_naming, to_tljax


def read(path: str) -> dict:
    """Returns ``{stored name: np.ndarray}`` from the weights at ``path``: a file or orbax
    checkpoint in any known format, or a Hugging Face model directory."""
    if not os.path.exists(path):
        raise UserError(f"weights not found: {path!r}")
    if hub.is_model_dir(path):  # config.json + weights
        return hub.read_dir(path)
    return read_file(path)


# The last few sources read by ``load``, by fingerprint: a sweep loads one source for every
# run (480 times in the Lee miniature, a sixth of a small run's wall time), and a source
# whose bytes are unchanged gives the same tensors.
_READ_CACHE: "collections.OrderedDict[tuple, dict]" = collections.OrderedDict()
_READ_CACHE_SIZE = 2


def _fingerprint(path: str) -> tuple:
    """Returns what identifies the bytes at ``path`` without reading them: for each file
    (every file under a directory) its relative name, inode, size and modification and
    change times in ns. A rewrite, an atomic replace or an added file changes it."""
    def stat(p):
        st = os.stat(p)
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    path = os.path.realpath(path)
    if not os.path.isdir(path):
        return (path, stat(path))
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files += [(os.path.relpath(os.path.join(root, n), path), stat(os.path.join(root, n)))
                  for n in sorted(names)]
    return (path, stat(path), tuple(files))


def _read_cached(source: str) -> dict:
    """Returns ``read(source)``, from memory when the source's fingerprint is unchanged
    since it was last read. The arrays are read-only: callers share them."""
    if not os.path.exists(source):
        raise UserError(f"weights not found: {source!r}")
    key = _fingerprint(source)
    if key in _READ_CACHE:
        _READ_CACHE.move_to_end(key)
        return _READ_CACHE[key]
    tensors = read(source)
    for value in tensors.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    _READ_CACHE[key] = tensors
    while len(_READ_CACHE) > _READ_CACHE_SIZE:
        _READ_CACHE.popitem(last=False)
    return tensors


def load(source: str, variables: dict, torch_names: dict | None = None,
         keep_head: bool = False, log=None) -> dict:
    """Returns ``variables`` with the backbone (and head if ``keep_head``) from ``source``.

    ``source`` is any format ``read`` knows. Tensors named the PyTorch way are converted
    with ``torch_names`` (the family's rules: ``head``, ``embeddings``, ``ignore``,
    ``strip``; see ``torch_names.to_tljax``); tljax-named ones (orbax) are taken as they
    are. Strict: one error names every missing, unexpected or mis-shaped tensor. ``log``,
    if given, gets one line saying how many tensors were loaded and naming every stored
    tensor deliberately not loaded (the source's classifier head, the family's ignored
    tensors) and why.
    """
    tensors = _read_cached(source)
    trace = {}
    if not is_tljax_naming(tensors):
        tensors = to_tljax(tensors, **(torch_names or {}), trace=trace)
    out = assign(variables, tensors, keep_head=keep_head)
    if log is not None:
        log(_report(source, tensors, trace, (torch_names or {}).get("ignore_why", ""),
                    keep_head, variables))
    return out


def _report(source, tensors: dict, trace: dict, ignore_why: str, keep_head: bool,
            variables: dict) -> str:
    """Returns the load's one-line account: tensors loaded, and what was left out, why."""
    origin = trace.get("origin", {})
    head = sorted(k for k in tensors if k.split("/")[1] == "head")
    loaded = len(tensors) - (0 if keep_head else len(head))
    parts = [f"weights {source}: {loaded} tensors loaded into the "
             + ("model" if keep_head and head else "backbone")]
    if head and not keep_head:
        out = np.shape(tensors["params/head/bias"])[0] if "params/head/bias" in tensors else "?"
        fresh = np.shape(variables["params"]["head"]["bias"])[0]
        names = ", ".join("%s %s" % origin.get(k, (k, tuple(np.shape(tensors[k]))))
                          for k in head)
        parts.append(f"not loaded: the source's {out}-class classifier head ({names}); this "
                     f"model's {fresh}-class head starts fresh")
    ignored = trace.get("ignored", {})
    if ignored:
        names = ", ".join(f"{k} {v}" for k, v in sorted(ignored.items()))
        parts.append(f"not loaded, not part of this model: {names}"
                     + (f" ({ignore_why})" if ignore_why else ""))
    return "; ".join(parts)


__all__ = ["FORMATS", "assign", "flatten_variables", "load", "read"]
