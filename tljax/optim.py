"""Rules -> one optax transform: frozen params get ``set_to_zero`` and hold no state.

Trainable params are grouped by LR multiplier (``train@0.5``, ...) with
``optax.multi_transform``; each group runs the same base optimizer with its own scaled
schedule. Gradient clipping comes first over the whole tree: the train step hands it
exact zeros for frozen params (never computed), so the global norm is that of the
trainable params alone. Weight decay sits inside the groups, so it never reaches a frozen
param, and skips biases and norm params (ndim < 2), as timm does.
"""

import jax
import ml_collections
import optax

from tljax.errors import unknown

OPTIMIZERS = ("adam", "sgd")


def schedule(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Returns linear warmup to ``lr`` then cosine decay to 0 at ``total_steps``."""
    warmup_steps = min(int(warmup_steps), max(int(total_steps) - 1, 0))
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(lr, max(int(total_steps), 1))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(int(total_steps), 1))


def _group(cfg, lr_mult: float) -> optax.GradientTransformation:
    sched = schedule(cfg.lr * lr_mult, cfg.warmup_steps, cfg.steps)
    decay = optax.add_decayed_weights(
        cfg.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    if cfg.optimizer == "adam":
        return optax.chain(optax.scale_by_adam(), decay, optax.scale_by_learning_rate(sched))
    return optax.chain(decay, optax.trace(cfg.momentum, nesterov=False),
                       optax.scale_by_learning_rate(sched))


def make(cfg: ml_collections.ConfigDict, rules) -> optax.GradientTransformation:
    """Returns the optimizer for params labelled by ``rules`` (a pytree of ``Rule``).

    ``cfg`` needs ``optimizer`` (adam | sgd), ``lr``, ``momentum``, ``weight_decay``,
    ``grad_clip`` (0 = off), ``warmup_steps`` and ``steps``.
    """
    if cfg.optimizer not in OPTIMIZERS:
        raise unknown("optimizer", cfg.optimizer, OPTIMIZERS)
    labels = jax.tree.map(lambda r: r.label, rules)
    mults = {r.label: r.lr_mult for r in jax.tree.leaves(rules) if r.trainable}
    groups = {label: _group(cfg, mult) for label, mult in mults.items()}
    groups["frozen"] = optax.set_to_zero()
    tx = optax.multi_transform(groups, labels)
    if cfg.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx
