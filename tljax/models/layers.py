"""Layers shared by the model families."""

import os
import warnings
from functools import partial
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from tljax.errors import env_whole_number, unknown


DEPTHWISE_ROUTES = ("slices", "conv")


def depthwise_route(route: str | None = None) -> str:
    """Returns how a depthwise conv is computed: ``"slices"`` or ``"conv"``.

    ``route`` if given, else the ``TLJAX_DEPTHWISE`` environment variable (for
    benchmarks), else ``"slices"`` on CPU and ``"conv"`` elsewhere. Read at trace time.
    On CPU the sum of shifted slices is several times faster than XLA's grouped conv
    (its backward pass most); on GPU the library conv is the tuned one.
    """
    route = route or os.environ.get("TLJAX_DEPTHWISE") or (
        "slices" if jax.default_backend() == "cpu" else "conv")
    if route not in DEPTHWISE_ROUTES:
        raise unknown("depthwise route (TLJAX_DEPTHWISE)", route, DEPTHWISE_ROUTES)
    return route


ATTENTION_ROUTES = ("xla", "cudnn")


def attention_route(dtype, route: str | None = None) -> str:
    """Returns how attention over inputs of ``dtype`` is computed: ``"cudnn"`` or ``"xla"``.

    ``route`` if given, else the ``TLJAX_ATTENTION`` environment variable, else
    ``"cudnn"`` (flash attention: no (heads, tokens, tokens) matrix kept for the backward
    pass) on a GPU for bfloat16 and float16 inputs, the types it takes, and ``"xla"``
    (einsum, softmax, einsum) otherwise. ``jax.nn.dot_product_attention`` does not choose
    by itself: left to its default it takes XLA's route on a GPU too. Read at trace time.
    """
    route = route or os.environ.get("TLJAX_ATTENTION") or (
        "cudnn" if jax.default_backend() == "gpu"
        and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla")
    if route not in ATTENTION_ROUTES:
        raise unknown("attention route (TLJAX_ATTENTION)", route, ATTENTION_ROUTES)
    return route


def attention(q, k, v, bias=None):
    """Returns ``softmax(q k^T / sqrt(head dim) + bias) v`` for ``q, k, v`` of shape
    (batch, tokens, heads, head dim) and ``bias`` broadcastable to (batch, heads, tokens,
    tokens), by ``attention_route``. Where the route was chosen for the backend (not named
    in ``TLJAX_ATTENTION``) and cuDNN turns the inputs down at trace time (a head dim it
    does not take), XLA's route computes it instead, with a warning saying why."""
    route = attention_route(q.dtype)
    if route == "cudnn" and not os.environ.get("TLJAX_ATTENTION"):
        try:
            return _cudnn_attention(q, k, v, bias)
        except (NotImplementedError, ValueError) as e:
            warnings.warn(f"cuDNN attention turned down {q.shape[1]} tokens x {q.shape[2]} "
                          f"heads x {q.shape[3]} dims ({e}); XLA's attention computes it")
            route = "xla"
    if route == "cudnn":
        return _cudnn_attention(q, k, v, bias)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation="xla")


def _cudnn_attention(q, k, v, bias, implementation: str = "cudnn"):
    """Returns cuDNN's flash attention of ``attention``'s arguments (``implementation``
    "xla" computes the same padded call with XLA, for tests off a GPU). jax's cuDNN path
    wants a bias of full (tokens, tokens) extent, and in training an even number of tokens
    (it always passes a bias of its own, and cuDNN wants even lengths with one): an odd
    count (ViT-B/16's 197) is padded by one token that the padding mask leaves out."""
    batch, tokens, keys = q.shape[0], q.shape[1], k.shape[1]
    if bias is not None:
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
        bias = jnp.broadcast_to(bias, bias.shape[:2] + (tokens, keys))
    lengths = {}
    if tokens % 2 or keys % 2:
        q = jnp.pad(q, ((0, 0), (0, tokens % 2), (0, 0), (0, 0)))
        k, v = (jnp.pad(x, ((0, 0), (0, keys % 2), (0, 0), (0, 0))) for x in (k, v))
        if bias is not None:
            bias = jnp.pad(bias, ((0, 0), (0, 0), (0, tokens % 2), (0, keys % 2)))
        lengths = {"query_seq_lengths": jnp.full((batch,), tokens, jnp.int32),
                   "key_value_seq_lengths": jnp.full((batch,), keys, jnp.int32)}
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=implementation,
                                       **lengths)
    return out[:, :tokens]


