"""Every check of a config that needs no training: names, settings, files, and batches.

``validate`` checks one effective config (the model, each strategy's rules over its param
shapes, datasets, weights) without reading data; ``check_train_batch`` checks a strategy's
batch against its loaded training split. ``tljax.run.plan`` calls both, so every user
error is raised while planning, before anything trains.
"""

import os

import jax

from flax import traverse_util

from tljax import adapt, data, models, optim, parallel, probe, strategies
from tljax.errors import UserError
from tljax.models import zoo
from tljax.run.inputs import Inputs
from tljax.run.settings import (COMPUTE_DTYPES, FINAL_FITS, MATMUL_PRECISIONS, SELECT_METRICS,
                                check_compare, check_published, strategy_config,
                                strategy_rules, training_path)
from tljax.run.sources import create_model, model_name, resolve_weights


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
    clash = sorted(set(cfg.shifted) & {"train", "val", "test", "target", "target_val"})
    if clash:
        raise UserError(f"shifted split name {clash[0]!r} is taken by the dataset's own split "
                        "or the target domain's; name it after its shift, e.g. 'noise3'")
    _check_adapt(cfg)
    target = [cfg.target] if cfg.target else []
    for spec in [cfg.dataset] + list(cfg.shifted.values()) + target + (
            [cfg.pretrain.dataset] + list(cfg.pretrain.mix) if cfg.pretrain.dataset else []):
        name = data.parse_spec(spec)[0]
        path_like = "/" in name or (data.kind(name) == "text" and name not in data.TEXT_BUILTIN)
        if needs is not None and path_like and not os.path.exists(name):
            needs.append(f"dataset {spec!r}: the path {name!r} does not exist here")
            continue
        data.check_known(name)
    check_published(cfg)
    check_compare(cfg)
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
    if cfg.matmul_precision not in MATMUL_PRECISIONS:
        raise UserError(f"unknown matmul_precision {cfg.matmul_precision!r}; known: "
                        f"{', '.join(MATMUL_PRECISIONS)}")
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
        _check_adapts(cfg, strategy, rules)
    return model


def _check_adapt(cfg) -> None:
    """Raises ``UserError`` unless ``cfg``'s adaptation settings are usable together."""
    if cfg.adapt not in adapt.OBJECTIVES:
        raise UserError(f"unknown adapt {cfg.adapt!r}; known: {', '.join(adapt.OBJECTIVES)}")
    if cfg.adapt == "none":
        return
    if not cfg.target:
        raise UserError(f"adapt={cfg.adapt!r} needs an unlabelled target domain; set target "
                        "to a dataset spec, e.g. target=digits@photo_blend:3")
    if cfg.adapt_weight < 0:
        raise UserError(f"adapt_weight must be >= 0; got {cfg.adapt_weight}")
    if cfg.batch_size < 2:  # a covariance, a kernel mean or a domain loss of one example
        raise UserError(f"adapt={cfg.adapt!r} needs batch_size >= 2; got {cfg.batch_size}")
    if cfg.accum_steps != 1 or cfg.parallel != "mesh":
        raise UserError(f"adapt={cfg.adapt!r} runs with accum_steps=1 and parallel=mesh; got "
                        f"accum_steps={cfg.accum_steps}, parallel={cfg.parallel!r}")


def _check_adapts(cfg, strategy: str, rules) -> None:
    """Raises ``UserError`` where ``strategy`` cannot take ``cfg.adapt``: a cached probe
    trains no network, and a strategy that trains no backbone param cannot move the
    features the objective aligns."""
    if cfg.adapt == "none":
        return
    if training_path(strategy) == "probe":
        raise UserError(f"strategy {strategy!r} fits a probe on cached features, which "
                        f"adapt={cfg.adapt!r} cannot align; use a strategy that trains through "
                        "the network (last_k:N, full_ft, bitfit, lp_ft, ...) or adapt=none")
    flat = traverse_util.flatten_dict(rules)
    if not any(rule.trainable for path, rule in flat.items() if path[0] == "backbone"):
        raise UserError(f"strategy {strategy!r} trains no backbone param, so adapt="
                        f"{cfg.adapt!r} cannot change the features it aligns; use a strategy "
                        "that trains some of the backbone (last_k:N, full_ft, bitfit, ...)")


def _check_input_kind(cfg, model: models.Model) -> None:
    """Raises ``UserError`` unless every dataset of ``cfg`` holds what the model takes
    (images or text), and the text settings fit the model."""
    want = model.preprocessing.kind
    specs = [cfg.dataset] + list(cfg.shifted.values()) + ([cfg.target] if cfg.target else []) + (
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


def check_train_batch(cfg, strategy: str, inputs: Inputs) -> None:
    """Raises ``UserError`` unless the batch ``strategy`` will really train with fits its
    training set and divides over the devices and micro-batches (k-shot runs train with
    ``min(batch_size, shots x classes)``, which may not)."""
    if training_path(strategy) == "probe":
        return
    batch_size = strategy_config(cfg, strategy).batch_size
    target = inputs.target_train
    if cfg.adapt != "none" and len(target) < batch_size:
        raise UserError(f"target {cfg.target!r} has {len(target)} training examples, fewer than "
                        f"batch_size {batch_size}; valid batch sizes: 2..{len(target)}")
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
