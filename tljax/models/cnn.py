"""A small CNN for fast tests and miniature experiments (e.g. 8x8 or 16x16 digits)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.models import blocktable
from tljax.models.blocktable import batch_norm
from tljax.models.layers import Conv


class ConvBlock(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU, then an optional 2x2 max-pool."""

    features: int
    pool: bool
    train: bool
    frozen: Sequence[tuple] = ()  # module paths of frozen blocks (blocktable.frozen_paths)

    @nn.compact
    def __call__(self, x):
        x = Conv(self.features, (3, 3), padding=1, name="conv")(x)
        x = nn.relu(batch_norm(self, "bn", self.train, self.frozen)(x))
        return nn.max_pool(x, (2, 2), (2, 2)) if self.pool else x


class SmallCNN(nn.Module):
    """stem -> block1 (pool) -> block2 (pool) -> global average pool.

    Blocks, input to output: ``stem, block1, block2``.
    """

    widths: Sequence[int] = (32, 64, 128)

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns pooled features, shape (batch, widths[-1])."""
        frozen = blocktable.frozen_paths(self, frozen_blocks, TABLE)
        for (name, _), width in zip(TABLE, self.widths):
            x = ConvBlock(width, pool=name != "stem", train=train, frozen=frozen, name=name)(x)
        return jnp.mean(x, axis=(1, 2))


# The block table (blocktable): each block is the module of the same name.
TABLE = (("stem", ("stem",)), ("block1", ("block1",)), ("block2", ("block2",)))
BLOCKS = blocktable.regexes(TABLE)
