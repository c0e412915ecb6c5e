"""Pure flax.linen models, picked by name from a registry."""

from tljax.models.registry import Model, Preprocessing, create, describe, names

__all__ = ["Model", "Preprocessing", "create", "describe", "names"]
