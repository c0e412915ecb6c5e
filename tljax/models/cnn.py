"""A small CNN for fast tests and miniature experiments (e.g. 8x8 or 16x16 digits)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.models import blocktable
from tljax.models.blocktable import batch_norm
from tljax.models.layers import Conv


class ConvBlock(nn.Module):
    """``convs`` x (conv3x3 -> BatchNorm -> ReLU), then an optional 2x2 max-pool."""

    features: int
    pool: bool
    train: bool
    frozen: Sequence[tuple] = ()  # module paths of frozen blocks (blocktable.frozen_paths)
    convs: int = 1

    @nn.compact
    def __call__(self, x):
        for i in range(self.convs):
            suffix = str(i) if i else ""  # the first keeps the one-conv block's names
            x = Conv(self.features, (3, 3), padding=1, name=f"conv{suffix}")(x)
            x = nn.relu(batch_norm(self, f"bn{suffix}", self.train, self.frozen)(x))
        return nn.max_pool(x, (2, 2), (2, 2)) if self.pool else x


class SmallCNN(nn.Module):
    """A stack of conv blocks (``table``, input to output), then global average pooling.

    The default is ``cnn``: stem -> block1 (pool) -> block2 (pool). ``DEEP_TABLE`` with
    ``DEEP_WIDTHS`` / ``DEEP_POOLS`` is ``cnn6``: six blocks, the depth Yosinski et al.
    (2014) transfer layer by layer.
    """

    widths: Sequence[int] = (32, 64, 128)
    pools: Sequence[bool] = (False, True, True)  # a 2x2 max-pool after the block
    table: Sequence = None  # None: TABLE
    convs: Sequence[int] = None  # convolutions per block; None: one each

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns pooled features, shape (batch, widths[-1])."""
        table = self.table or TABLE
        frozen = blocktable.frozen_paths(self, frozen_blocks, table)
        convs = self.convs or (1,) * len(table)
        for (name, _), width, pool, n in zip(table, self.widths, self.pools, convs):
            x = ConvBlock(width, pool=pool, train=train, frozen=frozen, convs=n, name=name)(x)
        return jnp.mean(x, axis=(1, 2))


# The block table (blocktable): each block is the module of the same name.
TABLE = (("stem", ("stem",)), ("block1", ("block1",)), ("block2", ("block2",)))
BLOCKS = blocktable.regexes(TABLE)

# cnn6: two 2x2 pools (16 px -> 4 px), so it takes the same 16 px input as cnn.
DEEP_TABLE = tuple((f"block{i}", (f"block{i}",)) for i in range(1, 7))
DEEP_WIDTHS = (16, 32, 32, 64, 64, 128)
DEEP_POOLS = (False, True, False, True, False, False)
DEEP_BLOCKS = blocktable.regexes(DEEP_TABLE)

# cnn6s: cnn6 with a first block of realistic size for surgical fine-tuning (Lee et al.
# 2023): two 32-wide 3x3 convs, about 6% of the params (ResNet-18's first stage is 1.3%,
# cnn6's one 16-wide conv 0.12%).
SURGICAL_WIDTHS = (32, 32, 32, 64, 64, 128)
SURGICAL_CONVS = (2, 1, 1, 1, 1, 1)
