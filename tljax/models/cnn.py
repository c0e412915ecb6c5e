"""A small CNN for fast tests and miniature experiments (e.g. 8x8 or 16x16 digits)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.models.layers import Conv, batch_norm


class ConvBlock(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU, then an optional 2x2 max-pool."""

    features: int
    pool: bool
    train: bool

    @nn.compact
    def __call__(self, x):
        x = Conv(self.features, (3, 3), padding=1, name="conv")(x)
        x = nn.relu(batch_norm(self.train, "bn")(x))
        return nn.max_pool(x, (2, 2), (2, 2)) if self.pool else x


class SmallCNN(nn.Module):
    """stem -> block1 (pool) -> block2 (pool) -> global average pool.

    Blocks, input to output: ``stem, block1, block2``.
    """

    widths: Sequence[int] = (32, 64, 128)

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns pooled features, shape (batch, widths[-1])."""
        names = ("stem", "block1", "block2")
        for name, width in zip(names, self.widths):
            x = ConvBlock(width, pool=name != "stem", train=train and name not in frozen_blocks,
                          name=name)(x)
        return jnp.mean(x, axis=(1, 2))


BLOCKS = (
    ("stem", r"backbone/stem/.*"),
    ("block1", r"backbone/block1/.*"),
    ("block2", r"backbone/block2/.*"),
)
