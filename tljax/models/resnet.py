"""ResNet v1 (18/34/50) with torchvision's module names and structure.

Param paths mirror torchvision's state-dict keys (``conv1``, ``bn1``, ``layer1/0/conv1``,
``layer1/0/downsample/0``, ...), so torchvision and timm weights map one to one. Like
torchvision (v1.5), a bottleneck block strides in its 3x3 conv.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.errors import UserError, unknown
from tljax.models import blocktable
from tljax.models.blocktable import batch_norm
from tljax.models.layers import Conv
from tljax.weights.torch_names import renamed


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
    """Two 3x3 convs with a residual connection (ResNet-18/34); ``features`` out channels."""

    features: int
    strides: int
    train: bool
    frozen: Sequence[tuple] = ()
    stride_in_1x1: bool = False  # a bottleneck setting; a basic block has no 1x1 conv
    expansion = 1

    @nn.compact
    def __call__(self, x):
        s = (self.strides, self.strides)
        bn = functools.partial(batch_norm, self, train=self.train, frozen=self.frozen)
        y = nn.relu(bn("bn1")(Conv(self.features, (3, 3), s, 1, name="conv1")(x)))
        y = bn("bn2")(Conv(self.features, (3, 3), padding=1, name="conv2")(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            x = Downsample(self.features, self.strides, self.train, self.frozen,
                           name="downsample")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 (to ``features // 4``) -> 3x3 (strided) -> 1x1 (to ``features``) with a residual
    connection (ResNet-50). ``stride_in_1x1`` strides in the first 1x1 conv instead (the
    original v1; HF's ``downsample_in_bottleneck``)."""

    features: int
    strides: int
    train: bool
    frozen: Sequence[tuple] = ()
    stride_in_1x1: bool = False
    expansion = 4

    @nn.compact
    def __call__(self, x):
        out, inner = self.features, self.features // self.expansion
        s1, s3 = ((self.strides, 1) if self.stride_in_1x1 else (1, self.strides))
        bn = functools.partial(batch_norm, self, train=self.train, frozen=self.frozen)
        y = nn.relu(bn("bn1")(Conv(inner, (1, 1), (s1, s1), name="conv1")(x)))
        y = Conv(inner, (3, 3), (s3, s3), 1, name="conv2")(y)
        y = nn.relu(bn("bn2")(y))
        y = bn("bn3")(Conv(out, (1, 1), name="conv3")(y))
        if self.strides != 1 or x.shape[-1] != out:
            x = Downsample(out, self.strides, self.train, self.frozen, name="downsample")(x)
        return nn.relu(x + y)


class Stage(nn.Module):
    """One ``layerN``: blocks named ``0``, ``1``, ...; the first one strides."""

    block: type
    features: int
    depth: int
    strides: int
    train: bool
    frozen: Sequence[tuple]
    stride_in_1x1: bool = False

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = self.block(self.features, self.strides if i == 0 else 1, self.train, self.frozen,
                           self.stride_in_1x1, name=str(i))(x)
        return x


class ResNet(nn.Module):
    """ResNet v1 backbone: stem, stages, global average pool (no ``fc``).

    ``widths`` are the stages' output channels (None: torchvision's 64, 128, 256, 512
    times the block's expansion), ``stem_width`` the stem conv's, ``first_stride`` the
    first stage's stride (HF's ``downsample_in_first_stage`` makes it 2).
    """

    block: type
    depths: Sequence[int]
    widths: Sequence[int] | None = None
    stem_width: int = 64
    first_stride: int = 1
    stride_in_1x1: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns pooled features, shape (batch, the last stage's width)."""
        frozen = blocktable.frozen_paths(self, frozen_blocks, table(self.depths))
        widths = self.widths or tuple(w * self.block.expansion for w in (64, 128, 256, 512))
        x = Conv(self.stem_width, (7, 7), (2, 2), 3, name="conv1")(x)
        x = nn.relu(batch_norm(self, "bn1", train, frozen)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, (depth, width) in enumerate(zip(self.depths, widths)):
            x = Stage(self.block, width, depth, self.first_stride if i == 0 else 2, train,
                      frozen, self.stride_in_1x1, name=f"layer{i + 1}")(x)
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


def from_hf_config(config: dict) -> ResNet:
    """Returns the backbone a Hugging Face ResNet ``config.json`` (as a dict) describes.

    HF's ``ResNetModel`` is torchvision's v1.5 ResNet under other names (converted by
    ``hf_to_torchvision``) with free stage widths (``hidden_sizes``), stem width
    (``embedding_size``) and stride placement. Raises ``UserError`` for what this ResNet
    does not implement.
    """
    c = {**_HF_DEFAULTS, **{k: config[k] for k in _HF_DEFAULTS if k in config}}
    if c["layer_type"] not in _HF_BLOCKS:
        raise unknown("ResNet layer_type", c["layer_type"], _HF_BLOCKS)
    if c["hidden_act"] != "relu":
        raise UserError(f"ResNet hidden_act {c['hidden_act']!r} is not supported; supported: relu")
    depths, widths = tuple(c["depths"]), tuple(c["hidden_sizes"])
    if len(depths) != len(widths) or not depths:
        raise UserError(f"ResNet depths {list(depths)} and hidden_sizes {list(widths)} differ "
                        "in length (one of each per stage)")
    return ResNet(_HF_BLOCKS[c["layer_type"]], depths, widths, int(c["embedding_size"]),
                  2 if c["downsample_in_first_stage"] else 1, bool(c["downsample_in_bottleneck"]))


# Hugging Face's ResNetConfig defaults, for keys an older config.json leaves out.
_HF_DEFAULTS = {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048],
                "depths": [3, 4, 6, 3], "layer_type": "bottleneck", "hidden_act": "relu",
                "downsample_in_first_stage": False, "downsample_in_bottleneck": False}
_HF_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


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
    return {renamed(name, _HF_RENAMES): array for name, array in tensors.items()}


# How stored tensors map to this ResNet (weights.torch_names.to_tljax): torchvision's and
# timm's names as they are, Hugging Face's through hf_to_torchvision.
TORCH_NAMES = {"head": ("fc",), "rename": hf_to_torchvision}
