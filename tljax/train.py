"""The jit-compiled train step, evaluation and the fit loop.

The step splits params by rule into a trainable and a frozen part and differentiates
only the trainable part: JAX linearises nothing that does not depend on it, so no
backward pass runs through a frozen prefix (the linear probe's step costs a forward pass
and the head's gradient). Frozen params are passed through untouched, so they stay
bit-identical; BatchNorm in frozen blocks runs on running statistics and never updates.
"""

import functools
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from tqdm.auto import tqdm


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree, so it checkpoints as one."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def init_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
    """Returns the state at step 0 for ``variables`` (``params`` and maybe ``batch_stats``)."""
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def _split(params, trainable_paths):
    flat = traverse_util.flatten_dict(params)
    trainable = {k: v for k, v in flat.items() if k in trainable_paths}
    frozen = {k: v for k, v in flat.items() if k not in trainable_paths}
    return trainable, frozen


def _variables(params, batch_stats) -> dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def update_trainable(tx: optax.GradientTransformation, state: TrainState, trainable: dict,
                     frozen: dict, grads: dict) -> tuple:
    """Returns ``(params, opt_state)`` after one update from ``grads`` (flat, trainable
    leaves only): frozen leaves are passed through as they were, bit for bit."""
    # Frozen grads are exact zeros, never computed: set_to_zero drops them and they add
    # nothing to the clipping norm.
    full_grads = traverse_util.unflatten_dict(
        {**grads, **{k: jnp.zeros_like(v) for k, v in frozen.items()}})
    updates, opt_state = tx.update(full_grads, state.opt_state, state.params)
    flat_updates = traverse_util.flatten_dict(updates)
    new_trainable = {k: optax.apply_updates(v, flat_updates[k]) for k, v in trainable.items()}
    return traverse_util.unflatten_dict({**new_trainable, **frozen}), opt_state


def cast_for_compute(params, images, compute_dtype):
    """Returns ``(params, images)`` cast to ``compute_dtype`` for a forward and backward
    pass (float images only; token ids stay integers); unchanged when it is None."""
    if compute_dtype is None:
        return params, images
    params = jax.tree.map(lambda p: p.astype(compute_dtype), params)
    if jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(compute_dtype)
    return params, images


def stats_as_before(mutated: dict, batch_stats):
    """Returns the pass's updated BatchNorm statistics (``mutated``'s, else the old ones)
    in the dtypes the state keeps them in, whatever the pass computed in."""
    return jax.tree.map(lambda new, old: new.astype(old.dtype),
                        mutated.get("batch_stats", batch_stats), batch_stats)


def make_step(module, rules, tx: optax.GradientTransformation, frozen_blocks=(),
              compute_dtype=None, accum_steps: int = 1, axis_name: str | None = None,
              jit: bool = True) -> Callable:
    """Returns ``step(state, images, labels) -> (state, {"loss", "accuracy"})``, jit-compiled.

    ``rules`` is the pytree of ``strategies.Rule``; ``frozen_blocks`` the blocks whose
    BatchNorm stays in inference mode. ``compute_dtype`` (e.g. ``jnp.bfloat16``) runs the
    forward and backward pass in that type while params, gradients and optimizer state
    stay float32. ``accum_steps`` splits the batch into that many micro-batches and
    averages their gradients before one update: the large batch's update, in a fraction
    of its memory (exactly so where no BatchNorm computes batch statistics).
    ``axis_name`` (for pmap) averages gradients, loss and BatchNorm statistics across
    devices; ``jit`` False returns the plain function (pmap compiles it instead).
    """
    trainable_paths = frozenset(
        k for k, r in traverse_util.flatten_dict(rules).items() if r.trainable)
    frozen_blocks = tuple(frozen_blocks)

    def loss_fn(trainable, frozen, batch_stats, images, labels):
        params, images = cast_for_compute(
            traverse_util.unflatten_dict({**trainable, **frozen}), images, compute_dtype)
        logits, mutated = module.apply(
            _variables(params, batch_stats), images, train=True,
            frozen_blocks=frozen_blocks, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, stats_as_before(mutated, batch_stats))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(trainable, frozen, batch_stats, images, labels):
        """Returns what ``grad_fn`` does, averaged over ``accum_steps`` micro-batches."""
        # Micro-batch k takes rows k, k + accum_steps, ...: on a mesh, where each device
        # holds a contiguous run of rows, every micro-batch is then spread over all devices
        # (no all-gather, no device computes another's rows). The reshape to
        # (rows / accum_steps, accum_steps) keeps each device's rows on it; the swap is local.
        micro = lambda x: x.reshape((-1, accum_steps) + x.shape[1:]).swapaxes(0, 1)  # noqa: E731

        def body(carry, batch):
            grads, stats = carry
            (loss, (logits, stats)), g = grad_fn(trainable, frozen, stats, *batch)
            return (jax.tree.map(jnp.add, grads, g), stats), (loss, logits)

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        (grads, stats), (losses, logits) = jax.lax.scan(
            body, (zeros, batch_stats), (micro(images), micro(labels)))
        grads = jax.tree.map(lambda g: g / accum_steps, grads)
        # Back to the batch's row order (row j * accum_steps + k is micro k's j-th row).
        logits = logits.swapaxes(0, 1).reshape((-1,) + logits.shape[2:])
        return (losses.mean(), (logits, stats)), grads

    def step(state: TrainState, images, labels):
        trainable, frozen = _split(state.params, trainable_paths)
        compute = grad_fn if accum_steps == 1 else accumulated
        (loss, (logits, batch_stats)), grads = compute(
            trainable, frozen, state.batch_stats, images, labels)
        if axis_name is not None:
            grads, loss, batch_stats = jax.lax.pmean((grads, loss, batch_stats), axis_name)
        params, opt_state = update_trainable(tx, state, trainable, frozen, grads)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        if axis_name is not None:
            accuracy = jax.lax.pmean(accuracy, axis_name)
        metrics = {"loss": loss, "accuracy": accuracy}
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return jax.jit(step, donate_argnums=0) if jit else step


