"""Config -> runs: every strategy x seed trained and evaluated, one JSON line each.

Setup is validated in full before any training (models, datasets, strategies, weights),
so a typo costs seconds, not a half-finished sweep.
"""

import dataclasses
import json
import os
import platform
import shutil
import time

import hashlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import tljax
from tljax import checkpoint, data, models, optim, parallel, probe, strategies, train, weights
from tljax.errors import UserError
from tljax.models import zoo

# per_block: BatchNorm trains (batch statistics, running stats updated) in every block that
# has a trainable param; eval: every BatchNorm runs on its running statistics throughout,
# the usual choice for fine-tuning with small batches.
BN_MODES = ("per_block", "eval")
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def config_hash(cfg) -> str:
    """Returns a hash of every setting but the strategy and seed lists: runs with the same
    hash, strategy and seed are the same run (finished ones are skipped, unfinished ones
    resume)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("strategies", "seeds")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()
                          ).hexdigest()[:12]

_OPTIM_KEYS = ("steps", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
               "grad_clip", "warmup_steps")
_PER_STRATEGY_KEYS = _OPTIM_KEYS + ("bn_mode",)


@dataclasses.dataclass
class Inputs:
    """Preprocessed model inputs: ``{split name: (float images, labels)}``."""

    num_classes: int
    splits: dict


def _load_inputs(cfg, spec: str, prep) -> Inputs:
    ds = data.load(spec, data_dir=cfg.data_dir or None, download=cfg.download)
    splits = {}
    for name, split in ds.splits.items():
        if len(split.labels) == 0:
            raise UserError(f"split {name!r} of dataset {spec!r} is empty")
        splits[name] = (data.preprocess(split.images, prep), split.labels)
    for name, shifted_spec in cfg.shifted.items():
        shifted = data.load(shifted_spec, data_dir=cfg.data_dir or None, download=cfg.download)
        if shifted.num_classes != ds.num_classes:
            raise UserError(f"shifted split {name!r} ({shifted_spec}) has {shifted.num_classes} "
                            f"classes; the target dataset {spec!r} has {ds.num_classes}")
        test = shifted.splits["test"]
        splits[name] = (data.preprocess(test.images, prep), test.labels)
    return Inputs(ds.num_classes, splits)


def strategy_config(cfg, strategy: str) -> ml_collections.ConfigDict:
    """Returns the optimisation settings (and ``bn_mode``) for ``strategy``: the config's,
    then its ``per_strategy`` overrides."""
    run_cfg = ml_collections.ConfigDict({k: cfg[k] for k in _PER_STRATEGY_KEYS})
    for key, value in cfg.per_strategy.get(strategy, {}).items():
        if key not in _PER_STRATEGY_KEYS:
            raise UserError(f"unknown per_strategy key {key!r} for {strategy!r}; known: "
                            f"{', '.join(_PER_STRATEGY_KEYS)}")
        run_cfg[key] = value
    if run_cfg.bn_mode not in BN_MODES:
        raise UserError(f"unknown bn_mode {run_cfg.bn_mode!r}; known: {', '.join(BN_MODES)}")
    return run_cfg


def _strategy_rules(cfg, strategy: str):
    """Returns what ``strategies.labels`` takes: a named rule list from the config, or the spec."""
    if strategy in cfg.rules:
        return [tuple(item) for item in cfg.rules[strategy]]
    return strategy


def create_model(cfg, num_classes: int) -> models.Model:
    """Returns the config's model; pretrained weights by name bring their own preprocessing."""
    if cfg.weights in zoo.names():
        return zoo.create(cfg.weights, num_classes, cfg.image_size)
    return models.create(cfg.model, num_classes, cfg.image_size, cfg.channels)


def resolve_weights(cfg) -> str:
    """Returns the weights file or checkpoint path of ``cfg.weights`` ('' for random init)."""
    return zoo.path(cfg.weights) if cfg.weights in zoo.names() else cfg.weights


