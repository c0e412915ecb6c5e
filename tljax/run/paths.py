"""The ways a run trains, each a stage over one ``Run``: a probe on cached features
(``fit_probe``), or steps through the network (``fit_network``).

``tljax.run.execute`` picks a training path's stages from its table and calls them in
order; this module knows nothing of configs beyond the run's effective settings.
"""

import dataclasses
import functools
import time

import jax
import numpy as np

from tljax import adapt_train, checkpoint, compiled, data, optim, parallel, probe, train

COMPUTE_DTYPES = {"float32": None, "bfloat16": jax.numpy.bfloat16}
DISCRIMINATOR_WIDTH = 100  # Ganin & Lempitsky's domain classifier for MNIST: x -> 100 -> 1


@dataclasses.dataclass
class Run:
    """One (strategy, seed) in progress: what every stage reads, and what it leaves."""

    cfg: object            # the run's effective config (per-strategy settings applied)
    run_cfg: object        # its optimisation settings (``settings.strategy_config``)
    model: object          # models.Model
    inputs: object         # tljax.run.inputs.Inputs
    variables: dict        # starting variables; a stage replaces them with its result
    rules: dict            # strategies.Rule per param
    frozen: tuple          # blocks whose BatchNorm runs on running statistics
    seed: int
    state_dir: str         # where the train state is checkpointed for resume
    log: object = print
    logits: dict = dataclasses.field(default_factory=dict)  # split -> logits, after a stage
    # split -> the labels of its logits where they cover part of the split: with ``shots``,
    # train is scored on the examples trained on (``split_labels``)
    labels: dict = dataclasses.field(default_factory=dict)
    record: dict = dataclasses.field(default_factory=dict)  # fields for the result record
    seconds: float = 0.0   # training time, summed over stages


def _train_subset(run: Run) -> tuple:
    """Returns the train split's inputs and labels, cut to ``shots`` per class if set."""
    x, y = run.inputs.splits["train"]
    if run.cfg.shots:
        idx = data.k_shot_indices(y, run.cfg.shots, run.seed)
        x, y = x[idx], y[idx]
    return x, y


def fit_probe(run: Run) -> None:
    """Fits the head on cached backbone features with ``cfg.probe_solver`` (L2 picked on
    val); sets the head in ``run.variables`` and every split's logits."""
    cfg, model, inputs = run.cfg, run.model, run.inputs
    start = time.perf_counter()
    cache = {"": None, "none": ""}.get(cfg.feature_cache, cfg.feature_cache)
    features, hits = {}, []
    for name, (xs, _) in inputs.splits.items():
        features[name], hit = probe.extract_features(
            model.module, run.variables, xs, cfg.eval_batch_size, cache,
            key=f"{model.name}|{cfg.dataset}|{name}")
        hits.append(hit)
    extract_seconds = time.perf_counter() - start
    yt = inputs.splits["train"][1]
    idx = data.k_shot_indices(yt, cfg.shots, run.seed) if cfg.shots else slice(None)
    result = probe.fit_probe((features["train"][idx], yt[idx]),
                             (features["val"], inputs.splits["val"][1]),
                             inputs.num_classes, cfg.probe_solver, tuple(cfg.probe_l2_grid),
                             standardize=cfg.probe_standardize)
    run.variables["params"]["head"] = {"kernel": result.kernel, "bias": result.bias}
    run.logits = {name: result.logits(f[idx] if name == "train" else f)
                  for name, f in features.items()}
    run.labels["train"] = yt[idx]
    chosen = next(r for r in result.sweep if r["l2"] == result.l2)
    # Extraction and solving are timed apart: a cache hit makes extraction nearly free, and
    # the table says which runs had one.
    run.record["probe"] = {
        "solver": result.solver, "l2": result.l2, "standardize": cfg.probe_standardize,
        "sweep": result.sweep, "iterations": chosen["iterations"],
        # L-BFGS says; ridge is closed form; Adam runs its steps with no test (None).
        "converged": chosen.get("converged", True if result.solver == "ridge" else None),
        # The head's bytes: two runs on the same features must give the same hash.
        "head_sha256": probe.fingerprint_arrays(run.variables["params"]["head"]),
        "extract_seconds": round(extract_seconds, 3), "solve_seconds": round(result.seconds, 3),
        "feature_cache_hit": all(hits), "train_examples": int(len(yt[idx]))}
    run.record["steps"] = chosen["iterations"]  # L-BFGS iterations at the chosen L2
    run.seconds += extract_seconds + result.seconds


@dataclasses.dataclass
class _Route:
    """How a state is placed, stepped, checkpointed and read back for ``cfg.parallel``."""

    step: object        # (placed state, images, labels) -> (placed state, metrics)
    place: object       # host state -> placed state
    saved: object       # placed state -> the tree a checkpoint holds
    like: object        # (placed, host) state -> the restore target of a checkpoint
    restored: object    # a restored checkpoint tree -> placed state
    batches: object     # (x, y, batch_size, seed, skip) -> iterator of step inputs
    to_host: object     # placed state -> numpy state, whole on every process
    predict: object     # (placed state, inputs, batch_size) -> numpy logits
    post_update_loss: object  # (placed state, images, labels) -> inference-mode loss


