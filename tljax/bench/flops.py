"""Analytic FLOP counts: 2 x the multiply-adds of a function's matmuls and convolutions,
read off its jaxpr, the same on every backend.

XLA's own count (``compiled.cost_analysis()``) is complete on CPU but leaves out what a
GPU backend hands to cuDNN or cuBLAS as custom calls (it said 51 GFLOP for a ResNet-50
train step of about 3,100 on an H200), so a TFLOP/s figure needs a count of its own. This
one counts what the papers' tables count (multiply-adds of every ``dot_general`` and
``conv_general_dilated``, x2; elementwise work, norms and softmax left out; a window over
padding counted in full) after dead-code elimination, so a gradient nothing reads is not
counted, as XLA would not compute it. The jaxpr is traced with depthwise convolutions as
convolutions and attention as matmuls (``COUNTED_ROUTES``): the CPU's slices route
computes the same multiply-adds as elementwise ops, and cuDNN's flash attention is one
call, which the count would miss.
"""

import contextlib
import math
import os

import jax
import jax.extend
from jax._src.interpreters import partial_eval as pe  # dce_jaxpr has no public home yet


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def _dot_flops(eqn) -> int:
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2 * _prod(eqn.outvars[0].aval.shape) * _prod(lhs[d] for d in contracting)


def _conv_flops(eqn) -> int:
    """Each output element sums over the kernel window and the kernel's input features
    (already per group); an input dilated by d (a strided conv's input gradient) puts a
    real pixel under about 1 in prod(d) window taps (exactly so away from the borders)."""
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    rhs = eqn.invars[1].aval.shape
    window = _prod(rhs[d] for d in spec[2:]) * rhs[spec[1]]
    return (2 * _prod(eqn.outvars[0].aval.shape) * window
            // _prod(eqn.params["lhs_dilation"]))


def _sub_jaxprs(value):
    """Yields the jaxprs held in an equation's param ``value`` (one, or a tuple of them)."""
    for v in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(v, jax.extend.core.ClosedJaxpr):
            yield v.jaxpr
        elif isinstance(v, jax.extend.core.Jaxpr):
            yield v


def jaxpr_flops(jaxpr) -> int:
    """Returns the matmul and convolution FLOPs of ``jaxpr`` (a ``Jaxpr``), nested ones
    included: a scan's body times its length, a cond's costliest branch, a while loop's
    body once (its trip count is not known before it runs)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params["branches"]))
        else:
            inner = sum(jaxpr_flops(j) for value in eqn.params.values()
                        for j in _sub_jaxprs(value))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


# The routes traced for counting (tljax.models.layers): each multiply-add a matmul or conv.
COUNTED_ROUTES = {"TLJAX_DEPTHWISE": "conv", "TLJAX_ATTENTION": "xla"}


@contextlib.contextmanager
def _counted_routes():
    """Sets ``COUNTED_ROUTES`` in the environment (read at trace time), then restores it."""
    before = {name: os.environ.get(name) for name in COUNTED_ROUTES}
    os.environ.update(COUNTED_ROUTES)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def count(fn, *args) -> int:
    """Returns the matmul and convolution FLOPs of one call ``fn(*args)`` (``args`` arrays
    or ``jax.ShapeDtypeStruct``), those no output depends on left out.

    JAX's caches are cleared before and after the counted trace: traces of ``fn``'s parts
    made earlier (a ``jax.jit``'s, a ``value_and_grad``'s of the same loss function) hold
    the backend's routes, and the counted ones must not be reused when ``fn`` is compiled.
    Already compiled programs (``jit(...).lower(...).compile()``) are not affected."""
    jax.clear_caches()
    try:
        with _counted_routes():
            closed = jax.make_jaxpr(fn)(*args)
    finally:
        jax.clear_caches()
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return jaxpr_flops(jaxpr)
