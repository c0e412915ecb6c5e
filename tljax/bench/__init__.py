"""``tljax bench``: what each freezing strategy costs, tljax's step against the recipes
other codebases write and against PyTorch.

Each (model, strategy, method) runs in its own child process (``worker``), so its peak
memory is its own; the parent (``runner``) compiles every child of a model first, then
runs rounds in which each child takes one step in turn, so drift of the machine falls on
every method alike. ``methods`` builds the JAX steps, ``torch_ref`` the PyTorch ones,
``output`` writes the table, JSON and plot.

Methods:

- ``tljax``: tljax's own step, as a run builds it (only trainable params differentiated).
- ``mask_only``: gradients of every param, frozen updates zeroed by ``multi_transform`` +
  ``set_to_zero`` (the plain optax recipe; under jit XLA may drop the frozen backward).
- ``mask_clip``: the same, with global-norm clipping and weight decay over all gradients
  before the mask (as many codebases chain them): the frozen backward is needed.
- ``torch``: the same architecture and strategy in eager PyTorch (frozen params
  ``requires_grad=False``, frozen BatchNorm in ``eval()``), where tljax has a reference.
- ``torch_compile``: the same, the module through ``torch.compile`` (its compile seconds
  are its first step's, taken while building and then undone).
"""

import numpy as np

from tljax.errors import UserError, unknown
from tljax.run.settings import MATMUL_PRECISIONS

METHODS = ("tljax", "mask_only", "mask_clip", "torch", "torch_compile")
TORCH_METHODS = ("torch", "torch_compile")
# Compute types: float32, or bfloat16 compute with float32 params and optimizer state
# (tljax's ``compute_dtype``; torch's ``autocast``).
DTYPES = ("float32", "bfloat16")
# Float32 matmul/conv precision, a run's ``matmul_precision`` values: true float32
# ("highest"), TF32 (JAX's "tensorfloat32"; torch's allow_tf32 for matmuls and cuDNN convs),
# or each library's own default (JAX: TF32 on recent NVIDIA GPUs; torch: TF32 for convs,
# not matmuls).
PRECISIONS = tuple(MATMUL_PRECISIONS)
MODELS = ("cnn", "cnn6", "resnet18", "resnet50", "efficientnet_lite0", "vit_ti16",
          "bert_minilm_l6")
STRATEGIES = ("linear_probe", "last_k:1", "bitfit", "norm_only", "llrd:0.65", "full_ft")
DEFAULT_MODELS = ("resnet18",)

# One optimizer for every method, so their steps do the same work. ``grad_clip`` and
# ``weight_decay`` are tljax's (over trainable params) and mask_clip's (over all params
# before the mask); mask_only has no clipping (clipping reads every gradient: that is
# mask_clip) and decays trainable params only, as tljax does.
OPTIMIZER = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
             "grad_clip": 1.0}


def optimizer_text(settings: dict | None = None) -> str:
    """Returns one line saying which optimizer every method ran."""
    s = {**OPTIMIZER, **(settings or {})}
    return (f"SGD (momentum {s['momentum']}, lr {s['lr']}), weight decay {s['weight_decay']:g} "
            f"and global-norm clipping at {s['grad_clip']:g}: tljax and torch over trainable "
            "params, mask_clip over all params before the mask, mask_only decay only "
            "(trainable) and no clipping")


def check_names(models, strategies, methods, dtype: str = "float32",
                precision: str = "highest") -> None:
    """Raises ``UserError`` naming the first unknown model, strategy, method, dtype or
    precision."""
    from tljax import strategies as strategies_lib
    from tljax.models import registry

    for m in models:
        if m not in registry.names():
            raise unknown("model", m, registry.names())
    for s in strategies:
        name = s.partition(":")[0]
        if name not in strategies_lib.PRESETS:
            raise unknown("strategy", s, STRATEGIES)
    for m in methods:
        if m not in METHODS:
            raise unknown("method", m, METHODS)
    if dtype not in DTYPES:
        raise unknown("dtype", dtype, DTYPES)
    if precision not in PRECISIONS:
        raise unknown("matmul precision", precision, PRECISIONS)
    if not (models and strategies and methods):
        raise UserError("bench needs at least one model, strategy and method")


def random_batch(shape, kind: str, num_classes: int, seed: int = 0) -> tuple:
    """Returns a random ``(inputs, labels)`` batch as numpy, the same for a JAX and a torch
    child given the same arguments: normal NHWC images, or packed token ids (ids, an
    all-ones attention mask, zero token types) for ``kind == "text"``."""
    rng = np.random.default_rng(seed)
    if kind == "text":
        x = np.zeros(shape, np.int32)
        x[:, 0] = rng.integers(1, 1000, (shape[0], shape[2]))
        x[:, 1] = 1
    else:
        x = rng.normal(size=shape).astype(np.float32)
    return x, rng.integers(0, num_classes, shape[0]).astype(np.int32)
