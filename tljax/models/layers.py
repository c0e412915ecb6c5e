"""Layers shared by the model families."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class Conv(nn.Module):
    """2-D convolution, NHWC input, HWIO ``kernel`` (and optional ``bias``), like ``nn.Conv``.

    Where the kernel is larger than the feature map (a 3x3 conv on ResNet's 2x2 or 1x1
    last-stage maps at small inputs), XLA:CPU falls into a loop about 60x slower than
    gathering the patches and doing one matmul; that case takes the patches route, which
    has the same params and the same output.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: int = 0
    use_bias: bool = False
    feature_group_count: int = 1

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.kaiming_normal(),
                            (kh, kw, cin // self.feature_group_count, self.features))
        small_map = x.shape[1] < kh or x.shape[2] < kw
        if small_map and self.feature_group_count == 1:
            y = _conv_by_patches(x, kernel, self.strides, self.padding)
        else:
            p = self.padding
            y = lax.conv_general_dilated(
                x, kernel.astype(x.dtype), self.strides, ((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.feature_group_count)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


def _conv_by_patches(x, kernel, strides, padding):
    """Returns the convolution of ``x`` with ``kernel`` computed as pad + slices + one dot."""
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    patches = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
               for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(patches, axis=-1)  # (n, ho, wo, kh*kw*cin), HWI order
    return patches @ kernel.reshape(kh * kw * cin, cout).astype(x.dtype)


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """Returns a BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5).

    ``train`` False means: normalise with the running statistics and never update them.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