def _process_batches(mesh, x, y, batch_size: int, seed: int, skip: int):
    """Yields global ``(images, labels)`` arrays split over ``mesh``, in the order of
    ``data.batches`` with the same seed; this process indexes (loads) only its own rows
    of each global batch."""
    rows = parallel.process_rows(mesh, batch_size)
    # A streamed x reads (and preprocesses) these rows ahead on worker threads.
    for images, labels in data.batches(x, y, batch_size, seed, skip=skip, rows=rows):
        yield parallel.global_batch(mesh, batch_size, images, labels)


@functools.lru_cache(maxsize=16)
def _predict_on(module, mesh):
    return parallel.replicated_jit(
        lambda variables, batch: module.apply(variables, batch, train=False), mesh)


def _step_key(kind: str, run: "Run", rules, *rest) -> tuple:
    """Returns the key under which ``compiled.reuse`` shares a step of ``kind`` between
    runs: everything the step closes over (the model, the rules, the optimizer's structure,
    frozen blocks, dtype, accumulation, devices and ``rest``), the learning rate excepted."""
    cfg = run.cfg
    return (kind, run.model.module, compiled.rules_key(rules), compiled.optimizer_key(
        run.run_cfg), tuple(run.frozen), cfg.compute_dtype, cfg.accum_steps, cfg.parallel,
        jax.device_count(), *rest)


def _route(run: "Run", rules, tx) -> _Route:
    """Returns the ``_Route`` of ``cfg.parallel``: the mesh (any number of processes;
    train-state checkpoints hold the placed, possibly FSDP-split, arrays, each process
    writing its own shards) or pmap (one process; checkpoints hold one device's copy).
    Its step is shared with every earlier run of the same structure (``compiled``)."""
    cfg, model, frozen = run.cfg, run.model, run.frozen
    n = jax.device_count()
    dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    loss = train.make_eval_loss(model.module)
    if cfg.parallel == "pmap":
        pstep = compiled.reuse(_step_key("pmap_step", run, rules), lambda: parallel.pmap_step(
            train.make_step(model.module, rules, tx, frozen, dtype, cfg.accum_steps,
                            axis_name="data", jit=False), n))

        def step(st, x, y):
            st, metrics = pstep(st, *parallel.split_batch(n, x, y))
            return st, jax.tree.map(lambda m: m[0], metrics)

        predict = train.make_predict(model.module)
        host = lambda st: jax.device_get(parallel.unreplicate(st))  # noqa: E731

        def predict_all(st, xs, b):
            variables = _variables(host(st))
            return train.predict_batched(lambda batch: predict(variables, batch), xs, b)

        return _Route(
            step, lambda st: parallel.replicate(st, n), parallel.unreplicate,
            lambda placed, state: state, lambda st: parallel.replicate(st, n),
            lambda x, y, b, seed, skip: data.batches(x, y, b, seed, skip=skip), host,
            predict_all, lambda st, x, y: loss(parallel.unreplicate(st), x, y))
    mesh = parallel.make_mesh(n)
    jstep = compiled.reuse(_step_key("step", run, rules), lambda: train.make_step(
        model.module, rules, tx, frozen, dtype, cfg.accum_steps))
    if parallel.one_step_at_a_time():  # CPU devices of several processes: see there
        one_step = jstep

        def jstep(st, x, y):
            return jax.block_until_ready(one_step(st, x, y))
    same = lambda st: st  # noqa: E731
    return _Route(
        jstep, lambda st: parallel.place_state(mesh, st, cfg.fsdp_regex), same,
        lambda placed, state: placed, same,
        lambda x, y, b, seed, skip: _process_batches(mesh, x, y, b, seed, skip),
        parallel.to_host,
        lambda st, xs, b: parallel.map_batches(_predict_on(model.module, mesh), mesh,
                                               _variables(st), xs, b),
        loss)


def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def fit_network(run: Run) -> None:
    """Trains the strategy's trainable params through the network for ``steps`` steps,
    resuming from the newest checkpoint in ``run.state_dir``; sets ``run.variables`` to
    the result and every split's logits. Raises ``FloatingPointError`` (the last good
    checkpoint kept) when the loss or params become non-finite. Every process of a
    multi-process run calls it; each loads only its rows of every batch."""
    tx = optim.make(run.run_cfg, run.rules)
    _train(run, _route(run, run.rules, tx), tx, run.variables)


