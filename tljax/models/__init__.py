"""Pure flax.linen models, picked by name from a registry; pretrained weights by name."""

from tljax.models.zoo import pretrained
from tljax.models.registry import Model, Preprocessing, create, describe, names
from tljax.models import hub  # noqa: E402 (after registry, which it builds on)

__all__ = ["Model", "Preprocessing", "create", "describe", "hub", "names", "pretrained"]
