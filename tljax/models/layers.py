"""Layers shared by the model families."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


def _pads(size: int, kernel: int, stride: int, padding) -> tuple:
    """Returns (low, high) padding: symmetric ``padding`` pixels, or TF's ``"SAME"``."""
    if padding == "SAME":  # TF: output ceil(size / stride), the odd pixel at the end
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    return padding, padding


class Conv(nn.Module):
    """2-D convolution, NHWC input, HWIO ``kernel`` (and optional ``bias``), like ``nn.Conv``.

    ``padding`` is a pixel count on every side, or ``"SAME"`` with TensorFlow's asymmetric
    rule (EfficientNet's weights were trained with it); ``feature_group_count`` equal to
    the input channels makes it depthwise. Where the kernel is larger than the feature map
    (a 3x3 conv on ResNet's 2x2 or 1x1 last-stage maps at small inputs), XLA:CPU falls into
    a loop about 60x slower than gathering the patches and doing one contraction; that case
    takes the patches route, with the same params and the same output.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: int | str = 0
    use_bias: bool = False
    feature_group_count: int = 1

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.kaiming_normal(),
                            (kh, kw, cin // self.feature_group_count, self.features))
        pads = (_pads(x.shape[1], kh, self.strides[0], self.padding),
                _pads(x.shape[2], kw, self.strides[1], self.padding))
        depthwise = self.feature_group_count == cin == self.features
        small_map = x.shape[1] < kh or x.shape[2] < kw
        if small_map and (self.feature_group_count == 1 or depthwise):
            y = _conv_by_patches(x, kernel, self.strides, pads, depthwise)
        else:
            y = lax.conv_general_dilated(
                x, kernel.astype(x.dtype), self.strides, pads,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.feature_group_count)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


def _conv_by_patches(x, kernel, strides, pads, depthwise: bool = False):
    """Returns the convolution of ``x`` with ``kernel`` as pad + slices + one contraction.

    ``pads`` is ``((top, bottom), (left, right))``; ``depthwise`` means one filter per
    channel (kernel (kh, kw, 1, C)).
    """
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    patches = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
               for i in range(kh) for j in range(kw)]
    kernel = kernel.astype(x.dtype)
    if depthwise:
        patches = jnp.stack(patches, axis=-2)  # (n, ho, wo, kh*kw, C)
        return jnp.einsum("nhwkc,kc->nhwc", patches, kernel.reshape(kh * kw, cout))
    patches = jnp.concatenate(patches, axis=-1)  # (n, ho, wo, kh*kw*cin), HWI order
    return patches @ kernel.reshape(kh * kw * cin, cout)


def batch_norm(train: bool, name: str, momentum: float = 0.9, epsilon: float = 1e-5):
    """Returns a BatchNorm; the defaults are PyTorch's (momentum 0.1, eps 1e-5).

    ``momentum`` is flax's (``1 - torch momentum``). ``train`` False means: normalise with
    the running statistics and never update them.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                        name=name)
