"""Weight import: a file or checkpoint -> flat named tensors -> strict assignment.

``read(path)`` gives the tensors by their stored names; ``load(source, variables)``
fills a model's backbone from them, strictly, keeping its fresh head unless asked.
"""

import hashlib
import os

from tljax.errors import UserError
from tljax.weights.strict import assign, flatten_variables


def read(path: str) -> dict:
    """Returns ``{name: np.ndarray}`` from the weights at ``path``.

    Formats: an orbax checkpoint directory of tljax variables (names
    ``params/backbone/...``, ``batch_stats/...``).
    """
    if not os.path.exists(path):
        raise UserError(f"weights not found: {path!r}")
    if os.path.isdir(path):
        from tljax.checkpoint import restore_variables

        try:
            return flatten_variables(restore_variables(path))
        except Exception as e:  # orbax raises many types for a bad directory
            raise UserError(f"cannot read orbax checkpoint {path!r}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    raise UserError(f"unknown weights format for {path!r}; known: orbax checkpoint directory")


def load(source: str, variables: dict, keep_head: bool = False) -> dict:
    """Returns ``variables`` with the backbone (and head if ``keep_head``) from ``source``."""
    return assign(variables, read(source), keep_head=keep_head)


def fingerprint(source: str) -> str:
    """Returns a short content hash of the weights at ``source`` (a file or directory)."""
    h = hashlib.sha256()
    paths = [source] if os.path.isfile(source) else sorted(
        os.path.join(d, f) for d, _, files in os.walk(source) for f in files)
    for p in paths:
        h.update(os.path.relpath(p, source).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


__all__ = ["assign", "fingerprint", "flatten_variables", "load", "read"]
