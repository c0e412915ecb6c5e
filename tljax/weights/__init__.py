"""Weight import: a file or checkpoint -> flat named tensors -> strict assignment.

``read(path)`` gives the tensors by their stored names; ``load(source, variables)``
fills a model's backbone from them, strictly, keeping its fresh head unless asked.
"""

from tljax.weights.readers import FORMATS, read
from tljax.weights.strict import assign, flatten_variables
from tljax.weights.torch_names import is_tljax_naming, to_tljax


def load(source: str, variables: dict, torch_names: dict | None = None,
         keep_head: bool = False) -> dict:
    """Returns ``variables`` with the backbone (and head if ``keep_head``) from ``source``.

    ``source`` is any format ``read`` knows. Tensors named the PyTorch way are converted
    with ``torch_names`` (the family's rules: ``head``, ``embeddings``, ``ignore``,
    ``strip``; see ``torch_names.to_tljax``); tljax-named ones (orbax) are taken as they
    are. Strict: one error names every missing, unexpected or mis-shaped tensor.
    """
    tensors = read(source)
    if not is_tljax_naming(tensors):
        tensors = to_tljax(tensors, **(torch_names or {}))
    return assign(variables, tensors, keep_head=keep_head)


__all__ = ["FORMATS", "assign", "flatten_variables", "load", "read"]