# On CPU, a (non-grouped) conv over a map of at most this many pixels a side runs as
# patches + one matmul: XLA:CPU's conv, its backward above all, is slow on small maps.
# Medians of interleaved train steps, batch 32 (every conv <= 8 px routed vs none):
# ResNet-18 0.82x at 64 px and 0.95x at 224 px, EfficientNet-Lite0 0.89x at 48 px, cnn 0.90x.
PATCHES_MAX_SIDE = 8


def patches_max_side() -> int:
    """Returns the largest map side whose convs take the patches route on this backend:
    ``TLJAX_PATCHES_MAX_SIDE`` if set (0: never; for benchmarks), else ``PATCHES_MAX_SIDE``
    on CPU and 0 elsewhere (the library conv is the tuned one on GPU and TPU)."""
    side = env_whole_number("TLJAX_PATCHES_MAX_SIDE", 0, "pixels")
    if side is not None:
        return side
    return PATCHES_MAX_SIDE if jax.default_backend() == "cpu" else 0


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
    takes the patches route, with the same params and the same output, and so does, on CPU,
    every non-grouped conv over a map of at most ``patches_max_side()`` pixels a side. A
    depthwise conv runs as a sum of shifted slices on CPU (``depthwise_route``;
    ``depthwise`` picks the route for this layer), about 3x faster per EfficientNet-Lite0
    train step.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: int | str = 0
    use_bias: bool = False
    feature_group_count: int = 1
    depthwise: str | None = None  # route of a depthwise conv; None: see depthwise_route

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.kaiming_normal(),
                            (kh, kw, cin // self.feature_group_count, self.features))
        pads = (_pads(x.shape[1], kh, self.strides[0], self.padding),
                _pads(x.shape[2], kw, self.strides[1], self.padding))
        depthwise = self.feature_group_count == cin == self.features
        small_map = x.shape[1] < kh or x.shape[2] < kw or (
            self.feature_group_count == 1 and max(x.shape[1:3]) <= patches_max_side())
        if depthwise and depthwise_route(self.depthwise) == "slices":
            y = _depthwise_by_slices(x, kernel.astype(x.dtype), tuple(self.strides), pads)
        elif small_map and (self.feature_group_count == 1 or depthwise):
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


def _taps(x, kernel_size, strides, pads, out_size):
    """Returns the kh*kw strided windows of padded ``x`` that meet kernel tap (i, j), row by row."""
    (kh, kw), (sh, sw), (ho, wo) = kernel_size, strides, out_size
    x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    return [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)]


def _sum_of_slices(x, kernel, strides, pads):
    """Returns ``sum_ij x_pad[:, i::sh, j::sw, :] * kernel[i, j, 0]`` (the depthwise conv)."""
    kh, kw = kernel.shape[:2]
    ho = (x.shape[1] + sum(pads[0]) - kh) // strides[0] + 1
    wo = (x.shape[2] + sum(pads[1]) - kw) // strides[1] + 1
    taps = _taps(x, (kh, kw), strides, pads, (ho, wo))
    y = taps[0] * kernel[0, 0, 0]
    for t, k in zip(taps[1:], kernel.reshape(kh * kw, -1)[1:]):
        y = y + t * k
    return y


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_by_slices(x, kernel, strides, pads):
    """Returns the depthwise convolution of ``x`` (NHWC) with ``kernel`` (kh, kw, 1, C).

    ``strides`` is ``(sh, sw)``, ``pads`` ``((top, bottom), (left, right))``. Computed as
    kh*kw strided slices, each scaled per channel and accumulated: XLA fuses that into
    elementwise loops where XLA:CPU's grouped convolution, and above all its gradient,
    runs a slow generic loop. The gradient is written out (``_depthwise_bwd``) because
    plain autodiff of the slices is slow for the kernel (one reduction pass per tap).
    """
    return _sum_of_slices(x, kernel, strides, pads)


