"""Pure flax.linen models, picked by name from a registry; pretrained weights by name."""

from tljax.models.zoo import pretrained
from tljax.models.registry import Model, Preprocessing, create, describe, names

__all__ = ["Model", "Preprocessing", "create", "describe", "names", "pretrained"]