def validate(cfg) -> models.Model:
    """Checks every name and setting in ``cfg`` without training; returns the target model.

    Raises ``UserError`` naming the first bad value and the valid ones.
    """
    if cfg.model not in models.names():
        raise UserError(f"unknown model {cfg.model!r}; known: {', '.join(models.names())}")
    if not cfg.strategies:
        raise UserError("no strategies to run; set strategies, e.g. ['linear_probe', 'full_ft']")
    if not cfg.seeds:
        raise UserError("no seeds to run; set seeds, e.g. [0, 1, 2]")
    for key in ("steps", "batch_size", "eval_batch_size", "accum_steps"):
        if int(cfg[key]) < 1:
            raise UserError(f"{key} must be >= 1; got {cfg[key]}")
    if cfg.optimizer not in optim.OPTIMIZERS:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; known: "
                        f"{', '.join(optim.OPTIMIZERS)}")
    for spec in [cfg.dataset] + list(cfg.shifted.values()) + (
            [cfg.pretrain.dataset] if cfg.pretrain.dataset else []):
        data.check_known(data.parse_spec(spec)[0])
    if cfg.probe_solver not in probe.SOLVERS:
        raise UserError(f"unknown probe_solver {cfg.probe_solver!r}; known: "
                        f"{', '.join(probe.SOLVERS)}")
    parallel.check_mode(cfg.parallel)
    if cfg.compute_dtype not in COMPUTE_DTYPES:
        raise UserError(f"unknown compute_dtype {cfg.compute_dtype!r}; known: "
                        f"{', '.join(COMPUTE_DTYPES)}")
    if cfg.shots < 0:
        raise UserError(f"shots must be >= 0 (0 = the whole train split); got {cfg.shots}")
    if cfg.weights in zoo.names():
        entry = zoo.entry(cfg.weights)
        if entry.model != cfg.model:
            raise UserError(f"weights {cfg.weights!r} are for model {entry.model!r}, not "
                            f"{cfg.model!r}; set model={entry.model}")
        zoo.path(cfg.weights)  # names the package to install when it is missing
    elif cfg.weights and not os.path.exists(cfg.weights):
        raise UserError(f"weights not found: {cfg.weights!r}; known pretrained names: "
                        f"{', '.join(zoo.names())}, or a file/checkpoint path")
    model = create_model(cfg, 2)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    for strategy in cfg.strategies:
        strategies.labels(_strategy_rules(cfg, strategy), shapes["params"], model.blocks)
        parallel.check_batch(strategy_config(cfg, strategy).batch_size,
                             jax.device_count() * cfg.accum_steps)
    return model


def pretrain_source(cfg, workdir: str, log=print) -> str:
    """Trains the source model on ``cfg.pretrain.dataset`` (full fine-tuning from random init)
    unless a checkpoint of the same settings exists; returns its orbax checkpoint path.
    """
    p = cfg.pretrain
    key = f"{cfg.model}-{cfg.image_size}-{cfg.channels}-{p.dataset}-{p.steps}-{p.lr}-" \
          f"{p.batch_size}-{p.seed}".replace(":", "_").replace(",", "_")
    path = os.path.join(os.path.abspath(workdir), "pretrained", key)
    if os.path.isdir(path):
        log(f"source model: reusing {path}")
        return path
    ds = data.load(p.dataset, data_dir=cfg.data_dir or None, download=cfg.download)
    model = models.create(cfg.model, ds.num_classes, cfg.image_size, cfg.channels)
    x = data.preprocess(ds.splits["train"].images, model.preprocessing)
    y = ds.splits["train"].labels
    variables = model.init(jax.random.key(p.seed))
    rules = strategies.labels("full_ft", variables["params"], model.blocks)
    run_cfg = ml_collections.ConfigDict({k: cfg[k] for k in _OPTIM_KEYS})
    run_cfg.update(steps=p.steps, lr=p.lr, batch_size=p.batch_size)
    tx = optim.make(run_cfg, rules)
    step = train.make_step(model.module, rules, tx)
    state, _, seconds = train.fit(step, train.init_state(variables, tx),
                                  data.batches(x, y, p.batch_size, p.seed), p.steps,
                                  desc=f"pretrain on {p.dataset}")
    final = {"params": state.params, "batch_stats": state.batch_stats}
    xt = data.preprocess(ds.splits["test"].images, model.preprocessing)
    metrics = train.evaluate(train.make_predict(model.module), final, xt,
                             ds.splits["test"].labels, cfg.eval_batch_size)
    checkpoint.save_variables(path, final)
    log(f"source model: {cfg.model} trained on {p.dataset} for {p.steps} steps in "
        f"{seconds:.1f}s, test accuracy {metrics['accuracy']:.3f}; saved to {path}")
    return path