def _depthwise_fwd(x, kernel, strides, pads):
    return _sum_of_slices(x, kernel, strides, pads), (x, kernel)


def _depthwise_bwd(strides, pads, residuals, g):
    """Returns the gradients w.r.t. ``x`` and ``kernel`` of the depthwise conv, given ``g``."""
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    if max(kh, kw) >= 5:
        # The input gradient is the correlation of g, dilated by the stride and padded by
        # kernel - 1 - pad (a negative pad crops), with the flipped kernel. For 5x5 kernels
        # that is 2-4x faster than autodiff's sum of kh*kw padded copies; for 3x3 slower.
        (lo_h, _), (lo_w, _) = pads
        ho, wo = g.shape[1:3]
        g_dilated = lax.pad(g, jnp.zeros((), g.dtype), (
            (0, 0, 0),
            (kh - 1 - lo_h, x.shape[1] + lo_h - (ho - 1) * strides[0] - 1, strides[0] - 1),
            (kw - 1 - lo_w, x.shape[2] + lo_w - (wo - 1) * strides[1] - 1, strides[1] - 1),
            (0, 0, 0)))
        dx = _sum_of_slices(g_dilated, kernel[::-1, ::-1], (1, 1), ((0, 0), (0, 0)))
    else:
        dx, = jax.vjp(lambda x: _sum_of_slices(x, kernel, strides, pads), x)[1](g)
    # The kernel gradient: per tap, sum over (n, h, w) of window * g. One variadic reduce
    # computes all kh*kw sums in a single pass (about 2x faster than kh*kw reductions),
    # accumulating in float32 whatever the compute type.
    products = tuple(t.astype(jnp.float32) * g.astype(jnp.float32)
                     for t in _taps(x, (kh, kw), strides, pads, g.shape[1:3]))
    sums = lax.reduce(products, (jnp.float32(0),) * len(products),
                      lambda a, b: tuple(u + v for u, v in zip(a, b)), (0, 1, 2))
    dkernel = jnp.stack(sums).reshape(kernel.shape).astype(kernel.dtype)
    return dx, dkernel


_depthwise_by_slices.defvjp(_depthwise_fwd, _depthwise_bwd)


def batch_norm(train: bool, name: str, momentum: float = 0.9, epsilon: float = 1e-5):
    """Returns a BatchNorm; the defaults are PyTorch's (momentum 0.1, eps 1e-5).

    ``momentum`` is flax's (``1 - torch momentum``). ``train`` False means: normalise with
    the running statistics and never update them.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                        name=name)


# Hugging Face ``hidden_act`` names -> functions: "gelu" is the exact erf form; "gelu_new",
# "gelu_fast" and "gelu_pytorch_tanh" are the tanh approximation (the same function up to
# float rounding).
ACTIVATIONS = {
    "gelu": partial(nn.gelu, approximate=False),
    "gelu_new": partial(nn.gelu, approximate=True),
    "gelu_fast": partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}


def activation(name: str):
    """Returns the activation function called ``name`` (a Hugging Face ``hidden_act``);
    raises ``UserError`` listing the known ones."""
    if name not in ACTIVATIONS:
        raise unknown("activation (hidden_act)", name, ACTIVATIONS)
    return ACTIVATIONS[name]
