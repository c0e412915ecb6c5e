"""Experiment configs: python files with ``get_config()``, and ``--set`` overrides.

Every key an experiment reads is declared in ``transfer()`` with its default and type,
and the returned ConfigDict is locked, so a mistyped key or a wrongly typed value fails
at once with a message naming it.
"""

import difflib
import contextlib
import importlib.util
import inspect
import json
import os
import re

import ml_collections
from ml_collections import config_dict

from tljax.errors import UserError


def transfer(**overrides) -> ml_collections.ConfigDict:
    """Returns the base transfer-experiment config with ``overrides`` applied, locked.

    Keys: ``experiment``, ``model`` ('' = the weights' own, else ``cnn``), ``weights``
    (''=random init, a checkpoint or weights file, a Hugging Face model directory, or a
    pretrained name), ``dataset`` (a dataset spec, e.g. ``digits:5-9``),
    ``shifted`` (name -> dataset spec, evaluated on its test split as extra splits),
    ``strategies`` (preset specs or names in ``rules``), ``rules`` (name -> list of
    [regex, rule]), ``seeds``, the optimisation settings, ``per_strategy`` (strategy ->
    overrides of those settings), ``bn_mode`` (``per_block``: BatchNorm trains in blocks
    with trainable params; ``eval``: running statistics everywhere) and ``pretrain``
    (train a source model first when ``weights`` is empty and ``pretrain.dataset`` is set).
    """
    c = ml_collections.ConfigDict()
    c.experiment = "transfer"
    c.model = ""  # '': the weights' own model (a pretrained name, a model directory), else cnn
    c.weights = ""
    # Load the source's classifier head too (same class count): for targets that keep the
    # source's label space, e.g. Lee et al. 2023's label shift. Off: every run's head is fresh.
    c.keep_head = False
    c.image_size = config_dict.placeholder(int)
    c.channels = config_dict.placeholder(int)
    c.dataset = "digits"
    c.data_dir = ""
    c.download = False
    # Splits whose float32 model input exceeds this many MB are streamed from disk batch by
    # batch (tljax.data.streaming) instead of held in memory; 0 = always, -1 = never.
    c.stream_above_mb = 2048
    # Image folders (a dataset path): the side of the stored centre squares (0 = the
    # largest shorter side in the folder, at most 256; tljax.data.folders).
    c.folder_image_size = 0
    c.shifted = ml_collections.ConfigDict()
    # Domain adaptation (tljax.adapt): an unlabelled target domain (a dataset spec whose
    # train split's inputs are read, never its labels; its test and val splits are
    # evaluated as "target" and "target_val"), and the objective that uses it.
    c.target = ""
    c.adapt = "none"
    c.adapt_weight = 1.0
    # Text datasets (a .csv/.jsonl file, or vader): the columns read, and the tokenizer
    # ('' = the tokenizer.json shipped with the weights) truncating/padding to max_length.
    c.text_column = "text"
    c.label_column = "label"
    c.pair_column = ""
    c.max_length = 128
    c.tokenizer = ""
    c.strategies = ["linear_probe", "full_ft"]
    c.rules = ml_collections.ConfigDict()
    c.seeds = [0]
    # Optimisation (see tljax.optim.make).
    c.steps = 300
    c.batch_size = 64
    c.optimizer = "adam"
    c.lr = 1e-3
    c.momentum = 0.9
    c.weight_decay = 0.0
    c.grad_clip = 1.0
    c.warmup_steps = 0
    # L2-SP (Li et al. 2018): trainable backbone params pulled toward their pretrained
    # values with weight l2sp_alpha, the head toward zero with l2sp_beta (0 = off).
    c.l2sp_alpha = 0.0
    c.l2sp_beta = 0.0
    c.per_strategy = ml_collections.ConfigDict()
    c.bn_mode = "per_block"
    # Linear probes on cached features (tljax.probe): solver, L2 grid, cache ('' = default
    # location, 'none' = off), and k-shot training subsets (0 = the whole train split).
    c.probe_solver = "lbfgs"
    c.probe_standardize = True  # Kumar et al. (2022): features scaled by train mean/std
    c.probe_l2_grid = [float(x) for x in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0,
                                           1e3, 1e4, 1e5)]
    c.feature_cache = ""
    c.shots = 0
    c.eval_batch_size = 256
    # Scale and survival (tljax.parallel, tljax.train): data parallel over all devices,
    # bf16 compute, micro-batch gradient accumulation, checkpoints every N steps.
    c.parallel = "mesh"
    c.fsdp_regex = ""
    c.compute_dtype = "float32"
    # float32 matmul and convolution precision in every jitted function of a run: highest
    # is full float32 everywhere, so a GPU gives what a CPU gives to the parity tolerances.
    c.matmul_precision = "highest"
    c.accum_steps = 1
    c.checkpoint_every = 100
    c.log_every = 50
    # Steps between validation points of a run's curves (TensorBoard; 0: at the end only).
    c.val_every = 0
    # A source model trained by the experiment itself, saved and loaded back as weights.
    # Sweeps (tljax.run.plan): key -> list of values, run as a grid x strategies x seeds
    # (per strategy too: per_strategy.NAME.sweep); the point with the best mean validation
    # select_metric is selected. select_seeds=N runs the grid on the first N seeds only and
    # then the selected point on the rest (0 = every point on every seed).
    c.sweep = ml_collections.ConfigDict()
    c.select_seeds = 0
    c.select_metric = "accuracy"
    # After selection, refit the selected point on train and val together and report that
    # run's test (VTAB's protocol): '' = off, 'train+val'.
    c.final_fit = ""
    # The dataset's own split strings per tljax split ({} = train/validation/test, or 90/10
    # of train), e.g. VTAB-1k's {"train": "train[:800]", "val": "validation[:200]", ...}.
    c.splits = ml_collections.ConfigDict()
    # The paper's numbers, shown beside ours in the report: strategy -> test accuracy, or
    # strategy -> {split: accuracy} (shifted splits too); published_source names the table.
    c.published = ml_collections.ConfigDict()
    c.published_source = ""
    # Report only: [A, B] method pairs compared seed by seed at their selected points
    # (tljax.report.paired), e.g. [["full_ft", "linear_probe"]]. Changes no run's identity.
    c.compare = []
    c.pretrain = ml_collections.ConfigDict(
        {"dataset": "", "mix": [], "steps": 500, "lr": 3e-3, "batch_size": 64, "seed": 0})
    c.lock()
    # After lock(): a misspelt keyword (transfer(sead=[0])) is an unknown key, not a new one.
    apply_values(c, overrides)
    return c