def _base(strategy: str) -> str:
    return strategy.partition(":")[0]


def _probe(cfg, model, variables, inputs: Inputs, seed: int) -> tuple:
    """Fits the cached-feature probe; returns ``(ProbeResult, features, probe record)``."""
    start = time.perf_counter()
    cache = {"": None, "none": ""}.get(cfg.feature_cache, cfg.feature_cache)
    features, hits = {}, []
    for name, (xs, _) in inputs.splits.items():
        features[name], hit = probe.extract_features(
            model.module, variables, xs, cfg.eval_batch_size, cache,
            key=f"{model.name}|{cfg.dataset}|{name}")
        hits.append(hit)
    extract_seconds = time.perf_counter() - start
    xt, yt = features["train"], inputs.splits["train"][1]
    if cfg.shots:
        idx = data.k_shot_indices(yt, cfg.shots, seed)
        xt, yt = xt[idx], yt[idx]
    result = probe.fit_probe((xt, yt), (features["val"], inputs.splits["val"][1]),
                             inputs.num_classes, cfg.probe_solver, tuple(cfg.probe_l2_grid),
                             standardize=cfg.probe_standardize)
    info = {"solver": result.solver, "l2": result.l2, "standardize": cfg.probe_standardize,
            "sweep": result.sweep,
            "extract_seconds": round(extract_seconds, 3),
            "solve_seconds": round(result.seconds, 3), "feature_cache_hit": all(hits),
            "train_examples": int(len(yt))}
    return result, features, info


def _safe(strategy: str) -> str:
    return strategy.replace(":", "_").replace("+", "_").replace("/", "_")


def _parallel_step(cfg, model, rules, tx, frozen, state) -> tuple:
    """Returns ``(step(state, x, y), placed state, unplace)`` for ``cfg.parallel``.

    ``unplace`` turns a placed state back into one host-side copy (for checkpoints).
    """
    n = jax.device_count()
    dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    if cfg.parallel == "pmap":
        pstep = parallel.pmap_step(train.make_step(
            model.module, rules, tx, frozen, dtype, cfg.accum_steps, axis_name="data",
            jit=False), n)

        def step(st, x, y):
            st, metrics = pstep(st, *parallel.split_batch(n, x, y))
            return st, jax.tree.map(lambda m: m[0], metrics)

        return step, parallel.replicate(state, n), parallel.unreplicate
    mesh = parallel.make_mesh(n)
    jstep = train.make_step(model.module, rules, tx, frozen, dtype, cfg.accum_steps)
    placed = parallel.place_state(mesh, state, cfg.fsdp_regex)
    return (lambda st, x, y: jstep(st, *parallel.shard_batch(mesh, x, y)), placed,
            lambda st: jax.device_get(st))


