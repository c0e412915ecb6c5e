"""The JAX train steps ``tljax bench`` compares, for one (model, strategy).

All of them run the same model with the same SGD and the same BatchNorm treatment
(BatchNorm in frozen blocks on running statistics, as tljax's step does); they differ only
in which gradients they compute and what the optimizer chain reads:

- ``tljax``: ``train.make_step``, as a run builds it: only trainable params are
  differentiated, frozen ones are passed through.
- ``mask_only``: ``jax.grad`` over every param, ``optim.make``'s ``multi_transform`` with
  ``set_to_zero`` for frozen params and no clipping (nothing reads a frozen gradient, so
  XLA may drop the frozen backward).
- ``mask_clip``: the same, with ``clip_by_global_norm`` and ``add_decayed_weights`` over
  every gradient before the mask: the frozen backward is needed for the norm.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tljax import config, models, optim, strategies, train
from tljax.bench import OPTIMIZER, random_batch

JAX_METHODS = ("tljax", "mask_only", "mask_clip")
NUM_CLASSES = 10


def make_model(name: str, image_size: int | None) -> models.Model:
    """Returns the registry model ``name`` at ``image_size`` px (ignored for text models)."""
    text = name in models.names("text")
    return models.create(name, NUM_CLASSES, image_size=None if text else image_size)


def make_batch(model: models.Model, batch: int, seed: int = 0) -> tuple:
    """Returns a random ``(inputs, labels)`` numpy batch for ``model`` (``random_batch``)."""
    return random_batch(tuple(model.dummy_input(batch).shape), model.preprocessing.kind,
                        NUM_CLASSES, seed)


def random_variables(model: models.Model, seed: int = 0) -> dict:
    """Returns variables shaped like ``model.init``'s, filled without running it: norm
    scales and BatchNorm variances 1, biases and means 0, every other leaf normal with
    std 0.02 (a step's cost does not depend on the values; compiling the init would add
    seconds to every bench child)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, leaf.dtype)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def strategy_rules(model: models.Model, strategy: str, params) -> tuple:
    """Returns ``(rules, frozen_blocks)``: one ``Rule`` per param of ``strategy`` and the
    blocks whose BatchNorm runs on running statistics (tljax's ``bn_mode=per_block``)."""
    rules = strategies.labels(strategy, params, model.blocks, model.name)
    return rules, strategies.frozen_blocks(rules, model.blocks)


def optimizer_config(**settings):
    """Returns the ``optim.make`` config of the bench's SGD with ``settings`` overriding."""
    s = {**OPTIMIZER, **settings}
    # A long cosine horizon: the learning rate stays at ``lr`` over a benchmark's steps.
    return config.transfer(optimizer=s["optimizer"], lr=s["lr"], momentum=s["momentum"],
                           weight_decay=s["weight_decay"], grad_clip=s["grad_clip"],
                           warmup_steps=0, steps=10 ** 7)


def make_tx(method: str, rules, **settings) -> optax.GradientTransformation:
    """Returns the optimizer of ``method`` for params labelled by ``rules``."""
    s = {**OPTIMIZER, **settings}
    if method == "tljax":  # clipping and decay see the trainable params only
        return optim.make(optimizer_config(**s), rules)
    if method == "mask_only":
        return optim.make(optimizer_config(**{**s, "grad_clip": 0.0}), rules)
    if method == "mask_clip":
        chain = [optax.clip_by_global_norm(s["grad_clip"])] if s["grad_clip"] else []
        chain.append(optax.add_decayed_weights(s["weight_decay"]))
        masked = optim.make(optimizer_config(**{**s, "grad_clip": 0.0, "weight_decay": 0.0}),
                            rules)
        return optax.chain(*chain, masked)
    raise ValueError(f"not a JAX method: {method!r}")


def make_masked_step(module, tx: optax.GradientTransformation, frozen_blocks=(),
                     compute_dtype=None):
    """Returns ``step(state, inputs, labels) -> (state, {"loss", "accuracy"})``, jitted:
    gradients of every param, then ``tx`` (whose mask zeroes the frozen updates).
    ``compute_dtype`` casts params and float inputs for the pass, as ``train.make_step``."""
    frozen_blocks = tuple(frozen_blocks)

    def loss_fn(params, batch_stats, inputs, labels):
        params, inputs = train.cast_for_compute(params, inputs, compute_dtype)
        variables = {"params": params, "batch_stats": batch_stats} if batch_stats else \
            {"params": params}
        logits, mutated = module.apply(variables, inputs, train=True,
                                       frozen_blocks=frozen_blocks, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, train.stats_as_before(mutated, batch_stats))

    def step(state: train.TrainState, inputs, labels):
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, inputs, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
        return train.TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=0)


def build(model: models.Model, strategy: str, method: str, variables: dict | None = None,
          dtype: str = "float32", **settings) -> tuple:
    """Returns ``(step, state, rules)`` of ``method`` for ``strategy`` on ``model``:
    ``step`` jitted (not yet compiled), ``state`` a fresh ``TrainState`` of ``variables``
    (default: the model's init at key 0), computing in ``dtype`` (``bench.DTYPES``).
    ``settings`` override ``bench.OPTIMIZER``."""
    if variables is None:
        variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    rules, frozen = strategy_rules(model, strategy, variables["params"])
    tx = make_tx(method, rules, **settings)
    compute = None if dtype == "float32" else jnp.dtype(dtype)
    if method == "tljax":
        step = train.make_step(model.module, rules, tx, frozen, compute)
    else:
        step = make_masked_step(model.module, tx, frozen, compute)
    return step, train.init_state(variables, tx), rules


def compile_step(step, state, inputs, labels, precision: str = "highest") -> tuple:
    """Returns ``(compiled, xla_flops)``: the step compiled for these shapes with float32
    matmuls and convs at ``precision`` (``bench.PRECISIONS``), and XLA's flop count of it
    (None where the backend gives none; on a GPU it leaves out the cuDNN and cuBLAS calls:
    ``flops.count`` is the count to use)."""
    from tljax.run.settings import MATMUL_PRECISIONS

    with jax.default_matmul_precision(MATMUL_PRECISIONS[precision]):
        compiled = step.lower(state, inputs, labels).compile()
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 - not every backend analyses cost
        flops = None
    return compiled, flops
