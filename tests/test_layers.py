"""The small-feature-map conv route gives the same output as XLA's convolution."""

import jax
import numpy as np
import pytest
from jax import lax

from tljax.models.layers import _conv_by_patches


@pytest.mark.parametrize("size,kernel,stride,pad", [(1, 3, 1, 1), (2, 3, 1, 1), (2, 3, 2, 1),
                                                    (3, 3, 1, 0), (5, 7, 2, 3), (4, 1, 2, 0)])
def test_conv_by_patches_matches_lax_conv(size, kernel, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 5)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 5, 7)).astype(np.float32)
    want = lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = _conv_by_patches(x, w, (stride, stride), ((pad, pad), (pad, pad)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,kernel,stride", [(2, 5, 1), (2, 3, 2), (1, 3, 1), (4, 5, 2)])
def test_depthwise_same_conv_by_patches_matches_lax_conv(size, kernel, stride):
    from tljax.models.layers import _pads

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, size, size, 6)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 1, 6)).astype(np.float32)
    pads = (_pads(size, kernel, stride, "SAME"),) * 2
    want = lax.conv_general_dilated(x, w, (stride, stride), pads, feature_group_count=6,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = _conv_by_patches(x, w, (stride, stride), pads, depthwise=True)
    assert got.shape == want.shape == (2, -(-size // stride), -(-size // stride), 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resnet18_at_32px_gives_the_same_features_with_xla_convs_only(monkeypatch):
    """At 32 px ResNet-18's last stages (2x2 and 1x1 maps) take the patches route."""
    from tljax import models
    from tljax.models import layers

    model = models.create("resnet18", 4, image_size=32)
    variables = model.init(jax.random.key(0))
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    got = model.module.apply(variables, x, method="features")  # the head starts at zero

    def xla_conv(x, kernel, strides, pads, depthwise=False):
        return lax.conv_general_dilated(x, kernel, strides, pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    monkeypatch.setattr(layers, "_conv_by_patches", xla_conv)
    want = model.module.apply(variables, x, method="features")
    assert np.abs(got).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