def run_one(cfg, model: models.Model, inputs: Inputs, weights_path: str, strategy: str,
            seed: int, workdir: str, log=print) -> dict:
    """Trains and evaluates one (strategy, seed); returns its result record.

    ``linear_probe`` fits the head on cached features with ``cfg.probe_solver``;
    ``lp_ft`` starts full fine-tuning from that head; every other strategy trains through
    the network.
    """
    run_cfg = strategy_config(cfg, strategy)
    variables = model.init(jax.random.key(seed))
    if weights_path:
        variables = weights.load(weights_path, variables, model.torch_names)
    rules = strategies.labels(_strategy_rules(cfg, strategy), variables["params"], model.blocks)
    trainable, total = strategies.count(variables["params"], rules)
    frozen = strategies.frozen_blocks(rules, model.blocks)
    if run_cfg.bn_mode == "eval":
        frozen = model.block_names
    record = {
        "experiment": cfg.experiment, "model": cfg.model, "weights": cfg.weights or weights_path,
        "dataset": cfg.dataset, "strategy": strategy, "seed": seed,
        "trainable_params": trainable, "total_params": total, "shots": cfg.shots,
        "frozen_blocks": list(frozen), "bn_mode": run_cfg.bn_mode,
        "optim": run_cfg.to_dict(), "devices": jax.device_count(), "parallel": cfg.parallel,
        "compute_dtype": cfg.compute_dtype, "accum_steps": cfg.accum_steps,
        "config_hash": config_hash(cfg),
        "platform": jax.default_backend(),
    }
    seconds = 0.0
    if _base(strategy) in ("linear_probe", "lp_ft"):
        result, features, record["probe"] = _probe(cfg, model, variables, inputs, seed)
        variables["params"]["head"] = {"kernel": result.kernel, "bias": result.bias}
        seconds = record["probe"]["extract_seconds"] + record["probe"]["solve_seconds"]
    if _base(strategy) == "linear_probe":
        final = variables
        metrics = {name: train.classification_metrics(result.logits(features[name]), ys)
                   for name, (_, ys) in inputs.splits.items()}
        chosen = next(r for r in record["probe"]["sweep"] if r["l2"] == result.l2)
        record["steps"] = chosen["iterations"]  # L-BFGS iterations at the chosen L2
    else:
        tx = optim.make(run_cfg, rules)
        x, y = inputs.splits["train"]
        if cfg.shots:
            idx = data.k_shot_indices(y, cfg.shots, seed)
            x, y = x[idx], y[idx]
        run_key = f"{config_hash(cfg)}-{_safe(strategy)}-seed{seed}"
        ckpts = checkpoint.RunCheckpoints(os.path.join(workdir, "state", run_key))
        state = train.init_state(variables, tx)
        start_step, restored = ckpts.restore_latest(state, warn=log)
        if restored is not None:
            state = restored
            log(f"{strategy} seed {seed}: resuming from the checkpoint at step {start_step}")
            record["resumed_from_step"] = start_step
        step, state, unplace = _parallel_step(cfg, model, rules, tx, frozen, state)
        try:
            state, history, fit_seconds = train.fit(
                step, state,
                data.batches(x, y, min(run_cfg.batch_size, len(y)), seed, skip=start_step),
                run_cfg.steps, desc=f"{strategy} seed {seed}", log_every=cfg.log_every,
                start_step=start_step, checkpoint=lambda st, i: ckpts.save(unplace(st), i),
                checkpoint_every=cfg.checkpoint_every)
        except FloatingPointError as e:
            log(f"{strategy} seed {seed}: {e}; stopped, the last good checkpoint is kept in "
                f"{ckpts.directory}")
            ckpts.close()
            return {**record, "status": "failed", "error": str(e), "metrics": {}}
        ckpts.close()
        state = unplace(state)
        record["state_dir"] = ckpts.directory
        seconds += fit_seconds
        final = {"params": state.params, "batch_stats": state.batch_stats}
        predict = train.make_predict(model.module)
        metrics = {name: train.evaluate(predict, final, xs, ys, cfg.eval_batch_size)
                   for name, (xs, ys) in inputs.splits.items()}
        record.update(steps=run_cfg.steps, history=history)
    ckpt = checkpoint.save_variables(
        os.path.join(workdir, "checkpoints", f"{_safe(strategy)}-seed{seed}"), final)
    return {**record, "train_seconds": round(seconds, 3), "metrics": metrics,
            "checkpoint": ckpt, "status": "ok"}