def fit_adapt(run: Run) -> None:
    """``fit_network`` with a target batch beside each source batch and the config's
    adaptation objective (``tljax.adapt_train``); a DANN discriminator trains beside the
    strategy's params, in the train state (so resumed with it), and is dropped from
    ``run.variables`` at the end: it is never exported. The target's labels are never
    read: ``inputs.target_train`` holds its inputs only."""
    cfg, model = run.cfg, run.model
    one = run.inputs.splits["train"][0][:1]
    dim = jax.eval_shape(lambda v, b: model.module.apply(v, b, method="features"),
                         run.variables, one).shape[-1]
    variables, rules = adapt_train.with_discriminator(run.variables, run.rules, dim,
                                                      DISCRIMINATOR_WIDTH, run.seed)
    tx = optim.make(run.run_cfg, rules)
    route = _route(run, rules, tx)
    step = compiled.reuse(
        _step_key("adapt_step", run, rules, cfg.adapt, cfg.adapt_weight, DISCRIMINATOR_WIDTH),
        lambda: adapt_train.make_step(model.module, rules, tx, cfg.adapt, cfg.adapt_weight,
                                      run.run_cfg.steps, run.frozen,
                                      COMPUTE_DTYPES[cfg.compute_dtype], DISCRIMINATOR_WIDTH))
    if parallel.one_step_at_a_time():  # CPU devices of several processes: see there
        one_step = step

        def step(st, images, labels):
            return jax.block_until_ready(one_step(st, images, labels))
    xt = run.inputs.target_train
    source_batches, source_loss = route.batches, route.post_update_loss

    def batches(xs, ys, b, seed, skip):
        # The target stream has its own order; its "labels" are zeros, never the target's.
        target = source_batches(xt, np.zeros(len(xt), np.int32), min(b, len(xt)),
                                seed + 10007, skip)
        for (images, labels), (target_images, _) in zip(source_batches(xs, ys, b, seed, skip),
                                                         target):
            yield (images, target_images), labels

    _train(run, dataclasses.replace(
        route, step=step, batches=batches,
        post_update_loss=lambda st, images, labels: source_loss(st, images[0], labels)),
        tx, variables)
    run.variables = adapt_train.without_discriminator(run.variables)


def _train(run: Run, route: _Route, tx, variables: dict) -> None:
    """Runs ``route``'s steps from ``variables`` for the run's ``steps`` (resuming from its
    newest checkpoint); sets ``run.variables``, every split's logits and the record's
    history."""
    cfg, run_cfg = run.cfg, run.run_cfg
    x, y = _train_subset(run)
    ckpts = checkpoint.RunCheckpoints(run.state_dir)
    try:
        host_state = train.init_state(variables, tx)
        state = route.place(host_state)
        start_step, restored = ckpts.restore_latest(route.like(state, host_state),
                                                    warn=run.log)
        if restored is not None:
            state = route.restored(restored)
            run.log(f"resuming from the checkpoint at step {start_step}")
            run.record["resumed_from_step"] = start_step
        del host_state, restored
        val_history = []

        def evaluate(st, step: int) -> None:  # a point of the validation curve
            xv, yv = run.inputs.splits["val"]
            metrics = train.classification_metrics(route.predict(st, xv, cfg.eval_batch_size), yv)
            val_history.append({"step": step, "loss": metrics["loss"],
                                "accuracy": metrics["accuracy"]})

        state, history, seconds = train.fit(
            route.step, state,
            route.batches(x, y, min(run_cfg.batch_size, len(y)), run.seed, start_step),
            run_cfg.steps, desc=f"seed {run.seed}", log_every=cfg.log_every,
            start_step=start_step, checkpoint=lambda st, i: ckpts.save(route.saved(st), i),
            checkpoint_every=cfg.checkpoint_every, post_update_loss=route.post_update_loss,
            evaluate=evaluate, evaluate_every=cfg.val_every)
    finally:
        ckpts.close()
    # With shots, train is scored on the examples trained on, not the whole split: cheaper
    # (a k-shot run of a text encoder would spend most of its time predicting the unused
    # pool) and what "train accuracy" means.
    scored = {**run.inputs.splits, "train": (x, y)}
    run.logits = {name: route.predict(state, xs, cfg.eval_batch_size)
                  for name, (xs, _) in scored.items()}
    run.labels["train"] = y
    run.variables = _variables(route.to_host(state))
    run.record.update(steps=run_cfg.steps, history=history)
    if val_history:
        run.record["val_history"] = val_history
    run.seconds += seconds


def split_labels(run: Run) -> dict:
    """Returns ``{split: labels}`` matching ``run.logits``: the split's own labels, or the
    trained-on subset's for train when ``shots`` cut it."""
    return {name: run.labels.get(name, ys) for name, (_, ys) in run.inputs.splits.items()}


def all_finite(logits: dict) -> str:
    """Returns '' if every split's logits are finite, else the first split that is not."""
    for name, value in logits.items():
        if not np.all(np.isfinite(value)):
            return name
    return ""