@functools.lru_cache(maxsize=16)
def make_predict(module) -> Callable:
    """Returns ``predict(variables, images) -> logits`` in inference mode, jit-compiled;
    the same function for the same module, so every run of one model shares its programs."""
    return jax.jit(lambda variables, images: module.apply(variables, images, train=False))


@functools.lru_cache(maxsize=16)
def make_eval_loss(module) -> Callable:
    """Returns ``loss(state, images, labels)``, jit-compiled: the mean cross-entropy of the
    ``TrainState``'s model in inference mode (running BatchNorm statistics), the model a
    checkpoint holds. ``fit`` calls it on the last batch before saving: params can be
    finite and still overflow the logits (a 1e37 head), which no check of the params sees.
    The same function for the same module (as ``make_predict``).
    """
    @jax.jit
    def variables_loss(params, batch_stats, images, labels):
        logits = module.apply(_variables(params, batch_stats), images, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), labels).mean()

    # Compiled for the model's variables, not the whole state: strategies whose optimizer
    # states differ share it.
    return lambda state, images, labels: variables_loss(state.params, state.batch_stats,
                                                        images, labels)


def _macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Returns the macro-averaged F1 (scikit-learn's, over the classes present)."""
    from sklearn.metrics import f1_score  # here, not at the top: its import costs ~2 s

    return float(f1_score(labels, predictions, average="macro"))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Returns ``{"accuracy", "macro_f1", "loss"}`` (mean cross-entropy) of ``logits``."""
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    predictions = logits.argmax(-1)
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "macro_f1": _macro_f1(labels, predictions),
        "loss": float(-np.mean(log_probs[np.arange(len(labels)), labels])),
    }


def predict_batched(fn: Callable, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Returns ``fn(batch)`` over ``inputs`` in batches, concatenated as numpy.

    The last partial batch is padded to ``batch_size`` so one compiled shape serves all.
    A streamed split (``tljax.data.streaming``) reads its batches ahead on worker threads.
    """
    n = len(inputs)
    if n == 0:
        raise ValueError("cannot evaluate on an empty split")
    out = []
    loaded = inputs.chunks(batch_size) if hasattr(inputs, "chunks") else (
        (start, inputs[start:start + batch_size]) for start in range(0, n, batch_size))
    for _, batch in loaded:
        pad = batch_size - len(batch)
        if pad:
            batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
        out.append(np.asarray(fn(batch))[:batch_size - pad])
    return np.concatenate(out)


def evaluate(predict: Callable, variables: dict, images: np.ndarray, labels: np.ndarray,
             batch_size: int) -> dict:
    """Returns ``{"accuracy", "macro_f1", "loss"}`` of ``variables`` on one split.

    Raises ``FloatingPointError`` when any logit is NaN or inf: a diverged model has no
    accuracy worth recording.
    """
    logits = predict_batched(lambda batch: predict(variables, batch), images, batch_size)
    bad = int(np.sum(~np.isfinite(logits).all(axis=-1)))
    if bad:
        raise FloatingPointError(f"non-finite logits for {bad} of {len(logits)} examples")
    return classification_metrics(logits, labels)


@jax.jit
def _finite_parts(state) -> dict:
    """Returns ``{part: all floating leaves finite}`` for ``params``, ``batch_stats`` and
    ``opt_state`` of a ``TrainState`` (``{"state": ...}`` for any other pytree)."""
    parts = ({name: getattr(state, name) for name in ("params", "batch_stats", "opt_state")}
             if isinstance(state, TrainState) else {"state": state})

    def finite(tree):
        flags = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
                 if jnp.issubdtype(x.dtype, jnp.inexact)]
        return jnp.stack(flags).all() if flags else jnp.asarray(True)

    return {name: finite(tree) for name, tree in parts.items()}


