"""The jit-compiled train step of domain adaptation: a source batch with labels and a
target batch without, one update of the strategy's trainable params (and a DANN
discriminator's).

Both batches go through the network together (trainable BatchNorm sees both domains, as
in the papers' implementations); the source batch's logits give the classification loss,
and the penultimate features of both batches the adaptation term (``tljax.adapt``). The
discriminator's params live beside the model's under ``adapt.DISCRIMINATOR`` in the train
state (checkpointed and resumed with it), labelled trainable; the frozen params are passed
through untouched, as in ``tljax.train.make_step``.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from tljax import adapt, strategies
from tljax.train import TrainState, _split, _variables, update_trainable


def with_discriminator(variables: dict, rules: dict, feature_dim: int, width: int,
                       seed: int) -> tuple:
    """Returns ``(variables, rules)`` with a fresh discriminator (init at ``seed``) beside
    the model's params, every leaf trainable and decayed like a fresh head under L2-SP."""
    disc = adapt.Discriminator(width).init(jax.random.key(seed + 7919),
                                           jnp.zeros((1, feature_dim)))["params"]
    params = {**variables["params"], adapt.DISCRIMINATOR: disc}
    fresh = strategies.Rule(True, 1.0, reinit=True)
    rules = {**rules, adapt.DISCRIMINATOR: jax.tree.map(lambda _: fresh, disc)}
    return {**variables, "params": params}, rules


def without_discriminator(variables: dict) -> dict:
    """Returns ``variables`` less the discriminator: what a run exports."""
    params = {k: v for k, v in variables["params"].items() if k != adapt.DISCRIMINATOR}
    return {**variables, "params": params}


def make_step(module, rules, tx: optax.GradientTransformation, objective: str,
              weight: float, total_steps: int, frozen_blocks=(), compute_dtype=None,
              width: int = 100) -> Callable:
    """Returns ``step(state, (source images, target images), source labels) -> (state,
    {"loss", "accuracy", "adapt_loss"})``, jit-compiled. ``loss`` is the source
    classification loss; ``adapt_loss`` the adaptation term before ``weight``."""
    trainable_paths = frozenset(
        k for k, r in traverse_util.flatten_dict(rules).items() if r.trainable)
    frozen_blocks = tuple(frozen_blocks)
    discriminator = adapt.Discriminator(width)

    def loss_fn(trainable, frozen, batch_stats, source, target, labels, progress):
        params = traverse_util.unflatten_dict({**trainable, **frozen})
        disc_params = params.pop(adapt.DISCRIMINATOR, None)
        if compute_dtype is not None:
            params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
            source, target = (x.astype(compute_dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                              else x for x in (source, target))
        features, mutated = module.apply(
            _variables(params, batch_stats), jnp.concatenate([source, target]), train=True,
            frozen_blocks=frozen_blocks, mutable=["batch_stats"], method="features")
        features = features.astype(jnp.float32)
        fs, ft = features[:len(source)], features[len(source):]
        logits = module.apply({"params": params}, fs.astype(features.dtype),
                              method=lambda m, f: m.head(f)).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        if objective == "dann":
            term = adapt.dann_loss(discriminator, disc_params, fs, ft,
                                   weight * adapt.dann_lambda(progress))
            total = loss + term  # the discriminator learns at full strength
        else:
            term = adapt.coral_loss(fs, ft) if objective == "coral" else adapt.mmd_loss(fs, ft)
            total = loss + weight * term
        new_stats = jax.tree.map(lambda new, old: new.astype(old.dtype),
                                 mutated.get("batch_stats", batch_stats), batch_stats)
        return total, (loss, term, logits, new_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, images, labels):
        source, target = images
        trainable, frozen = _split(state.params, trainable_paths)
        progress = state.step.astype(jnp.float32) / max(int(total_steps), 1)
        (_, (loss, term, logits, batch_stats)), grads = grad_fn(
            trainable, frozen, state.batch_stats, source, target, labels, progress)
        params, opt_state = update_trainable(tx, state, trainable, frozen, grads)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
                   "adapt_loss": term}
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=0)
