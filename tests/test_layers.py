"""The small-feature-map conv route gives the same output as XLA's convolution."""

import jax
import jax.numpy as jnp
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


def _depthwise_case(size, kernel, stride, padding, channels=6, seed=3):
    from tljax.models.layers import _pads

    rng = np.random.default_rng(seed)
    h, w = size if isinstance(size, tuple) else (size, size)
    x = rng.normal(size=(2, h, w, channels)).astype(np.float32)
    k = rng.normal(size=(kernel, kernel, 1, channels)).astype(np.float32)
    pads = (_pads(h, kernel, stride, padding), _pads(w, kernel, stride, padding))
    return x, k, (stride, stride), pads


def _xla_depthwise(x, k, strides, pads):
    return lax.conv_general_dilated(x, k, strides, pads, feature_group_count=x.shape[-1],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


# Sizes: even square, and odd height with even width.
DEPTHWISE_CASES = [(size, kernel, stride, padding)
                   for size in (8, (9, 6)) for kernel in (3, 5) for stride in (1, 2)
                   for padding in ("SAME", kernel // 2, 0)]


@pytest.mark.parametrize("size,kernel,stride,padding", DEPTHWISE_CASES)
def test_depthwise_by_slices_matches_lax_conv_forward_and_gradients(size, kernel, stride, padding):
    from tljax.models.layers import _depthwise_by_slices

    x, k, strides, pads = _depthwise_case(size, kernel, stride, padding)
    # A fixed random cotangent, so every output pixel weighs differently in the gradients.
    ct = np.random.default_rng(4).normal(size=_xla_depthwise(x, k, strides, pads).shape)

    def loss(conv):
        return lambda x, k: jnp.sum(conv(x, k, strides, pads) * ct)

    want = _xla_depthwise(x, k, strides, pads)
    got = jax.jit(_depthwise_by_slices, static_argnums=(2, 3))(x, k, strides, pads)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    want_dx, want_dk = jax.jit(jax.grad(loss(_xla_depthwise), argnums=(0, 1)))(x, k)
    got_dx, got_dk = jax.jit(jax.grad(loss(_depthwise_by_slices), argnums=(0, 1)))(x, k)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_dk, want_dk, rtol=1e-5, atol=1e-5)


def _conv_primitives(module, x):
    variables = module.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v: module.apply(v, x))(variables)
    return variables, {e.primitive.name for e in jaxpr.eqns}


def test_depthwise_conv_on_cpu_takes_the_slices_route_with_the_same_params(monkeypatch):
    from tljax.models.layers import Conv

    monkeypatch.delenv("TLJAX_DEPTHWISE", raising=False)
    x = np.random.default_rng(5).normal(size=(2, 9, 9, 8)).astype(np.float32)
    conv = Conv(8, (5, 5), (2, 2), "SAME", feature_group_count=8)
    variables, default = _conv_primitives(conv, x)
    assert jax.default_backend() == "cpu" and "conv_general_dilated" not in default
    assert jax.tree.map(np.shape, variables) == {"params": {"kernel": (5, 5, 1, 8)}}
    _, forced = _conv_primitives(conv.clone(depthwise="conv"), x)
    assert "conv_general_dilated" in forced
    monkeypatch.setenv("TLJAX_DEPTHWISE", "conv")
    _, by_env = _conv_primitives(conv, x)
    assert "conv_general_dilated" in by_env
    np.testing.assert_allclose(conv.apply(variables, x), conv.clone(depthwise="slices").apply(
        variables, x), rtol=1e-5, atol=1e-5)


def test_unknown_depthwise_route_names_the_known_ones(monkeypatch):
    from tljax.errors import UserError
    from tljax.models.layers import Conv

    monkeypatch.setenv("TLJAX_DEPTHWISE", "slice")
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(UserError, match="'slice'; known: conv, slices"):
        Conv(2, (3, 3), padding=1, feature_group_count=2).init(jax.random.key(0), x)


@pytest.mark.parametrize("kernel", [3, 5])
def test_depthwise_by_slices_gradients_keep_bfloat16_and_match_float32(kernel):
    """Under compute_dtype bfloat16 the custom gradient returns bfloat16 (custom_vjp
    requires it) and the kernel gradient, summed in float32, stays close to float32's."""
    from tljax.models.layers import _depthwise_by_slices

    x, k, strides, pads = _depthwise_case(12, kernel, 2, "SAME", channels=16)

    def grads(dtype):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(
            _depthwise_by_slices(x, k, strides, pads).astype(jnp.float32) ** 2),
            argnums=(0, 1)))(x.astype(dtype), k.astype(dtype))

    (dx16, dk16), (dx32, dk32) = grads(jnp.bfloat16), grads(jnp.float32)
    assert dx16.dtype == dk16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(dk16, np.float32), dk32, rtol=0.05,
                               atol=0.05 * np.abs(dk32).max())
    np.testing.assert_allclose(np.asarray(dx16, np.float32), dx32, rtol=0.05,
                               atol=0.05 * np.abs(dx32).max())


