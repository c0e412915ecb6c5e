"""Rules -> one optax transform: frozen params get ``set_to_zero`` and hold no state.

Trainable params are grouped by LR multiplier (``train@0.5``, ...) with
``optax.multi_transform``; each group runs the same base optimizer with its own scaled
schedule. Gradient clipping comes first over the whole tree: the train step hands it
exact zeros for frozen params (never computed), so the global norm is that of the
trainable params alone. Weight decay sits inside the groups, so it never reaches a frozen
param, and skips biases and norm params (ndim < 2), as timm does.

L2-SP (Li, Grandvalet & Davoine 2018, eq. 3) adds ``alpha/2 ||w - w0||^2`` over the
trainable backbone params (``w0``: their values when the optimizer state is created, i.e.
the pretrained weights) and ``beta/2 ||w||^2`` over the head's. It is a transformation at
the start of the chain that adds the penalty's gradient, ``alpha (w - w0)`` and
``beta w``, to the data gradient, rather than a term in the loss: ``w0`` then lives in the
optimizer state (only for trainable backbone leaves), so it is placed, checkpointed and
restored with the rest of the state and the step needs no extra input; the logged loss
stays the data loss, comparable across strategies. It comes before clipping, exactly as
the paper's penalty in the loss would: clipping sees the total gradient. It is not
decoupled like ``weight_decay``: with Adam it is preconditioned like any gradient.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tljax.errors import UserError, unknown

OPTIMIZERS = ("adam", "sgd")


def schedule(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Returns linear warmup to ``lr`` then cosine decay to 0 at ``total_steps``."""
    warmup_steps = min(int(warmup_steps), max(int(total_steps) - 1, 0))
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(lr, max(int(total_steps), 1))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, max(int(total_steps), 1))


def _group(cfg, lr_mult: float) -> optax.GradientTransformation:
    unit = schedule(1.0, cfg.warmup_steps, cfg.steps)

    def group(lr):
        sched = lambda count: lr * unit(count)  # noqa: E731  (lr may be traced)
        decay = optax.add_decayed_weights(
            cfg.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
        if cfg.optimizer == "adam":
            return optax.chain(optax.scale_by_adam(), decay, optax.scale_by_learning_rate(sched))
        return optax.chain(decay, optax.trace(cfg.momentum, nesterov=False),
                           optax.scale_by_learning_rate(sched))

    # The learning rate is a scalar in the optimizer state, not a constant in the compiled
    # step: a sweep over it compiles the step once (then the compilation cache serves it).
    return optax.inject_hyperparams(group)(lr=cfg.lr * lr_mult)


class PullState(NamedTuple):
    """State of ``pull_toward_start``: the params it pulls toward."""

    start: Any


def pull_toward_start(alpha: float) -> optax.GradientTransformation:
    """Returns a transformation adding ``alpha * (params - start)`` to the updates, the
    gradient of ``alpha/2 ||params - start||^2``; ``start`` is the params given to ``init``.
    """
    def init(params):
        # A copy: the train step donates the params' buffers, and ``start`` outlives them.
        return PullState(jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("pull_toward_start needs the params: tx.update(grads, state, params)")
        updates = jax.tree.map(lambda g, p, p0: g + alpha * (p - p0).astype(g.dtype),
                               updates, params, state.start)
        return updates, state

    return optax.GradientTransformation(init, update)


def l2sp(alpha: float, beta: float, rules) -> optax.GradientTransformation:
    """Returns the L2-SP penalty's gradient as a transformation: ``alpha (w - w0)`` added
    to every trainable param outside ``head`` (``w0`` held in its state, for those leaves
    only), ``beta w`` to every trainable ``head`` param and every ``reinit`` param (they
    have no pretrained value to be pulled toward), frozen params untouched (no state).
    """
    def group(path, rule):
        if not rule.trainable:
            return "none"
        head = getattr(path[0], "key", None) == "head"
        if head or rule.reinit:
            return "head" if beta else "none"
        return "backbone" if alpha else "none"

    labels = jax.tree_util.tree_map_with_path(group, rules)
    return optax.multi_transform({"backbone": pull_toward_start(alpha),
                                  "head": optax.add_decayed_weights(beta),
                                  "none": optax.identity()}, labels)


def make(cfg: ml_collections.ConfigDict, rules) -> optax.GradientTransformation:
    """Returns the optimizer for params labelled by ``rules`` (a pytree of ``Rule``).

    ``cfg`` needs ``optimizer`` (adam | sgd), ``lr``, ``momentum``, ``weight_decay``,
    ``grad_clip`` (0 = off), ``warmup_steps`` and ``steps``; ``l2sp_alpha`` and
    ``l2sp_beta`` (default 0 = off) add L2-SP before everything else, clipping included.
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
    alpha, beta = float(cfg.get("l2sp_alpha", 0.0)), float(cfg.get("l2sp_beta", 0.0))
    for key, value in (("l2sp_alpha", alpha), ("l2sp_beta", beta)):
        if value < 0:  # a negative penalty pushes away from the start without bound
            raise UserError(f"{key} must be >= 0; got {value:g}")
    if alpha or beta:
        tx = optax.chain(l2sp(alpha, beta, rules), tx)
    return tx
