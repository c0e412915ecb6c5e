"""One run: a config, a strategy and a seed -> trained, evaluated, one result record.

Setup is validated in full before any training (models, datasets, strategies, weights),
so a typo costs seconds, not a half-finished sweep. ``tljax.sweep`` runs the grid of
strategies x swept values x seeds on top of ``run_one``.
"""

import dataclasses
import os

import jax
import ml_collections
import numpy as np

from tljax import checkpoint, data, fit_paths, models, optim, parallel, probe, strategies, train
from tljax import weights
from tljax.errors import UserError
from tljax.models import zoo
from tljax.report.stats import encode_correct
from tljax.run_keys import OPTIM_KEYS

# per_block: BatchNorm trains (batch statistics, running stats updated) in every block that
# has a trainable param; eval: every BatchNorm runs on its running statistics throughout,
# the usual choice for fine-tuning with small batches.
BN_MODES = ("per_block", "eval")
COMPUTE_DTYPES = fit_paths.COMPUTE_DTYPES
PER_STRATEGY_KEYS = OPTIM_KEYS + ("bn_mode",)
SELECT_METRICS = ("accuracy", "macro_f1", "loss")


@dataclasses.dataclass
class Inputs:
    """Preprocessed model inputs: ``{split name: (float images, labels)}``."""

    num_classes: int
    splits: dict


def load_inputs(cfg, spec: str, prep) -> Inputs:
    """Returns every split of ``spec`` and each of ``cfg.shifted``'s test splits, preprocessed
    with ``prep``."""
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
    run_cfg = ml_collections.ConfigDict({k: cfg[k] for k in PER_STRATEGY_KEYS})
    for key, value in cfg.per_strategy.get(strategy, {}).items():
        if key == "sweep":  # the strategy's own grid (tljax.sweep)
            continue
        if key not in PER_STRATEGY_KEYS:
            raise UserError(f"unknown per_strategy key {key!r} for {strategy!r}; known: "
                            f"{', '.join(PER_STRATEGY_KEYS + ('sweep',))}")
        try:
            run_cfg[key] = value
        except (TypeError, ValueError, KeyError):
            raise UserError(f"bad value {value!r} for per_strategy.{strategy}.{key}; "
                            f"expected {type(cfg[key]).__name__}") from None
    if run_cfg.bn_mode not in BN_MODES:
        raise UserError(f"unknown bn_mode {run_cfg.bn_mode!r}; known: {', '.join(BN_MODES)}")
    return run_cfg


def strategy_rules(cfg, strategy: str):
    """Returns what ``strategies.labels`` takes: a named rule list from the config, or the spec."""
    if strategy in cfg.rules:
        return [tuple(item) for item in cfg.rules[strategy]]
    return strategy


def create_model(cfg, num_classes: int) -> models.Model:
    """Returns the config's model; pretrained weights by name bring their own preprocessing."""
    if cfg.weights in zoo.names():
        return zoo.create(cfg.weights, num_classes, cfg.image_size, cfg.channels)
    return models.create(cfg.model, num_classes, cfg.image_size, cfg.channels)


def resolve_weights(cfg) -> str:
    """Returns the weights file or checkpoint path of ``cfg.weights`` ('' for random init)."""
    return zoo.path(cfg.weights) if cfg.weights in zoo.names() else cfg.weights


