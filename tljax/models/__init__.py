"""Pure flax.linen models, picked by name from a registry; pretrained weights by name."""

from tljax.models import hub, registry
from tljax.models.registry import Model, Preprocessing, describe, names
from tljax.models.zoo import pretrained


def create(name: str, num_classes: int, image_size: int | None = None,
           channels: int | None = None) -> Model:
    """Returns the named model (``registry.create``) with a fresh ``num_classes``-way head;
    ``name`` may also be a Hugging Face model directory (``hub.create``: its config.json
    gives the architecture)."""
    if name not in registry.names() and hub.is_model_dir(name):
        return hub.create(name, num_classes, image_size, channels)
    return registry.create(name, num_classes, image_size, channels)

__all__ = ["Model", "Preprocessing", "create", "describe", "hub", "names", "pretrained"]