def apply_values(cfg: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
    """Returns ``cfg`` with each ``{dotted key: value}`` set, as ``--set`` would set it."""
    return apply_overrides(cfg, [(key, value) for key, value in values.items()])


def load(path: str) -> ml_collections.ConfigDict:
    """Returns ``get_config()`` of the python config file at ``path``, or ``get_config(ARG)``
    for ``path:ARG`` (one file serves several datasets: ``experiments/vtab1k.py:dtd``).

    Anything that goes wrong in the file is the user's: a ``UserError`` of one line naming
    the file (and line), e.g. a key the locked config does not have, with the known keys
    closest match first.
    """
    arg = None
    if not os.path.isfile(path) and ":" in path and os.path.isfile(path.rpartition(":")[0]):
        path, _, arg = path.rpartition(":")
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path!r}")
    spec = importlib.util.spec_from_file_location("tljax_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config is the user's file, not a tljax bug
        raise UserError(f"cannot load config {path!r}: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise UserError(f"config {path!r} defines no get_config()")
    _check_arg(path, module.get_config, arg)
    try:
        cfg = module.get_config() if arg is None else module.get_config(arg)
    except Exception as e:
        raise _get_config_error(path, e) from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UserError(f"get_config() in {path!r} must return a ConfigDict; "
                        f"got {type(cfg).__name__}")
    return cfg


def _check_arg(path: str, get_config, arg) -> None:
    """Raises ``UserError`` when ``arg`` is given to a ``get_config()`` that takes none, or
    none to one that needs it."""
    params = list(inspect.signature(get_config).parameters.values())
    if arg is not None and not params:
        raise UserError(f"config {path!r} takes no argument; got {path}:{arg}")
    if arg is None and params and params[0].default is inspect.Parameter.empty:
        raise UserError(f"config {path!r} needs an argument: {path}:ARG "
                        f"(get_config({params[0].name}))")


# ml_collections' message when a locked ConfigDict is given a key it lacks.
_LOCKED_KEY = re.compile(r'Key "([^"]+)" does not exist and cannot be added')


def _get_config_error(path: str, exc: Exception) -> UserError:
    """Returns the one-line error for an exception raised inside ``get_config()`` of ``path``."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    here = path
    lines = [f.f_lineno for f in frames if os.path.abspath(f.f_code.co_filename)
             == os.path.abspath(path)]
    if lines:
        here = f"{path}:{lines[-1]}"  # the deepest line of the user's file
    match = _LOCKED_KEY.search(str(exc))
    if match:
        # The locked node is ``self`` in ml_collections' __setattr__/__setitem__; its dotted
        # prefix is found from any ConfigDict the config file's frames hold (the root).
        node = next((f.f_locals["self"] for f in reversed(frames)
                     if isinstance(f.f_locals.get("self"), ml_collections.ConfigDict)), None)
        if node is not None:
            prefix = ""
            for frame in frames:
                for value in list(frame.f_locals.values()):
                    if isinstance(value, ml_collections.ConfigDict):
                        found = _prefix_of(node, value)
                        if found is not None and len(found) > len(prefix):
                            prefix = found
            key = prefix + match.group(1)
            known = known_keys(node, prefix)
            return UserError(f"config {here}: unknown config key {key!r}; known (closest "
                             f"first): {', '.join(closest_first(key, known))}")
    text = " ".join(str(exc).split())  # one line, whatever the exception's message
    return UserError(f"config {here}: get_config() failed: {type(exc).__name__}: {text}")


def _prefix_of(node, root, prefix: str = ""):
    """Returns the dotted prefix (``pretrain.``) at which ``node`` sits in ``root``, or None."""
    if node is root:
        return prefix
    for k, v in root.items():
        if isinstance(v, ml_collections.ConfigDict):
            found = _prefix_of(node, v, f"{prefix}{k}.")
            if found is not None:
                return found
    return None


# Names other libraries use for a key tljax spells differently: shown first when mistyped.
_ALIASES = {"learning_rate": "lr", "base_lr": "lr", "epochs": "steps", "num_steps": "steps",
            "total_steps": "steps", "train_steps": "steps", "seed": "seeds",
            "strategy": "strategies", "wd": "weight_decay", "clip_grad_norm": "grad_clip",
            "warmup": "warmup_steps", "workdir": "experiment"}


def closest_first(key: str, known) -> list:
    """Returns ``known`` with the keys closest to ``key`` first (difflib), then the rest sorted."""
    known = sorted(known)
    prefix, _, leaf = key.rpartition(".")
    alias = (prefix + "." if prefix else "") + _ALIASES.get(leaf, leaf)
    close = ([alias] if alias in known and alias != key else []) + difflib.get_close_matches(
        key, known, n=len(known), cutoff=0.6)
    close = list(dict.fromkeys(close))
    return close + [k for k in known if k not in close]


def parse_value(text: str):
    """Returns ``text`` parsed as JSON, or the text itself where it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def known_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list:
    """Returns every settable dotted key of ``cfg``, sorted."""
    keys = []
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict) and len(v):
            keys += known_keys(v, f"{prefix}{k}.")
        else:
            keys.append(prefix + k)
    return sorted(keys)


def _unknown_key(key: str, cfg) -> UserError:
    """Returns the error for ``--set KEY=...`` with a key ``cfg`` lacks, closest keys first."""
    return UserError(f"unknown config key {key!r}; known: "
                     f"{', '.join(closest_first(key, known_keys(cfg)))}")


FREE_FORM = ("sweep", "per_strategy", "shifted", "rules", "splits", "published")


# One line per key for ``tljax list keys``; a key missing here is listed without one.
KEY_HELP = {
    "experiment": "name of the experiment; the default workdir is runs/<experiment>",
    "model": "model name (tljax list); '' = the weights' own (pretrained name or model "
             "directory), else cnn",
    "keep_head": "load the source's classifier head too (its class count must match the "
                 "target's); off: the head starts fresh",
    "weights": "'' = random init; a pretrained name (tljax list), weights file, checkpoint, "
               "or Hugging Face model directory (config.json + weights)",
    "image_size": "input size in px (null: the model's own)",
    "channels": "input channels (null: the model's own)",
    "dataset": "dataset spec: digits, digits:5-9, digits:1,3@gaussian_noise:3, a TFDS name, "
               "vader, a text file (/data/reviews.csv, .jsonl)",
    "data_dir": "where datasets live ('' = $TLJAX_DATA_DIR or ~/.cache/tljax)",
    "download": "prepare a missing TFDS catalog dataset",
    "stream_above_mb": "stream splits whose float32 input exceeds this many MB from disk, "
                       "batch by batch (0 = always, -1 = never)",
    "folder_image_size": "image folders (a dataset path): side in px of the stored centre "
                         "squares (0 = the folder's largest shorter side, at most 256)",
    "shifted": "name -> dataset spec, evaluated on its test split as an extra split",
    "target": "domain adaptation: an unlabelled target domain (dataset spec): its train "
              "inputs are adapted to (labels never read), its test/val splits evaluated as "
              "target/target_val",
    "adapt": "domain adaptation objective on the penultimate features: none, dann (Ganin & "
             "Lempitsky 2015), coral (Sun & Saenko 2016), mmd (Long et al. 2015)",
    "adapt_weight": "weight of the adaptation term (dann: scales the reversed gradient, "
                    "times the paper's lambda schedule); sweepable",
    "text_column": "text datasets (.csv/.jsonl): the column holding the text",
    "label_column": "text datasets: the column holding the label (ints as given, else sorted "
                    "strings)",
    "pair_column": "text datasets: the column holding a second segment for pairs ('' = none)",
    "max_length": "text datasets: tokens per example (truncated / padded)",
    "tokenizer": "text datasets: a tokenizer.json or its directory ('' = the weights' own)",
    "strategies": "strategy specs (tljax list) or names in rules; one run each per seed",
    "rules": "name -> [[regex, rule], ...]; check with tljax list rules MODEL STRATEGY",
    "seeds": "one run per seed and strategy",
    "steps": "training steps per run through the network",
    "batch_size": "training batch size (divisible by devices x accum_steps)",
    "optimizer": "adam | sgd",
    "lr": "peak learning rate (cosine decay to 0)",
    "momentum": "sgd momentum",
    "weight_decay": "weight decay on trainable kernels (biases and norms excluded)",
    "grad_clip": "global-norm clip over trainable grads (0 = off)",
    "warmup_steps": "linear LR warmup steps",
    "l2sp_alpha": "L2-SP pull of trainable backbone params toward pretrained values (0 = off)",
    "l2sp_beta": "L2-SP pull of the head toward zero (0 = off)",
    "per_strategy": "strategy -> overrides of the optimisation keys, e.g. per_strategy.lp_ft.lr",
    "bn_mode": "per_block: BatchNorm trains in blocks with trainable params | eval",
    "probe_solver": "lbfgs | ridge | adam, for linear_probe on cached features",
    "probe_standardize": "scale probe features by the train split's mean/std",
    "probe_l2_grid": "L2 values swept by the probe, picked on val",
    "feature_cache": "feature cache directory ('' = default, 'none' = off)",
    "shots": "training examples per class (0 = the whole train split)",
    "eval_batch_size": "batch size for evaluation and feature extraction",
    "parallel": "mesh (NamedSharding) | pmap",
    "fsdp_regex": "params whose path matches are sharded over devices ('' = none)",
    "compute_dtype": "float32 | bfloat16 (params and optimizer state stay float32)",
    "matmul_precision": "highest | tf32 | default: float32 matmul/conv precision of every "
                        "jitted function (highest: full float32, as on a CPU; tf32: "
                        "TensorFloat-32 on NVIDIA GPUs, faster, ~1e-3 relative; default: "
                        "the backend's own, TF32 on NVIDIA GPUs); no effect on a CPU",
    "accum_steps": "micro-batches per update (gradient accumulation)",
    "checkpoint_every": "steps between checkpoints",
    "log_every": "steps between log lines (and points of the training curves)",
    "val_every": "steps between validation points of the curves (0: the last step only)",
    "sweep": "key -> list of values, run as a grid x strategies x seeds",
    "select_seeds": "run the sweep grid on the first N seeds only (0 = all seeds)",
    "select_metric": "validation metric that picks the sweep point",
    "final_fit": "'' | train+val: refit each selected point on train and val, report its test",
    "splits": "tljax split -> the dataset's split string ({} = train/validation/test or 90/10)",
    "published": "strategy -> the paper's test accuracy (or {split: accuracy}), beside ours",
    "published_source": "where the published numbers come from (paper, table)",
    "compare": "report only: [[A, B], ...] method pairs (full_ft, full_ft+dann) compared by "
               "per-seed differences A - B at their selected points; no run changes",
    "pretrain.dataset": "train a source model on this dataset first when weights is ''",
    "pretrain.mix": "more dataset specs (same classes) whose train splits join the source's, "
                   "e.g. a corrupted view: ['digits@invert:5']",
    "pretrain.steps": "source-model training steps",
    "pretrain.lr": "source-model learning rate",
    "pretrain.batch_size": "source-model batch size",
    "pretrain.seed": "source-model seed",
}


def describe_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list:
    """Returns ``(dotted key, type name, default as JSON, description)`` per key, sorted.

    Types are the ones a locked config enforces (``int`` for a placeholder such as
    ``image_size``, whose default is ``null``).
    """
    rows = []
    for k, v in cfg.items():
        key = prefix + k
        if isinstance(v, ml_collections.ConfigDict) and len(v):
            rows += describe_keys(v, key + ".")
            continue
        if isinstance(v, ml_collections.ConfigDict):
            kind, v = "dict", v.to_dict()
        elif isinstance(v, (list, tuple)):
            inner = {type(x).__name__ for x in v}
            kind = f"list[{inner.pop()}]" if len(inner) == 1 else "list"
        else:
            kind = getattr(cfg.get_type(k), "__name__", str(cfg.get_type(k)))
        rows.append((key, kind, json.dumps(v, default=str), KEY_HELP.get(key, "")))
    return rows


def apply_overrides(cfg: ml_collections.ConfigDict, pairs) -> ml_collections.ConfigDict:
    """Returns ``cfg`` with each ``key=value`` in ``pairs`` applied (dotted keys nest)."""
    for pair in pairs:
        if isinstance(pair, tuple):  # (key, value) from python: no parsing
            (key, value), eq = pair, "="
            text = repr(value)
        else:
            key, eq, text = pair.partition("=")
            value = parse_value(text)
        if not eq or not key:
            raise UserError(f"bad --set {pair!r}; expected key=value")
        node, *_ = cfg, None
        parts = key.split(".")
        # Under sweep, per_strategy, shifted and rules the keys are the user's own names.
        free = len(parts) > 1 and parts[0] in FREE_FORM
        for part in parts[:-1]:
            if free and part not in node:
                with node.unlocked():
                    node[part] = ml_collections.ConfigDict()
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise _unknown_key(key, cfg)
            node = node[part]
        leaf = parts[-1]
        if leaf not in node and not free and (node.is_locked or node is cfg):
            raise _unknown_key(key, cfg)
        try:
            with node.unlocked() if free else contextlib.nullcontext():
                node[leaf] = value
        except (TypeError, ValueError, AttributeError, KeyError):
            current = node.get_type(leaf) if leaf in node else None
            raise UserError(f"bad value {text!r} for config key {key!r}; expected "
                            f"{getattr(current, '__name__', current)}") from None
    return cfg
