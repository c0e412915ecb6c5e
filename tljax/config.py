"""Experiment configs: python files with ``get_config()``, and ``--set`` overrides.

Every key an experiment reads is declared in ``transfer()`` with its default and type,
and the returned ConfigDict is locked, so a mistyped key or a wrongly typed value fails
at once with a message naming it.
"""

import importlib.util
import json
import os

import ml_collections
from ml_collections import config_dict

from tljax.errors import UserError


def transfer(**overrides) -> ml_collections.ConfigDict:
    """Returns the base transfer-experiment config with ``overrides`` applied, locked.

    Keys: ``experiment``, ``model``, ``weights`` (''=random init, a checkpoint or weights
    file, or a pretrained name), ``dataset`` (a dataset spec, e.g. ``digits:5-9``),
    ``shifted`` (name -> dataset spec, evaluated on its test split as extra splits),
    ``strategies`` (preset specs or names in ``rules``), ``rules`` (name -> list of
    [regex, rule]), ``seeds``, the optimisation settings, ``per_strategy`` (strategy ->
    overrides of those settings), ``bn_mode`` (``per_block``: BatchNorm trains in blocks
    with trainable params; ``eval``: running statistics everywhere) and ``pretrain``
    (train a source model first when ``weights`` is empty and ``pretrain.dataset`` is set).
    """
    c = ml_collections.ConfigDict()
    c.experiment = "transfer"
    c.model = "cnn"
    c.weights = ""
    c.image_size = config_dict.placeholder(int)
    c.channels = config_dict.placeholder(int)
    c.dataset = "digits"
    c.data_dir = ""
    c.download = False
    c.shifted = ml_collections.ConfigDict()
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
    c.accum_steps = 1
    c.checkpoint_every = 100
    c.log_every = 50
    # A source model trained by the experiment itself, saved and loaded back as weights.
    c.pretrain = ml_collections.ConfigDict(
        {"dataset": "", "steps": 500, "lr": 3e-3, "batch_size": 64, "seed": 0})
    c.update_from_flattened_dict(overrides) if overrides else None
    c.lock()
    return c


def load(path: str) -> ml_collections.ConfigDict:
    """Returns ``get_config()`` of the python config file at ``path``."""
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
    cfg = module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UserError(f"get_config() in {path!r} must return a ConfigDict; "
                        f"got {type(cfg).__name__}")
    return cfg


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


def apply_overrides(cfg: ml_collections.ConfigDict, pairs) -> ml_collections.ConfigDict:
    """Returns ``cfg`` with each ``key=value`` in ``pairs`` applied (dotted keys nest)."""
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key:
            raise UserError(f"bad --set {pair!r}; expected key=value")
        value = parse_value(text)
        node, *_ = cfg, None
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise UserError(f"unknown config key {key!r}; known: {', '.join(known_keys(cfg))}")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node and (node.is_locked or node is cfg):
            raise UserError(f"unknown config key {key!r}; known: {', '.join(known_keys(cfg))}")
        try:
            node[leaf] = value
        except (TypeError, ValueError, AttributeError, KeyError):
            current = node.get_type(leaf) if leaf in node else None
            raise UserError(f"bad value {text!r} for config key {key!r}; expected "
                            f"{getattr(current, '__name__', current)}") from None
    return cfg
