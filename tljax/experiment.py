"""One run: a config, a strategy and a seed -> trained, evaluated, one result record.

Setup is validated in full before any training (models, datasets, strategies, weights),
so a typo costs seconds, not a half-finished sweep. ``tljax.sweep`` runs the grid of
strategies x swept values x seeds on top of ``run_one``.
"""

import os

import jax
import ml_collections
import numpy as np

from tljax import checkpoint, data, fit_paths, models, optim, parallel, probe, strategies, train
from tljax import loading, weights
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
FINAL_FITS = ("", "train+val")  # tljax.sweep: refit the selected point on train and val
DEFAULT_MODEL = "cnn"  # what an empty ``model`` runs when the weights name no model


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


def published_numbers(cfg, strategy: str) -> dict:
    """Returns ``{"published": {split: accuracy}, "published_source": ...}`` for the record
    of ``strategy`` (the paper's numbers from ``cfg.published``), or {} when it has none."""
    value = cfg.published.get(strategy)
    if value is None:
        return {}
    numbers = {"test": value} if isinstance(value, (int, float)) else dict(value)
    return {"published": {k: float(v) for k, v in numbers.items()},
            "published_source": cfg.published_source}


def with_published(cfg, records: list) -> list:
    """Returns ``records`` with the paper's numbers of ``cfg`` (as it is now) on each record
    of its experiment: numbers filled in or corrected after the runs finished (a rerun
    skips them, and ``published`` never changes a run's identity) reach the report."""
    out = []
    for r in records:
        if r.get("experiment") == cfg.experiment:
            r = {k: v for k, v in r.items() if k not in ("published", "published_source")}
            r.update(published_numbers(cfg, r.get("strategy", "")))
        out.append(r)
    return out


def check_published(cfg) -> None:
    """Raises ``UserError`` unless ``cfg.published`` gives accuracies in [0, 1] for test or a
    shifted split. A strategy not run is allowed (``--set strategies=...`` may drop one)."""
    splits = ["test", *cfg.shifted]
    for strategy, value in cfg.published.items():
        numbers = {"test": value} if isinstance(value, (int, float)) else value
        for split, number in dict(numbers).items():
            if split not in splits:
                raise UserError(f"published.{strategy} names split {split!r}; known: "
                                f"{', '.join(splits)}")
            if not isinstance(number, (int, float)) or not 0 <= number <= 1:
                raise UserError(f"published.{strategy}.{split} = {number!r}; give an accuracy "
                                "in [0, 1] (a paper's 91.8% is 0.918)")


def strategy_rules(cfg, strategy: str):
    """Returns what ``strategies.labels`` takes: a named rule list from the config, or the spec."""
    if strategy in cfg.rules:
        return [tuple(item) for item in cfg.rules[strategy]]
    return strategy


def create_model(cfg, num_classes: int) -> models.Model:
    """Returns the config's model; pretrained weights by name bring their own preprocessing,
    and a Hugging Face model directory its own architecture (config.json) and preprocessing."""
    if cfg.weights in zoo.names():
        return zoo.create(cfg.weights, num_classes, cfg.image_size, cfg.channels)
    if models.hub.is_model_dir(cfg.weights):
        return models.hub.create(cfg.weights, num_classes, cfg.image_size, cfg.channels,
                                 model=cfg.model)
    return models.create(model_name(cfg), num_classes, cfg.image_size, cfg.channels)


def model_name(cfg) -> str:
    """Returns the model ``cfg`` runs: ``cfg.model`` if set, else the weights' own (a
    pretrained name's model, a model directory's config.json ``model_type``), else ``cnn``."""
    if cfg.model:
        return cfg.model
    if cfg.weights in zoo.names():
        return zoo.entry(cfg.weights).model
    if models.hub.is_model_dir(cfg.weights):
        return models.hub.model_type(cfg.weights)
    return DEFAULT_MODEL


def resolve_weights(cfg) -> str:
    """Returns the weights file or checkpoint path of ``cfg.weights`` ('' for random init)."""
    return zoo.resolve(cfg.weights)


