"""Config -> plan: every run a config asks for, decided and validated before anything trains.

A config's ``sweep`` maps config keys to lists of values; ``per_strategy.NAME.sweep`` gives
one strategy its own grid (replacing the global list of a key it names), and a fixed
``per_strategy.NAME.KEY`` takes that key out of the global grid for that strategy. Keys a
strategy's training path never reads (the learning rate of a cached-feature probe) are
dropped from its grid, so no identical run is repeated.

``make`` turns a config into a ``Plan``: per strategy, its grid ``Point``s (effective
config frozen, training path, weights and their digest, result-affecting settings and
hashes), the seeds each phase runs, and whether a final refit follows. Every user error
is raised here: names and settings first (``grid_points``, which the dry run prints
without reading data), then each strategy's batch against its loaded training split.
Execution (``tljax.run.sweep``, ``tljax.run.execute``) reads the plan, never the config.
"""

import copy
import dataclasses
import itertools
import json

import ml_collections

from tljax import parallel
from tljax.errors import UserError
from tljax.run import checks, identity
from tljax.run.resources import Resources
from tljax.run.settings import (compare_pairs, published_numbers, run_path, strategy_config,
                                strategy_rules, training_path)

# Keys that describe the sweep itself, or that no single run can take another value of.
NOT_SWEEPABLE = ("experiment", "strategies", "seeds", "sweep", "per_strategy", "select_seeds",
                 "select_metric", "rules", "pretrain", "shifted", "log_every",
                 "checkpoint_every", "eval_batch_size", "feature_cache", "data_dir", "download",
                 "final_fit", "splits", "published", "published_source", "stream_above_mb",
                 "val_every", "compare")
PHASES = ("grid", "selected", "final")  # grid points; the selected point's other seeds; refit


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point of one strategy: its swept values, its effective config (frozen),
    and once the plan is resolved, its weights and identity."""

    strategy: str
    hparams: dict
    cfg: ml_collections.FrozenConfigDict
    path: str = ""            # training path: probe, network or probe+network
    rules: object = None      # the strategy's rules: a preset spec or a (regex, rule) list
    weights: str = ""         # weights path ('' for random init)
    settings: dict = None     # its result-affecting settings (identity.run_settings)
    sweep_hash: str = ""
    settings_hash: str = ""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run: a resolved ``Point`` at one seed, in one phase of the plan."""

    point: Point
    seed: int
    phase: str
    run_hash: str

    @property
    def strategy(self) -> str:
        return self.point.strategy

    @property
    def cfg(self) -> ml_collections.FrozenConfigDict:
        return self.point.cfg

    @property
    def identity(self) -> dict:
        """Returns the identity fields of the run's record."""
        return {"hparams": self.point.hparams, "run_hash": self.run_hash,
                "sweep_hash": self.point.sweep_hash, "settings_hash": self.point.settings_hash}

    @property
    def label(self) -> str:
        """Returns ``strategy seed N k=v ...``, how the log names the run."""
        return f"{self.strategy} seed {self.seed}" + "".join(
            f" {k}={v}" for k, v in self.point.hparams.items())


