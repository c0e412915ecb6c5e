"""A backbone with a fresh linear head: params ``{"backbone": ..., "head": ...}``."""

from typing import Sequence

import flax.linen as nn


class Classifier(nn.Module):
    """Wraps a backbone (input -> pooled features) and a linear head (features -> logits).

    ``frozen_blocks`` names the backbone blocks whose BatchNorm runs on running statistics
    (and never updates them) even when ``train`` is True.
    """

    backbone: nn.Module
    num_classes: int

    def setup(self):
        self.head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)

    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns the logits, shape (batch, num_classes)."""
        return self.head(self.features(x, train, frozen_blocks))

    def features(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns the backbone's pooled features, shape (batch, feature_dim)."""
        return self.backbone(x, train=train, frozen_blocks=tuple(frozen_blocks))