def test_small_maps_take_the_patches_route_on_cpu_with_the_same_output(monkeypatch):
    """On CPU a conv over a map of at most PATCHES_MAX_SIDE pixels runs as patches + one
    matmul (faster there); a larger map, or TLJAX_PATCHES_MAX_SIDE=0, keeps XLA's conv."""
    from tljax.models import layers
    from tljax.models.layers import Conv

    monkeypatch.delenv("TLJAX_PATCHES_MAX_SIDE", raising=False)
    side = layers.PATCHES_MAX_SIDE
    conv = Conv(6, (3, 3), (1, 1), padding=1)
    x = np.random.default_rng(6).normal(size=(2, side, side, 4)).astype(np.float32)
    variables, small = _conv_primitives(conv, x)
    assert "conv_general_dilated" not in small
    _, large = _conv_primitives(conv, np.zeros((2, side + 1, side + 1, 4), np.float32))
    assert "conv_general_dilated" in large
    monkeypatch.setenv("TLJAX_PATCHES_MAX_SIDE", "0")
    _, off = _conv_primitives(conv, x)
    assert "conv_general_dilated" in off
    want = conv.apply(variables, x)
    grad = jax.grad(lambda v: (conv.apply(v, x) ** 2).sum())
    want_grad = grad(variables)["params"]["kernel"]
    monkeypatch.delenv("TLJAX_PATCHES_MAX_SIDE")
    np.testing.assert_allclose(conv.apply(variables, x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad(variables)["params"]["kernel"], want_grad,
                               rtol=1e-4, atol=1e-4)


def test_bad_patches_max_side_names_the_value(monkeypatch):
    from tljax.errors import UserError
    from tljax.models.layers import Conv

    monkeypatch.setenv("TLJAX_PATCHES_MAX_SIDE", "eight")
    with pytest.raises(UserError, match="TLJAX_PATCHES_MAX_SIDE must be a whole number of "
                                        "pixels >= 0, got 'eight'"):
        Conv(2, (3, 3), padding=1).init(jax.random.key(0), np.zeros((1, 4, 4, 2), np.float32))


@pytest.mark.parametrize("backend, dtype, route", [
    ("gpu", jnp.bfloat16, "cudnn"), ("gpu", jnp.float16, "cudnn"), ("gpu", jnp.float32, "xla"),
    ("cpu", jnp.bfloat16, "xla"), ("tpu", jnp.bfloat16, "xla")])
def test_attention_takes_cudnn_flash_attention_on_a_gpu_in_half_precision(
        monkeypatch, backend, dtype, route):
    # jax.nn.dot_product_attention's own default is XLA's route on a GPU too: tljax must
    # ask for cuDNN, or ViT-B/16 keeps every (heads, tokens, tokens) matrix for backward.
    from tljax.models import layers

    monkeypatch.delenv("TLJAX_ATTENTION", raising=False)
    monkeypatch.setattr(layers.jax, "default_backend", lambda: backend)
    assert layers.attention_route(dtype) == route
    monkeypatch.setenv("TLJAX_ATTENTION", "xla")
    assert layers.attention_route(dtype) == "xla"


def test_unknown_attention_route_names_the_known_ones(monkeypatch):
    from tljax.errors import UserError
    from tljax.models import layers

    monkeypatch.setenv("TLJAX_ATTENTION", "flash")
    with pytest.raises(UserError, match="'flash'; known: cudnn, xla"):
        layers.attention_route(jnp.float32)


def test_attention_falls_back_to_xla_where_cudnn_turns_the_shapes_down(monkeypatch):
    # cuDNN refuses some shapes at trace time (a head dim not a multiple of 8): the chosen
    # route falls back, saying so; a route the user named does not.
    from tljax.models import layers

    calls = []
    real = jax.nn.dot_product_attention

    def fake(*args, implementation=None, **kwargs):
        calls.append(implementation)
        if implementation == "cudnn":
            raise NotImplementedError("The head dim must be <= 128 and a multiple of 8")
        return real(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(layers.jax.nn, "dot_product_attention", fake)
    monkeypatch.delenv("TLJAX_ATTENTION", raising=False)
    q, k, v = (jnp.asarray(np.random.default_rng(i).normal(size=(2, 5, 3, 12)), jnp.bfloat16)
               for i in range(3))
    with pytest.warns(UserWarning, match="cuDNN attention turned down 5 tokens .* head dim"):
        got = layers.attention(q, k, v)
    assert calls == ["cudnn", "xla"]
    np.testing.assert_array_equal(got, real(q, k, v, implementation="xla"))
    monkeypatch.setenv("TLJAX_ATTENTION", "cudnn")
    with pytest.raises(NotImplementedError, match="head dim"):
        layers.attention(q, k, v)


@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason="cuDNN flash attention runs on a GPU only (benchmarks/gpu_check.py "
                           "runs this test there)")
@pytest.mark.parametrize("tokens, padded", [(197, 0), (128, 40)])
def test_cudnn_attention_is_chosen_and_matches_xla_on_a_gpu(monkeypatch, tokens, padded):
    # ViT-B/16's shapes (197 tokens, 12 heads of 64), and BERT's padding mask as a bias:
    # the route chosen in bfloat16 puts cuDNN's kernels in the training step, and its loss
    # and gradients are XLA's within bfloat16's rounding.
    from tljax.models import layers

    monkeypatch.delenv("TLJAX_ATTENTION", raising=False)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(4, tokens, 12, 64)), jnp.bfloat16) for _ in "qkv")
    bias = None
    if padded:
        keep = np.arange(tokens) < tokens - padded
        bias = jnp.where(keep[None, None, None, :], 0.0, -1e9).astype(jnp.bfloat16)
        bias = jnp.broadcast_to(bias, (4, 1, 1, tokens))

    def traced_and_run(route):
        if route:
            monkeypatch.setenv("TLJAX_ATTENTION", route)
        else:
            monkeypatch.delenv("TLJAX_ATTENTION", raising=False)
        step = jax.value_and_grad(
            lambda q, k, v: jnp.mean(layers.attention(q, k, v, bias).astype(jnp.float32) ** 2),
            argnums=(0, 1, 2))
        return jax.make_jaxpr(step)(q, k, v), jax.jit(step)(q, k, v)

    jaxpr, auto = traced_and_run(None)
    assert {"dot_product_attention_fwd_wrapper",
            "dot_product_attention_bwd_wrapper"} <= _primitive_names(jaxpr.jaxpr)
    _, xla = traced_and_run("xla")
    # cuDNN's backward may accumulate in another order (or with atomics): bfloat16 rounding
    for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(xla)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= 0.03 * np.abs(b).max() + 1e-6