@dataclasses.dataclass(frozen=True)
class StrategyPlan:
    """One strategy's phases: every grid point on ``first_seeds``; the point selected on
    validation on ``rest_seeds``; then, with ``final_fit``, the selected point refit."""

    strategy: str
    grid: tuple
    first_seeds: tuple
    rest_seeds: tuple


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every run of a config, in order; ``select_metric`` and ``final_fit`` say how the
    later phases are chosen from the earlier ones."""

    experiment: str
    strategies: tuple
    seeds: tuple
    select_metric: str
    final_fit: str
    published: dict  # strategy -> the paper's numbers for its records (settings.published_numbers)
    compare: dict = dataclasses.field(default_factory=dict)  # settings.compare_pairs: report only

    def points(self) -> list:
        return [p for s in self.strategies for p in s.grid]


def spec(point: Point, seed: int, phase: str) -> RunSpec:
    """Returns the run of resolved ``point`` at ``seed`` in ``phase``."""
    return RunSpec(point, int(seed), phase, identity.run_hash(point.settings, point.strategy,
                                                              seed))


def strategy_grid(cfg, strategy: str) -> dict:
    """Returns ``{key: [values]}``, the grid ``strategy`` sweeps (global sweep, less keys the
    strategy fixes or never reads, plus its own ``per_strategy`` sweep)."""
    own = cfg.per_strategy.get(strategy, ml_collections.ConfigDict())
    fixed = [k for k in own.keys() if k != "sweep"]
    own_sweep = own.get("sweep", {})
    for key, values in [*cfg.sweep.items(), *own_sweep.items()]:
        if not isinstance(values, (list, tuple)):  # "head" would sweep 'h', 'e', 'a', 'd'
            raise UserError(f"sweep key {key!r} needs a list of values; got {values!r}, "
                            f"e.g. [{values!r}]")
    grid = {k: list(v) for k, v in cfg.sweep.items() if k not in fixed}
    both = sorted(set(fixed) & set(own_sweep.keys()))
    if both:
        raise UserError(f"per_strategy.{strategy} both fixes and sweeps {both[0]!r}; "
                        "keep one of the two")
    grid.update({k: list(v) for k, v in own_sweep.items()})
    for key, values in grid.items():
        if key not in cfg or key in NOT_SWEEPABLE or isinstance(cfg[key],
                                                                 ml_collections.ConfigDict):
            known = [k for k in cfg.keys() if k not in NOT_SWEEPABLE]
            raise UserError(f"unknown sweep key {key!r}; known: {', '.join(sorted(known))}")
        if not values:
            raise UserError(f"sweep key {key!r} has no values; give a list, e.g. [1e-4, 1e-3]")
        if key in ("model", "image_size", "channels") and cfg.pretrain.dataset:
            raise UserError(f"sweep key {key!r} changes the architecture, but the "
                            "self-pretrained source (pretrain.dataset) has one; sweep it "
                            "in separate configs")
    ignored = identity.IGNORED_BY_PATH[training_path(strategy)]
    return {k: v for k, v in grid.items() if k not in ignored}


def effective_config(cfg, strategy: str, hparams: dict) -> ml_collections.ConfigDict:
    """Returns a copy of ``cfg`` as ``strategy`` runs it at ``hparams``: its per-strategy
    settings and the swept values applied, ``per_strategy`` and ``sweep`` emptied, and no
    ``final_fit`` (grid points train on train; only ``final_point`` refits)."""
    eff = copy.deepcopy(cfg)
    strategy_config(cfg, strategy)  # names a bad per-strategy key or value
    for key, value in cfg.per_strategy.get(strategy, {}).items():
        if key != "sweep":
            eff[key] = value
    for key, value in hparams.items():
        try:
            eff[key] = value
        except (TypeError, ValueError):
            raise UserError(f"bad sweep value {value!r} for {key!r}; expected "
                            f"{type(cfg[key]).__name__}") from None
    eff.per_strategy = {}
    eff.sweep = {}
    eff.final_fit = ""
    return eff


def grid_points(cfg, needs: list | None = None) -> list:
    """Returns every grid ``Point`` of every strategy, in run order, each effective config
    validated and frozen (with a ``needs`` list, files this machine lacks are noted there
    instead: ``checks.validate``). No data is read."""
    points, seen = [], set()
    for strategy in cfg.strategies:
        grid = strategy_grid(cfg, strategy)
        keys = sorted(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            hparams = dict(zip(keys, values))
            if hparams.get("adapt", cfg.adapt) == "none":  # no adaptation: no weight for it
                hparams.pop("adapt_weight", None)
            if (strategy, json.dumps(hparams, sort_keys=True)) in seen:
                continue
            seen.add((strategy, json.dumps(hparams, sort_keys=True)))
            eff = effective_config(cfg, strategy, hparams)
            checks.validate(eff, only=[strategy], needs=needs)
            points.append(Point(strategy, hparams, ml_collections.FrozenConfigDict(eff),
                                run_path(eff, strategy), strategy_rules(eff, strategy)))
    return points


def resolve(point: Point, resources: Resources) -> Point:
    """Returns ``point`` with its weights and identity: its weights found (a self-pretrained
    source trained) and digested, with the content of what it reads."""
    weights, digest = resources.weights(point.cfg)
    settings = identity.run_settings(point.cfg.to_dict(), point.strategy, point.path, digest)
    return dataclasses.replace(
        point, weights=weights, settings=settings,
        sweep_hash=identity.sweep_hash(settings, point.strategy, point.hparams),
        settings_hash=identity.settings_hash(settings, point.hparams))


def final_point(point: Point, chosen_l2s: list, resources: Resources) -> Point:
    """Returns the refit of ``point`` (chosen on validation; ``chosen_l2s``: the probe L2s
    its records chose, if any) on train and val together, ``final_fit`` added to its
    hparams so tables tell it apart.

    Its sweep hash is the grid's plus ``final_fit``: the report summarises it as a group of
    its own, never selecting among grid points by a validation split it trained on. A probe
    keeps the L2 the grid chose on validation (most often over the seeds), for the same
    reason.
    """
    eff = point.cfg.as_configdict()
    eff.final_fit = "train+val"
    if "probe" in point.path and chosen_l2s:
        eff.probe_l2_grid = [float(max(chosen_l2s, key=chosen_l2s.count))]
    final = dataclasses.replace(point, cfg=ml_collections.FrozenConfigDict(eff))
    _, inputs = resources.model_and_inputs(final.cfg)
    checks.check_train_batch(final.cfg, point.strategy, inputs)
    settings = identity.run_settings(eff.to_dict(), point.strategy, point.path,
                                     resources.weights(point.cfg)[1])
    hparams = {**point.hparams, "final_fit": eff.final_fit}
    return dataclasses.replace(
        final, hparams=hparams, settings=settings,
        sweep_hash=identity.sweep_hash(settings, point.strategy, point.hparams),
        settings_hash=identity.settings_hash(settings, hparams))


def _check_one_sweep_per_group(points: list) -> None:
    """Raises ``RuntimeError`` (a bug in tljax) where the grid points of one (strategy,
    dataset, shots, adapt) got different sweep hashes: selection compares only points of one
    sweep hash, so each point would be "selected" alone and reported without a choice on
    validation. A setting derived from a swept key must be dropped with it
    (``identity.DERIVED_FROM``)."""
    hashes = {}
    for p in points:
        hashes.setdefault((p.strategy, p.cfg.dataset, p.cfg.shots, p.cfg.adapt),
                          {})[p.sweep_hash] = p
    for (strategy, dataset, shots, _), by_hash in hashes.items():
        if len(by_hash) > 1:
            a, b = list(by_hash.values())[:2]
            differ = sorted(k for k in set(a.settings) | set(b.settings)
                            if a.settings.get(k) != b.settings.get(k) and k not in a.hparams)
            raise RuntimeError(f"tljax bug: the grid of {strategy} on {dataset} (shots "
                               f"{shots}) has {len(by_hash)} sweep hashes; settings that "
                               f"differ between points: {', '.join(differ)}")


def make(cfg, resources: Resources, workdir: str | None = None, log=print) -> Plan:
    """Returns the ``Plan`` of ``cfg`` (its grid points resolved with ``resources``).

    Raises ``UserError`` for any bad name, setting, file or batch before anything trains
    (a self-pretrained source trains last, once every point is checked); ``workdir``, if
    given, must be writable.
    """
    checks.validate(cfg, only=())
    points = grid_points(cfg)
    for name in cfg.per_strategy.keys():  # a misspelt name would leave a strategy untuned
        if name not in cfg.strategies:
            log(f"warning: per_strategy names {name!r}, which is not in strategies "
                f"({', '.join(cfg.strategies)}); its settings are not used")
    if workdir is not None:
        checks.check_writable(workdir)
    for point in points:  # every batch is checked before anything trains
        checks.check_train_batch(point.cfg, point.strategy,
                                 resources.model_and_inputs(point.cfg)[1])
    points = [resolve(p, resources) for p in points]
    _check_one_sweep_per_group(points)
    # Every process must plan the same runs (the same bytes read, the same settings), or
    # each would skip, resume and wait for different ones.
    parallel.agree("plan", identity.digest([(p.strategy, p.settings) for p in points]),
                   "the runs to do (their settings and the content of what they read)")
    seeds = tuple(int(s) for s in cfg.seeds)
    phases = []
    for strategy in cfg.strategies:
        grid = tuple(p for p in points if p.strategy == strategy)
        n = cfg.select_seeds
        first = seeds[:n] if len(grid) > 1 and 0 < n < len(seeds) else seeds
        phases.append(StrategyPlan(strategy, grid, first, seeds[len(first):]))
    published = {name: published_numbers(cfg, name) for name in cfg.published.keys()}
    return Plan(cfg.experiment, tuple(phases), seeds, cfg.select_metric, cfg.final_fit,
                published, compare_pairs(cfg))