def validate(cfg, only=None, needs: list | None = None) -> models.Model:
    """Checks every name and setting in ``cfg`` without training; returns the target model.

    ``only`` limits the strategy checks to those strategies (a sweep validates each
    strategy's effective config on its own). Raises ``UserError`` naming the first bad
    value and the valid ones. With a ``needs`` list (``tljax run --dry-run``), files this
    machine lacks (a weights file or package, a dataset path) are appended to it as one
    line each instead of raising. An empty ``model`` is filled in (``model_name``), so every
    later use of the config sees the model that runs.
    """
    cfg.model = model_name(cfg)
    if cfg.model in models.hub.MODEL_TYPES and not models.hub.is_model_dir(cfg.weights):
        raise UserError(f"model {cfg.model!r} takes its sizes from a model directory's "
                        f"config.json; set weights=DIR, or a model of fixed sizes: "
                        f"{', '.join(models.names())}")
    if cfg.model not in models.names() and not models.hub.is_model_dir(cfg.weights):
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
    if cfg.keep_head and not (cfg.weights or cfg.pretrain.dataset):
        raise UserError("keep_head=True needs a source model with a head: set weights or "
                        "pretrain.dataset (now both empty: random init)")
    clash = sorted(set(cfg.shifted) & {"train", "val", "test"})
    if clash:
        raise UserError(f"shifted split name {clash[0]!r} is taken by the target's own split; "
                        "name it after its shift, e.g. 'noise3'")
    for spec in [cfg.dataset] + list(cfg.shifted.values()) + (
            [cfg.pretrain.dataset] + list(cfg.pretrain.mix) if cfg.pretrain.dataset else []):
        name = data.parse_spec(spec)[0]
        path_like = "/" in name or (data.kind(name) == "text" and name not in data.TEXT_BUILTIN)
        if needs is not None and path_like and not os.path.exists(name):
            needs.append(f"dataset {spec!r}: the path {name!r} does not exist here")
            continue
        data.check_known(name)
    check_published(cfg)
    if cfg.final_fit not in FINAL_FITS:
        raise UserError(f"unknown final_fit {cfg.final_fit!r}; known: "
                        f"{', '.join(map(repr, FINAL_FITS))}")
    odd = sorted(set(cfg.splits) - set(data.datasets.SPLITS))
    if odd or (cfg.splits and len(cfg.splits) != len(data.datasets.SPLITS)):
        raise UserError(f"splits needs exactly the keys {', '.join(data.datasets.SPLITS)} "
                        f"(the dataset's split string for each); got {', '.join(cfg.splits)}")
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
        try:
            zoo.path(cfg.weights)  # names the package to install when it is missing
        except UserError as e:
            if needs is None:
                raise
            needs.append(f"weights {cfg.weights!r}: {e}")
    elif (cfg.weights and not os.path.exists(cfg.weights) and needs is not None
          and any(c in cfg.weights for c in "./" + os.sep)):  # a bare word: a mistyped name
        needs.append(f"weights {cfg.weights!r}: no such file or checkpoint here")
    elif cfg.weights and not os.path.exists(cfg.weights):
        raise UserError(f"weights not found: {cfg.weights!r}; known pretrained names: "
                        f"{', '.join(zoo.names())}, or a file, checkpoint or model directory "
                        "path")
    model = create_model(cfg, 2)
    _check_input_kind(cfg, model)
    shapes = _param_shapes(model)
    for strategy in (cfg.strategies if only is None else only):
        rules = strategies.labels(strategy_rules(cfg, strategy), shapes["params"], model.blocks,
                                  model=model.name)
        if not (cfg.weights or cfg.pretrain.dataset) and strategies.reinit_paths(rules):
            # Re-initialising a random init only draws it again: no copy/re-init contrast.
            raise UserError(f"strategy {strategy!r} re-initialises params of a source model, "
                            "but there is none (weights and pretrain.dataset are both empty: "
                            "random init); set one")
        parallel.check_batch(strategy_config(cfg, strategy).batch_size,
                             jax.device_count() * cfg.accum_steps)
    return model


def _check_input_kind(cfg, model: models.Model) -> None:
    """Raises ``UserError`` unless every dataset of ``cfg`` holds what the model takes
    (images or text), and the text settings fit the model."""
    want = model.preprocessing.kind
    specs = [cfg.dataset] + list(cfg.shifted.values()) + (
        [cfg.pretrain.dataset] if cfg.pretrain.dataset else [])
    for spec in specs:
        have = data.kind(data.parse_spec(spec)[0])
        if have != want:
            words = {"image": "images", "text": "text (token ids)"}
            raise UserError(f"model {cfg.model!r} takes {words[want]}; dataset {spec!r} holds "
                            f"{words[have].split()[0]}; {want} models: "
                            f"{', '.join(models.names(want))}")
    if want == "text":
        if cfg.pretrain.dataset:
            raise UserError(f"pretrain.dataset {cfg.pretrain.dataset!r}: a source model is "
                            "trained for image models only; set weights instead")
        limit = model.module.backbone.cfg.max_position_embeddings
        if not 1 <= cfg.max_length <= limit:
            raise UserError(f"max_length {cfg.max_length} does not fit model {cfg.model!r}; "
                            f"valid: 1..{limit}")
        for key in ("text_column", "label_column"):
            if not cfg[key]:
                raise UserError(f"{key} is empty; name the file's column, e.g. "
                                f"{key}={key.split('_')[0]}")
        from tljax import text

        try:
            tokenizer = text.find_tokenizer(cfg.tokenizer, resolve_weights(cfg))
        except UserError:  # none here: named when the inputs are encoded
            return
        text.check_vocab(tokenizer, model.module.backbone.cfg.vocab_size, cfg.model)


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


def check_train_batch(cfg, strategy: str, inputs: loading.Inputs) -> None:
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


def run_one(cfg, model: models.Model, inputs: loading.Inputs, weights_path: str, strategy: str,
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
    # The head (and every ``reinit`` param, with its BatchNorm statistics) starts from this
    # one init at the run's seed; the weights fill the rest of the backbone.
    fresh = model.init(jax.random.key(seed))
    variables = weights.load(weights_path, fresh, model.torch_names, keep_head=cfg.keep_head,
                             log=lambda msg: log(f"{strategy} seed {seed}: {msg}")
                             ) if weights_path else fresh
    rules = strategies.labels(strategy_rules(cfg, strategy), variables["params"], model.blocks)
    variables = strategies.apply_reinit(variables, fresh, rules)
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
        "reinit_params": strategies.count_reinit(variables["params"], rules),
        **published_numbers(cfg, strategy),
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
    labels = fit_paths.split_labels(run)  # train: the examples trained on
    metrics = {name: train.classification_metrics(run.logits[name], ys)
               for name, ys in labels.items()}
    correct = {name: encode_correct(np.argmax(run.logits[name], -1) == ys)
               for name, ys in labels.items() if name not in ("train", "val")}
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
    model = create_model(cfg, loading.dataset_classes(cfg, cfg.dataset))
    inputs = loading.load_inputs(cfg, cfg.dataset, model.preprocessing)
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
                       for name, ys in fit_paths.split_labels(run).items()}
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
