"""ResNet v1 (18/34/50) with torchvision's module names and structure.

Param paths mirror torchvision's state-dict keys (``conv1``, ``bn1``, ``layer1/0/conv1``,
``layer1/0/downsample/0``, ...), so torchvision and timm weights map one to one. Like
torchvision (v1.5), a bottleneck block strides in its 3x3 conv.
"""

import functools
import re
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.models import blocktable
from tljax.models.blocktable import batch_norm
from tljax.models.layers import Conv


class Downsample(nn.Module):
    """The projection shortcut: ``0`` (1x1 conv) and ``1`` (BatchNorm), as in torchvision."""

    features: int
    strides: int
    train: bool
    frozen: Sequence[tuple] = ()  # module paths of frozen blocks (blocktable.frozen_paths)

    @nn.compact
    def __call__(self, x):
        x = Conv(self.features, (1, 1), (self.strides, self.strides), name="0")(x)
        return batch_norm(self, "1", self.train, self.frozen)(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    planes: int
    strides: int
    train: bool
    frozen: Sequence[tuple] = ()
    expansion = 1

    @nn.compact
    def __call__(self, x):
        s = (self.strides, self.strides)
        bn = functools.partial(batch_norm, self, train=self.train, frozen=self.frozen)
        y = nn.relu(bn("bn1")(Conv(self.planes, (3, 3), s, 1, name="conv1")(x)))
        y = bn("bn2")(Conv(self.planes, (3, 3), padding=1, name="conv2")(y))
        if self.strides != 1 or x.shape[-1] != self.planes:
            x = Downsample(self.planes, self.strides, self.train, self.frozen, name="downsample")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (x4 channels) with a residual connection (ResNet-50)."""

    planes: int
    strides: int
    train: bool
    frozen: Sequence[tuple] = ()
    expansion = 4

    @nn.compact
    def __call__(self, x):
        out = self.planes * self.expansion
        bn = functools.partial(batch_norm, self, train=self.train, frozen=self.frozen)
        y = nn.relu(bn("bn1")(Conv(self.planes, (1, 1), name="conv1")(x)))
        y = Conv(self.planes, (3, 3), (self.strides, self.strides), 1, name="conv2")(y)
        y = nn.relu(bn("bn2")(y))
        y = bn("bn3")(Conv(out, (1, 1), name="conv3")(y))
        if self.strides != 1 or x.shape[-1] != out:
            x = Downsample(out, self.strides, self.train, self.frozen, name="downsample")(x)
        return nn.relu(x + y)


class Stage(nn.Module):
    """One ``layerN``: blocks named ``0``, ``1``, ...; the first one strides."""

    block: type
    planes: int
    depth: int
    strides: int
    train: bool
    frozen: Sequence[tuple]

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = self.block(self.planes, self.strides if i == 0 else 1, self.train, self.frozen,
                           name=str(i))(x)
        return x


class ResNet(nn.Module):
    """ResNet v1 backbone: stem, four stages, global average pool (no ``fc``)."""

    block: type
    depths: Sequence[int]

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns pooled features, shape (batch, 512 * block.expansion)."""
        frozen = blocktable.frozen_paths(self, frozen_blocks, table(self.depths))
        x = Conv(64, (7, 7), (2, 2), 3, name="conv1")(x)
        x = nn.relu(batch_norm(self, "bn1", train, frozen)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, (depth, planes) in enumerate(zip(self.depths, (64, 128, 256, 512))):
            x = Stage(self.block, planes, depth, 1 if i == 0 else 2, train, frozen,
                      name=f"layer{i + 1}")(x)
        return jnp.mean(x, axis=(1, 2))


def table(depths: Sequence[int]) -> tuple:
    """Returns the block table ``(name, module path prefixes)``, input to output (blocktable)."""
    order = [("stem", ("conv1", "bn1"))]
    for s, depth in enumerate(depths, start=1):
        order += [(f"layer{s}.{i}", (f"layer{s}/{i}",)) for i in range(depth)]
    return tuple(order)


def blocks(depths: Sequence[int]) -> tuple:
    """Returns the block order ``(name, param-path regex)``, input to output, without the head."""
    return blocktable.regexes(table(depths))


DEPTHS = {"resnet18": (BasicBlock, (2, 2, 2, 2)),
          "resnet34": (BasicBlock, (3, 4, 6, 3)),
          "resnet50": (Bottleneck, (3, 4, 6, 3))}


_HF_RENAMES = [
    (r"^(resnet\.)?embedder\.embedder\.convolution\.", "conv1."),
    (r"^(resnet\.)?embedder\.embedder\.normalization\.", "bn1."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.downsample.0."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.downsample.1."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.conv{int(m[4]) + 1}."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.bn{int(m[4]) + 1}."),
    (r"^classifier\.1\.", "fc."),
]


def hf_to_torchvision(tensors: dict) -> dict:
    """Returns Hugging Face ``ResNetModel`` tensors under torchvision's names.

    torchvision/timm names pass through unchanged.
    """
    out = {}
    for name, array in tensors.items():
        for pattern, repl in _HF_RENAMES:
            name = re.sub(pattern, repl, name)
        out[name] = array
    return out