def _check_finite(state, step: int, post_update_loss, images, labels) -> None:
    """Raises ``FloatingPointError`` naming ``step`` unless every floating leaf of ``state``
    is finite and (where given) ``post_update_loss(state, images, labels)`` is too."""
    bad = [name for name, ok in jax.device_get(_finite_parts(state)).items() if not ok]
    if bad:
        raise FloatingPointError(f"{' and '.join(bad)} became non-finite at step {step}")
    if post_update_loss is not None and not np.isfinite(
            float(post_update_loss(state, images, labels))):
        raise FloatingPointError(f"the loss after the update became non-finite at step {step}")


def fit(step: Callable, state: TrainState, batches: Iterator, num_steps: int,
        desc: str = "train", log_every: int = 50, start_step: int = 0,
        checkpoint: Callable | None = None, checkpoint_every: int = 0,
        post_update_loss: Callable | None = None, evaluate: Callable | None = None,
        evaluate_every: int = 0) -> tuple:
    """Runs steps ``start_step + 1 .. num_steps`` over ``batches``.

    Returns ``(state, history, seconds)``: ``history`` holds ``{"step", "loss",
    "accuracy"}`` every ``log_every`` steps and at the end; ``seconds`` is the wall time of
    the loop, compilation included. ``checkpoint(state, step)`` is called every
    ``checkpoint_every`` steps and at the end, only once the loss is known to have been
    finite at every step so far and the updated state is finite (every float leaf of
    params, batch_stats and optimizer state), and, where ``post_update_loss(state, images,
    labels)`` is given (``make_eval_loss``), its loss on the last batch too.
    ``evaluate(state, step)`` is called every ``evaluate_every`` steps (the caller's
    validation curve; it must not change the state). A step's loss
    is computed before its update, so these checks, also run at the end with or without a
    checkpoint, are what sees a divergence in the last step. Any of them failing raises
    ``FloatingPointError`` naming the step.
    """
    history = []
    start = time.perf_counter()
    first_bad = jnp.asarray(-1)  # first non-finite step, tracked on device: no sync per step
    bar = tqdm(range(start_step, num_steps), desc=desc, leave=False, disable=None,
               initial=start_step, total=num_steps)
    for i in bar:
        images, labels = next(batches)
        state, metrics = step(state, images, labels)
        first_bad = jnp.where((first_bad < 0) & ~jnp.isfinite(metrics["loss"]), i + 1, first_bad)
        last = i + 1 == num_steps
        log = (i + 1) % log_every == 0 or last
        save = checkpoint is not None and (last or (checkpoint_every and
                                                    (i + 1) % checkpoint_every == 0))
        if log or save:
            if int(first_bad) >= 0:
                raise FloatingPointError(f"loss became non-finite at step {int(first_bad)}")
        if save or last:
            _check_finite(state, i + 1, post_update_loss, images, labels)
        if log:
            metrics = {k: float(v) for k, v in metrics.items()}
            history.append({"step": i + 1, **metrics})
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if save:
            checkpoint(state, i + 1)
        if evaluate is not None and evaluate_every and (i + 1) % evaluate_every == 0:
            evaluate(state, i + 1)
    jax.block_until_ready(state.params)
    return state, history, time.perf_counter() - start