def validate(cfg, only=None) -> models.Model:
    """Checks every name and setting in ``cfg`` without training; returns the target model.

    ``only`` limits the strategy checks to those strategies (a sweep validates each
    strategy's effective config on its own). Raises ``UserError`` naming the first bad
    value and the valid ones.
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
    clash = sorted(set(cfg.shifted) & {"train", "val", "test"})
    if clash:
        raise UserError(f"shifted split name {clash[0]!r} is taken by the target's own split; "
                        "name it after its shift, e.g. 'noise3'")
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
    for key in ("l2sp_alpha", "l2sp_beta", "select_seeds"):
        if cfg[key] < 0:
            raise UserError(f"{key} must be >= 0; got {cfg[key]}")
    if cfg.select_metric not in SELECT_METRICS:
        raise UserError(f"unknown select_metric {cfg.select_metric!r}; known: "
                        f"{', '.join(SELECT_METRICS)}")
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
    if model.preprocessing.kind != "image":  # tljax.data holds image datasets only
        raise UserError(f"model {cfg.model!r} takes {model.preprocessing.kind} (token ids); dataset "
                        f"{cfg.dataset!r} holds images; image models: "
                        f"{', '.join(models.names('image'))}")
    shapes = _param_shapes(model)
    for strategy in (cfg.strategies if only is None else only):
        strategies.labels(strategy_rules(cfg, strategy), shapes["params"], model.blocks,
                          model=model.name)
        parallel.check_batch(strategy_config(cfg, strategy).batch_size,
                             jax.device_count() * cfg.accum_steps)
    return model


_SHAPES = {}


def _param_shapes(model: models.Model) -> dict:
    """Returns the model's variable shapes (``jax.eval_shape``), memoised: a sweep
    validates one effective config per grid point."""
    key = (model.name, repr(model.module))
    if key not in _SHAPES:
        _SHAPES[key] = jax.eval_shape(model.init, jax.random.key(0))
    return _SHAPES[key]


def training_path(strategy: str) -> str:
    """Returns how ``strategy`` trains: ``probe``, ``network`` or ``probe+network``."""
    return fit_paths.training_path(strategy)


def check_train_batch(cfg, strategy: str, inputs: Inputs) -> None:
    """Raises ``UserError`` unless the batch ``strategy`` will really train with fits its
    training set and divides over the devices and micro-batches (k-shot runs train with
    ``min(batch_size, shots x classes)``, which may not)."""
    if training_path(strategy) == "probe":
        return
    batch_size = strategy_config(cfg, strategy).batch_size
    n_train = (cfg.shots * inputs.num_classes if cfg.shots
               else len(inputs.splits["train"][1]))
    if batch_size > n_train and not cfg.shots:
        raise UserError(f"batch_size {batch_size} is larger than the training split of "
                        f"{cfg.dataset!r} ({n_train} examples); valid: 1..{n_train}")
    used = min(batch_size, n_train)
    if cfg.shots and used < batch_size:
        divisor = jax.device_count() * cfg.accum_steps
        if used % divisor:
            raise UserError(
                f"{strategy}: shots={cfg.shots} x {inputs.num_classes} classes gives a "
                f"batch of {used}, which does not divide by {jax.device_count()} devices "
                f"x accum_steps {cfg.accum_steps}; choose shots so that shots x classes "
                f"is a multiple of {divisor}, or set accum_steps=1")


def run_one(cfg, model: models.Model, inputs: Inputs, weights_path: str, strategy: str,
            seed: int, workdir: str, identity: dict, log=print) -> dict:
    """Trains and evaluates one (strategy, seed) of the effective config ``cfg``; returns its
    result record.

    The stages come from ``fit_paths.STAGES``: ``linear_probe`` fits the head on cached
    features, ``lp_ft`` fine-tunes from that head, every other strategy trains through the
    network. ``identity`` holds ``run_hash``, ``sweep_hash`` and ``hparams`` (the swept
    values); the state and the final checkpoint are named by ``run_hash``, so no other run
    ever overwrites them.
    """
    run_cfg = strategy_config(cfg, strategy)
    variables = model.init(jax.random.key(seed))
    if weights_path:
        variables = weights.load(weights_path, variables, model.torch_names)
    rules = strategies.labels(strategy_rules(cfg, strategy), variables["params"], model.blocks)
    trainable, total = strategies.count(variables["params"], rules)
    frozen = strategies.frozen_blocks(rules, model.blocks)
    if run_cfg.bn_mode == "eval":
        frozen = model.block_names
    path = training_path(strategy)
    record = {
        "experiment": cfg.experiment, "model": cfg.model, "weights": cfg.weights or weights_path,
        "dataset": cfg.dataset, "strategy": strategy, "seed": seed, **identity,
        "config_hash": identity["run_hash"], "path": path,
        "trainable_params": trainable, "total_params": total, "shots": cfg.shots,
        "frozen_blocks": list(frozen), "bn_mode": run_cfg.bn_mode,
        "optim": run_cfg.to_dict(), "devices": jax.device_count(), "parallel": cfg.parallel,
        "compute_dtype": cfg.compute_dtype, "accum_steps": cfg.accum_steps,
        "shifted": list(cfg.shifted), "platform": jax.default_backend(),
    }
    safe = strategy.replace(":", "_").replace("+", "_").replace("/", "_")
    run = fit_paths.Run(cfg, run_cfg, model, inputs, variables, rules, tuple(frozen), seed,
                        os.path.join(workdir, "state", identity["run_hash"]),
                        log=lambda msg: log(f"{strategy} seed {seed}: {msg}"))
    try:
        for stage in fit_paths.STAGES[path]:
            stage(run)
        bad = fit_paths.all_finite(run.logits)
        if bad:
            raise FloatingPointError(f"the final model gives non-finite logits on {bad!r}")
    except FloatingPointError as e:
        log(f"{strategy} seed {seed}: {e}; stopped, the last good checkpoint (if any) is "
            f"kept in {run.state_dir}")
        return {**record, **run.record, "status": "failed", "error": str(e), "metrics": {},
                "train_seconds": round(run.seconds, 3)}
    metrics = {name: train.classification_metrics(run.logits[name], ys)
               for name, (_, ys) in inputs.splits.items()}
    correct = {name: encode_correct(np.argmax(run.logits[name], -1) == ys)
               for name, (_, ys) in inputs.splits.items() if name not in ("train", "val")}
    ckpt = checkpoint.save_variables(
        os.path.join(workdir, "checkpoints", f"{safe}-seed{seed}-{identity['run_hash']}"),
        run.variables)
    if os.path.isdir(run.state_dir):
        record["state_dir"] = run.state_dir
    return {**record, **run.record, "train_seconds": round(run.seconds, 3),
            "metrics": metrics, "correct": correct, "checkpoint": ckpt, "status": "ok"}


def probe_sweep(cfg, shots=(0,), seeds=(0,)) -> list:
    """Returns one row per (shots, seed): the cached-feature probe of ``cfg``'s model and
    weights on ``cfg.dataset`` with ``cfg.probe_solver`` (shots 0 = the whole train split).
    """
    validate(cfg, only=())
    target = data.load(cfg.dataset, data_dir=cfg.data_dir or None, download=cfg.download)
    model = create_model(cfg, target.num_classes)
    inputs = load_inputs(cfg, cfg.dataset, model.preprocessing)
    variables = model.init(jax.random.key(0))
    if resolve_weights(cfg):
        variables = weights.load(resolve_weights(cfg), variables, model.torch_names)
    rows = []
    for k in shots:
        for seed in seeds:
            with cfg.unlocked():
                cfg.shots = int(k)
            run = fit_paths.Run(cfg, None, model, inputs,
                                {c: dict(v) for c, v in variables.items()}, {}, (), int(seed),
                                state_dir="")
            fit_paths.fit_probe(run)
            metrics = {name: train.classification_metrics(run.logits[name], ys)
                       for name, (_, ys) in inputs.splits.items()}
            rows.append({"shots": int(k), "seed": int(seed), "metrics": metrics,
                         **run.record["probe"]})
    return rows


def check_writable(workdir: str) -> None:
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


def enable_compilation_cache() -> None:
    """Keeps compiled steps on disk: the same strategy under another seed (or run) then
    skips XLA compilation, which costs seconds per step function on CPU."""
    path = os.environ.get("TLJAX_COMPILATION_CACHE",
                          os.path.expanduser("~/.cache/tljax/jax_compilation_cache"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