def _primitive_names(jaxpr) -> set:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for x in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(x, "jaxpr", x)
                if hasattr(inner, "eqns"):
                    names |= _primitive_names(inner)
    return names


@pytest.mark.parametrize("tokens, masked", [(197, False), (128, True), (197, True)])
def test_training_attention_takes_cudnn_for_vit_and_bert_shapes(monkeypatch, tokens, masked):
    # jax's cuDNN path checks shapes at trace time, in plain Python: with cuDNN made to look
    # present on a "gpu", a training step must trace through cuDNN's kernels for ViT-B/16's
    # 197 tokens (odd: cuDNN wants even lengths in training) and BERT's (batch, 1, 1, tokens)
    # padding bias (cuDNN wants a full (tokens, tokens) one), without falling back.
    import warnings

    import jax._src.cudnn.fused_attention_stablehlo as cudnn_attention

    from tljax.models import layers

    monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 90800)
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    monkeypatch.delenv("TLJAX_ATTENTION", raising=False)
    q = jax.ShapeDtypeStruct((4, tokens, 12, 64), jnp.bfloat16)
    bias = jnp.zeros((4, 1, 1, tokens), jnp.bfloat16) if masked else None

    def loss(q, k, v):
        return layers.attention(q, k, v, bias).astype(jnp.float32).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warns
        jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, q, q)
    names = _primitive_names(jaxpr.jaxpr)
    assert {"dot_product_attention_fwd_wrapper", "dot_product_attention_bwd_wrapper"} <= names


@pytest.mark.parametrize("tokens, masked", [(7, False), (6, True), (7, True)])
def test_the_even_padding_for_cudnn_leaves_attention_and_gradients_unchanged(tokens, masked):
    # The padded call cuDNN gets, computed with XLA on CPU: the extra token is masked out
    # of every softmax and sliced off the output, so nothing changes.
    from tljax.models import layers

    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(2, tokens, 3, 8)), jnp.float32) for _ in "qkv")
    bias = None
    if masked:
        keep = np.arange(tokens) < tokens - 2
        bias = jnp.where(keep, 0.0, -1e9)[None, None, None, :] * jnp.ones((2, 1, 1, 1))

    def loss(fn, q, k, v):
        return jax.value_and_grad(lambda *a: (fn(*a) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)

    padded = loss(lambda *a: layers._cudnn_attention(*a, bias, implementation="xla"), q, k, v)
    plain = loss(lambda *a: jax.nn.dot_product_attention(*a, bias=bias), q, k, v)
    for a, b in zip(jax.tree.leaves(padded), jax.tree.leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