def probe_sweep(cfg, shots=(0,), seeds=(0,)) -> list:
    """Returns one row per (shots, seed): the cached-feature probe of ``cfg``'s model and
    weights on ``cfg.dataset`` with ``cfg.probe_solver`` (shots 0 = the whole train split).
    """
    validate(cfg)
    target = data.load(cfg.dataset, data_dir=cfg.data_dir or None, download=cfg.download)
    model = create_model(cfg, target.num_classes)
    inputs = _load_inputs(cfg, cfg.dataset, model.preprocessing)
    variables = model.init(jax.random.key(0))
    if resolve_weights(cfg):
        variables = weights.load(resolve_weights(cfg), variables, model.torch_names)
    rows = []
    for k in shots:
        for seed in seeds:
            with cfg.unlocked():
                cfg.shots = int(k)
            result, features, info = _probe(cfg, model, variables, inputs, int(seed))
            metrics = {name: train.classification_metrics(result.logits(features[name]), ys)
                       for name, (_, ys) in inputs.splits.items()}
            rows.append({"shots": int(k), "seed": int(seed), "metrics": metrics, **info})
    return rows


def run(cfg, workdir: str, log=print) -> list:
    """Runs every strategy x seed of ``cfg``; appends each record to ``workdir/results.jsonl``
    as it finishes and returns the records of this call.
    """
    validate(cfg)
    _enable_compilation_cache()
    _check_writable(workdir)
    target = data.load(cfg.dataset, data_dir=cfg.data_dir or None, download=cfg.download)
    model = create_model(cfg, target.num_classes)
    inputs = _load_inputs(cfg, cfg.dataset, model.preprocessing)
    n_train = cfg.shots * inputs.num_classes if cfg.shots else len(inputs.splits["train"][1])
    for strategy in cfg.strategies:
        batch_size = strategy_config(cfg, strategy).batch_size
        if batch_size > n_train and not cfg.shots:
            raise UserError(f"batch_size {batch_size} is larger than the training split of "
                            f"{cfg.dataset!r} ({n_train} examples); valid: 1..{n_train}")
    weights_path = resolve_weights(cfg)
    if not weights_path and cfg.pretrain.dataset:
        weights_path = pretrain_source(cfg, workdir, log)
    records = []
    results = os.path.join(workdir, "results.jsonl")
    done = set()
    if os.path.isfile(results):
        from tljax.report import read_results

        done = {(r["strategy"], r["seed"]) for r in read_results(results)
                if r.get("status") == "ok" and r.get("config_hash") == config_hash(cfg)}
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            if (strategy, int(seed)) in done:
                log(f"{strategy} seed {seed}: finished earlier in {workdir}; skipped")
                continue
            start = time.time()
            record = run_one(cfg, model, inputs, weights_path, strategy, int(seed), workdir, log)
            record.update(time=time.strftime("%Y-%m-%dT%H:%M:%S"), tljax=tljax.__version__,
                          jax=jax.__version__, host=platform.node(),
                          wall_seconds=round(time.time() - start, 3))
            with open(results, "a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")
            if record["status"] == "ok" and record.get("state_dir"):
                shutil.rmtree(record["state_dir"], ignore_errors=True)  # the run is recorded
            test = record["metrics"].get("test", {}).get("accuracy", float("nan"))
            log(f"{strategy:>14} seed {seed}: test accuracy {test:.3f}, "
                f"{record['trainable_params']:,}/{record['total_params']:,} trainable, "
                f"{record.get('train_seconds', 0):.1f}s [{record['status']}]")
            records.append(record)
    return records


def _check_writable(workdir: str) -> None:
    """Raises ``UserError`` unless ``workdir`` can be created and written (root included:
    a real write is tried, not just the permission bits)."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe_file = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe_file, "w") as f:
            f.write("ok")
        os.remove(probe_file)
    except OSError as e:
        raise UserError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None


def _enable_compilation_cache() -> None:
    """Keeps compiled steps on disk: the same strategy under another seed (or run) then
    skips XLA compilation, which costs seconds per step function on CPU."""
    path = os.environ.get("TLJAX_COMPILATION_CACHE",
                          os.path.expanduser("~/.cache/tljax/jax_compilation_cache"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
