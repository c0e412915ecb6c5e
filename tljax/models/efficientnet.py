"""EfficientNet-Lite (Tan & Le 2019; the TF-Lite variant: ReLU6, no squeeze-excitation,
stem and head not scaled) with the module names of the PyTorch port
(``_conv_stem``, ``_bn0``, ``_blocks/N/_expand_conv``, ..., ``_conv_head``, ``_bn1``).

Convs pad like TensorFlow's ``SAME`` and BatchNorm uses eps 1e-3, momentum 0.99, as
the original weights were trained. Stochastic depth (drop-connect) is not applied.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.models import blocktable
from tljax.models.blocktable import batch_norm
from tljax.models.layers import Conv

# (repeats, kernel, stride, expand ratio, in, out) per stage of Lite0.
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                (1, 3, 1, 6, 192, 320))


def _bn(parent, name, train, frozen):
    return batch_norm(parent, name, train, frozen, momentum=0.99, epsilon=1e-3)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity)."""

    in_ch: int
    out_ch: int
    expand: int
    kernel: int
    stride: int
    train: bool
    frozen: Sequence[tuple] = ()  # module paths of frozen blocks (blocktable.frozen_paths)

    @nn.compact
    def __call__(self, x):
        inputs = x
        mid = self.in_ch * self.expand
        bn = functools.partial(_bn, self, train=self.train, frozen=self.frozen)
        if self.expand != 1:
            x = nn.relu6(bn("_bn0")(Conv(mid, (1, 1), name="_expand_conv")(x)))
        x = Conv(mid, (self.kernel, self.kernel), (self.stride, self.stride), "SAME",
                 feature_group_count=mid, name="_depthwise_conv")(x)
        x = nn.relu6(bn("_bn1")(x))
        x = bn("_bn2")(Conv(self.out_ch, (1, 1), name="_project_conv")(x))
        if self.stride == 1 and self.in_ch == self.out_ch:
            x = x + inputs
        return x


def block_specs(stages=LITE0_STAGES) -> list:
    """Returns one ``(in, out, expand, kernel, stride)`` per block, input to output."""
    specs = []
    for repeats, kernel, stride, expand, cin, cout in stages:
        for i in range(repeats):
            specs.append((cin if i == 0 else cout, cout, expand, kernel, stride if i == 0 else 1))
    return specs


class EfficientNetLite(nn.Module):
    """Backbone: stem -> 16 MBConv blocks -> 1x1 conv to 1280 -> global average pool."""

    stages: Sequence = LITE0_STAGES

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns pooled features, shape (batch, 1280)."""
        frozen = blocktable.frozen_paths(self, frozen_blocks, table(self.stages))
        x = Conv(32, (3, 3), (2, 2), "SAME", name="_conv_stem")(x)
        x = nn.relu6(_bn(self, "_bn0", train, frozen)(x))
        x = _Blocks(tuple(block_specs(self.stages)), train, frozen, name="_blocks")(x)
        x = Conv(1280, (1, 1), name="_conv_head")(x)
        x = nn.relu6(_bn(self, "_bn1", train, frozen)(x))
        return jnp.mean(x, axis=(1, 2))


class _Blocks(nn.Module):
    """The ``_blocks`` list: children named ``0``, ``1``, ... as in the PyTorch port."""

    specs: Sequence
    train: bool
    frozen: Sequence[tuple]

    @nn.compact
    def __call__(self, x):
        for i, (cin, cout, expand, kernel, stride) in enumerate(self.specs):
            x = MBConvBlock(cin, cout, expand, kernel, stride, self.train, self.frozen,
                            name=str(i))(x)
        return x


def table(stages=LITE0_STAGES) -> tuple:
    """Returns the block table ``(name, module path prefixes)``, input to output (blocktable)."""
    n = len(block_specs(stages))
    return ((("stem", ("_conv_stem", "_bn0")),)
            + tuple((f"blocks.{i}", (f"_blocks/{i}",)) for i in range(n))
            + (("conv_head", ("_conv_head", "_bn1")),))


def blocks(stages=LITE0_STAGES) -> tuple:
    """Returns the block order ``(name, param-path regex)``, input to output, without the head."""
    return blocktable.regexes(table(stages))
