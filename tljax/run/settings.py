"""A strategy's own settings within a config: its optimiser keys, rules, training path and
published numbers.

The lowest layer of ``tljax.run``: pure functions of a config, used by the checks, the plan
and the report alike.
"""

import ml_collections

from tljax.errors import UserError
from tljax.report.records import method_name
from tljax.run.identity import OPTIM_KEYS

# per_block: BatchNorm trains (batch statistics, running stats updated) in every block that
# has a trainable param; eval: every BatchNorm runs on its running statistics throughout,
# the usual choice for fine-tuning with small batches.
BN_MODES = ("per_block", "eval")
COMPUTE_DTYPES = ("float32", "bfloat16")
# matmul_precision -> jax.default_matmul_precision's value (None: the backend's default).
MATMUL_PRECISIONS = {"highest": "highest", "tf32": "tensorfloat32", "default": None}
PER_STRATEGY_KEYS = OPTIM_KEYS + ("bn_mode",)
SELECT_METRICS = ("accuracy", "macro_f1", "loss")
FINAL_FITS = ("", "train+val")  # the sweep's last phase: refit the selected point on train+val
# Strategy base name -> training path; every other strategy trains through the network.
PATHS = {"linear_probe": "probe", "lp_ft": "probe+network"}
# With an adaptation objective, the steps through the network take a target batch too.
ADAPT_PATHS = {"network": "adapt", "probe+network": "probe+adapt"}


def training_path(strategy: str) -> str:
    """Returns ``probe``, ``network`` or ``probe+network``: how ``strategy`` trains."""
    return PATHS.get(strategy.partition(":")[0], "network")


def run_path(cfg, strategy: str) -> str:
    """Returns how ``strategy`` trains under effective config ``cfg``: its training path,
    or with ``cfg.adapt`` set, its adapting counterpart (``adapt``, ``probe+adapt``; a
    cached probe has none, which ``checks.validate`` reports)."""
    path = training_path(strategy)
    return ADAPT_PATHS.get(path, path) if cfg.adapt != "none" else path


def strategy_config(cfg, strategy: str) -> ml_collections.ConfigDict:
    """Returns the optimisation settings (and ``bn_mode``) for ``strategy``: the config's,
    then its ``per_strategy`` overrides."""
    run_cfg = ml_collections.ConfigDict({k: cfg[k] for k in PER_STRATEGY_KEYS})
    for key, value in cfg.per_strategy.get(strategy, {}).items():
        if key == "sweep":  # the strategy's own grid (tljax.run.plan)
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


def published_numbers(cfg, strategy: str) -> dict:
    """Returns ``{"published": {split: accuracy}, "published_source": ...}`` for the record
    of ``strategy`` (a ``method_name``: the paper's numbers from ``cfg.published``), or {}
    when it has none."""
    value = cfg.published.get(strategy)
    if value is None:
        return {}
    numbers = {"test": value} if isinstance(value, (int, float)) else dict(value)
    return {"published": {k: float(v) for k, v in numbers.items()},
            "published_source": cfg.published_source}


def with_published(experiment: str, published: dict, records: list) -> list:
    """Returns ``records`` with the paper's numbers (``published``: strategy ->
    ``published_numbers``, from the config as it is now) on each record of ``experiment``:
    numbers filled in or corrected after the runs finished (a rerun skips them, and
    ``published`` never changes a run's identity) reach the report."""
    out = []
    for r in records:
        if r.get("experiment") == experiment:
            r = {k: v for k, v in r.items() if k not in ("published", "published_source")}
            r.update(published.get(method_name(r.get("strategy", ""), r.get("adapt")), {}))
        out.append(r)
    return out


def compare_pairs(cfg) -> dict:
    """Returns ``{"compare": [[A, B], ...]}`` for a run's record (the method pairs the report
    compares seed by seed: ``tljax.report.paired``), or {} when ``cfg.compare`` is empty."""
    return {"compare": [list(pair) for pair in cfg.compare]} if cfg.compare else {}


def with_compare(experiment: str, compare: dict, records: list) -> list:
    """Returns ``records`` with ``compare`` (``compare_pairs`` of the config as it is now) as
    the pairs of each record of ``experiment``: pairs named after the runs finished reach
    the report, as ``with_published``'s numbers do."""
    return [{**{k: v for k, v in r.items() if k != "compare"}, **compare}
            if r.get("experiment") == experiment else r for r in records]


def check_compare(cfg) -> None:
    """Raises ``UserError`` unless ``cfg.compare`` is a list of [A, B] pairs of two different
    method names. The names are checked by the report, against the methods that ran."""
    for pair in cfg.compare:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, str) and x for x in pair) or pair[0] == pair[1]):
            raise UserError(f"compare entry {pair!r} is not a pair of two different method "
                            "names; give [[A, B], ...], e.g. [['full_ft', 'linear_probe']]")


def check_published(cfg) -> None:
    """Raises ``UserError`` unless ``cfg.published`` gives accuracies in [0, 1] for test or a
    shifted split. A strategy not run is allowed (``--set strategies=...`` may drop one)."""
    splits = ["test", *cfg.shifted] + (["target"] if cfg.target else [])
    for strategy, value in cfg.published.items():
        numbers = {"test": value} if isinstance(value, (int, float)) else value
        for split, number in dict(numbers).items():
            if split not in splits:
                raise UserError(f"published.{strategy} names split {split!r}; known: "
                                f"{', '.join(splits)}")
            if not isinstance(number, (int, float)) or not 0 <= number <= 1:
                raise UserError(f"published.{strategy}.{split} = {number!r}; give an accuracy "
                                "in [0, 1] (a paper's 91.8% is 0.918)")
