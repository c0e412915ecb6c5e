"""VGG-16 (Simonyan & Zisserman 2015) with torchvision's names (``features/N``,
``classifier/0``, ``classifier/3``; ``classifier.6`` is the head). Keras ``.h5`` weights map
through ``keras_to_torchvision``.

Like torchvision, the last feature map is average-pooled to 7x7 (adaptively, so any
input of at least ``MIN_IMAGE_SIZE`` px works) and flattened in channel-major order, so
``classifier.0`` weights apply unchanged.
"""

import re
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tljax.errors import UserError
from tljax.models import blocktable

# Output channels per conv, "M" for a 2x2 max-pool; torchvision indexes both in `features`.
CFG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def conv_indices(cfg=CFG16) -> list:
    """Returns the ``features`` index of each conv (ReLU and pool layers take the others)."""
    out, i = [], 0
    for v in cfg:
        if v == "M":
            i += 1
        else:
            out.append(i)
            i += 2
    return out


# Five 2x2 max-pools: a smaller input leaves an empty last feature map.
MIN_IMAGE_SIZE = 32


def _pool_matrix(n: int, out: int = 7) -> np.ndarray:
    """Returns the (out, n) matrix averaging torchvision's adaptive bins:
    bin i covers [floor(i n / out), ceil((i + 1) n / out))."""
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        lo, hi = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _adaptive_avg_pool_7(x):
    """Returns torchvision's AdaptiveAvgPool2d((7, 7)) of an NHWC map of any size >= 1."""
    h, w = x.shape[1:3]
    if (h, w) == (7, 7):
        return x
    mh, mw = (jnp.asarray(_pool_matrix(n), x.dtype) for n in (h, w))
    return jnp.einsum("ih,jw,nhwc->nijc", mh, mw, x)


class _Features(nn.Module):
    cfg: Sequence

    @nn.compact
    def __call__(self, x):
        indices = iter(conv_indices(self.cfg))
        for v in self.cfg:
            if v == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
            else:
                x = nn.relu(nn.Conv(v, (3, 3), padding=1, name=str(next(indices)))(x))
        return x


class _Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(4096, name="0")(x))
        return nn.relu(nn.Dense(4096, name="3")(x))


class VGG(nn.Module):
    """VGG backbone: convs -> 7x7 pool -> flatten (C, H, W) -> fc 4096 -> fc 4096."""

    cfg: Sequence = CFG16

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns the second fully connected layer's activations, shape (batch, 4096)."""
        blocktable.frozen_paths(self, frozen_blocks, table(self.cfg))  # checks the names; no BatchNorm
        if min(x.shape[1:3]) < MIN_IMAGE_SIZE:
            raise UserError(f"VGG gets {x.shape[1]}x{x.shape[2]} px input; valid: at least "
                            f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
        x = _adaptive_avg_pool_7(_Features(self.cfg, name="features")(x))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        return _Classifier(name="classifier")(x)


def table(cfg=CFG16) -> tuple:
    """Returns the block table (blocktable): one block per conv, then ``fc1``, ``fc2``."""
    return (tuple((f"conv{n}", (f"features/{i}",)) for n, i in enumerate(conv_indices(cfg), start=1))
            + (("fc1", ("classifier/0",)), ("fc2", ("classifier/3",))))


def blocks(cfg=CFG16) -> tuple:
    """Returns the block order ``(name, param-path regex)``: one block per conv, ``fc1``, ``fc2``."""
    return blocktable.regexes(table(cfg))


_KERAS = re.compile(r"(?:.*/)?(block(\d)_conv(\d)|fc1|fc2|predictions)/(kernel|bias)(?::0)?$")


def keras_to_torchvision(tensors: dict) -> dict:
    """Returns Keras VGG16 ``.h5`` tensors (``block1_conv1/.../kernel:0``) under torchvision's
    names and layouts; anything not Keras-named passes through unchanged."""
    if not any(_KERAS.match(k) for k in tensors):
        return tensors
    convs = conv_indices()
    per_block = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}
    out = {}
    for name, array in tensors.items():
        m = _KERAS.match(name)
        if not m:
            out[name] = array
            continue
        layer, leaf = m[1], "weight" if m[4] == "kernel" else "bias"
        if m[2]:
            n = sum(per_block[b] for b in range(1, int(m[2]))) + int(m[3]) - 1
            target = f"features.{convs[n]}"
            if leaf == "weight":
                array = np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
        else:
            target = {"fc1": "classifier.0", "fc2": "classifier.3", "predictions": "classifier.6"}[layer]
            if leaf == "weight" and layer == "fc1":
                # Keras flattens (H, W, C); torchvision (C, H, W).
                array = array.reshape(7, 7, 512, -1).transpose(2, 0, 1, 3).reshape(25088, -1)
            if leaf == "weight":
                array = array.T
        out[f"{target}.{leaf}"] = array
    return out
