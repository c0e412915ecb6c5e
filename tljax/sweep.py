"""Sweeps: strategies x swept values x seeds, selected on validation, resumable.

A config's ``sweep`` maps config keys to lists of values; ``per_strategy.NAME.sweep`` gives
one strategy its own grid (replacing the global list of a key it names), and a fixed
``per_strategy.NAME.KEY`` takes that key out of the global grid for that strategy. Keys a
strategy's training path never reads (the learning rate of a cached-feature probe) are
dropped from its grid, so no identical run is repeated.

With ``select_seeds=N`` the grid runs on the first N seeds; then, per (strategy, dataset,
shots), the point with the best mean validation ``select_metric`` (``tljax.report.
selection``; test and shifted splits are never read) runs on the remaining seeds. With
``final_fit="train+val"`` (VTAB), that selected point is then trained again on train and
val together, on every seed (``final_point``); those records carry ``final_fit`` in their
hparams and form a summary row of their own.

Every run is keyed by ``tljax.run_keys.run_hash``: a rerun skips every run whose record
says ``ok`` under the same hash, and resumes an unfinished one from its checkpoint.
"""

import copy
import dataclasses
import itertools
import json
import os
import platform
import shutil
import time

import jax
import ml_collections
import numpy as np

import tljax
from tljax import experiment, loading, parallel, pretrain, run_keys
from tljax.errors import UserError
from tljax.report.records import hparams_key

# Keys that describe the sweep itself, or that no single run can take another value of.
NOT_SWEEPABLE = ("experiment", "strategies", "seeds", "sweep", "per_strategy", "select_seeds",
                 "select_metric", "rules", "pretrain", "shifted", "log_every",
                 "checkpoint_every", "eval_batch_size", "feature_cache", "data_dir", "download",
                 "final_fit", "splits", "published", "published_source", "stream_above_mb")


@dataclasses.dataclass
class Point:
    """One grid point of one strategy: its swept values and its effective config."""

    strategy: str
    hparams: dict
    cfg: ml_collections.ConfigDict
    settings: dict = None  # its result-affecting settings (run_keys.run_settings), once known
    sweep_hash: str = ""


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
    ignored = run_keys.IGNORED_BY_PATH[experiment.training_path(strategy)]
    return {k: v for k, v in grid.items() if k not in ignored}


def effective_config(cfg, strategy: str, hparams: dict) -> ml_collections.ConfigDict:
    """Returns a copy of ``cfg`` as ``strategy`` runs it at ``hparams``: its per-strategy
    settings and the swept values applied, ``per_strategy`` and ``sweep`` emptied, and no
    ``final_fit`` (grid points train on train; only ``final_point`` refits)."""
    eff = copy.deepcopy(cfg)
    experiment.strategy_config(cfg, strategy)  # names a bad per-strategy key or value
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


def final_point(point: Point, chosen, digest: str) -> Point:
    """Returns the refit of ``point`` (chosen on validation: ``chosen``, its Selection) on
    train and val together, ``final_fit`` added to its hparams so tables tell it apart.

    Its sweep hash is the grid's plus ``final_fit``: the report summarises it as a group of
    its own, never selecting among grid points by a validation split it trained on. A probe
    keeps the L2 the grid chose on validation (most often over the seeds), for the same
    reason.
    """
    eff = copy.deepcopy(point.cfg)
    eff.final_fit = "train+val"
    path = experiment.training_path(point.strategy)
    l2s = [r["probe"]["l2"] for r in chosen.records if r.get("probe")]
    if "probe" in path and l2s:
        eff.probe_l2_grid = [float(max(l2s, key=l2s.count))]
    settings = run_keys.run_settings(eff.to_dict(), point.strategy, path, digest)
    return Point(point.strategy, {**point.hparams, "final_fit": eff.final_fit}, eff, settings,
                 run_keys.sweep_hash(settings, point.strategy, point.hparams))


def plan(cfg, needs: list | None = None) -> list:
    """Returns every grid ``Point`` of every strategy, in run order (validated; with a
    ``needs`` list, missing files are noted there instead: ``experiment.validate``)."""
    points = []
    for strategy in cfg.strategies:
        grid = strategy_grid(cfg, strategy)
        keys = sorted(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            hparams = dict(zip(keys, values))
            eff = effective_config(cfg, strategy, hparams)
            experiment.validate(eff, only=[strategy], needs=needs)
            points.append(Point(strategy, hparams, eff))
    return points


class _Setup:
    """Models, inputs and weights per distinct data/model setting, built once each."""

    def __init__(self, base_cfg, workdir: str, log):
        self.base_cfg, self.workdir, self.log = base_cfg, workdir, log
        self.cache, self.source = {}, None
        # Weights digests by path + size + mtime, kept beside the results: a large
        # checkpoint is hashed once, and again only when its files change.
        self.digest_file = os.path.join(workdir, ".weights_digests.json")
        try:
            with open(self.digest_file) as f:
                self.digests = dict(json.load(f))
        except (OSError, ValueError, TypeError):
            self.digests = {}

    def _digest(self, path: str) -> str:
        before = len(self.digests)
        digest = run_keys.weights_digest(path, self.digests)
        if len(self.digests) != before and jax.process_index() == 0:
            tmp = f"{self.digest_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.digests, f)
            os.replace(tmp, self.digest_file)
        return digest

    def get(self, cfg) -> tuple:
        """Returns ``(model, inputs, weights path, weights digest)`` for ``cfg``."""
        key = json.dumps([cfg[k] for k in ("model", "weights", "dataset", "image_size",
                                            "channels", "data_dir", "folder_image_size",
                                            "final_fit")
                                           + run_keys.TEXT_KEYS]
                         + [cfg.shifted.to_dict(), cfg.splits.to_dict()], sort_keys=True)
        if key not in self.cache:
            model = experiment.create_model(cfg, loading.dataset_classes(cfg, cfg.dataset))
            inputs = loading.load_inputs(cfg, cfg.dataset, model.preprocessing)
            path = experiment.resolve_weights(cfg)
            if not path and cfg.pretrain.dataset:
                # The source model follows the config as written, never a strategy's or a
                # grid point's optimiser settings.
                # The source follows the config as written, so it is one per sweep; process
                # 0 trains it, and every process digests the same checkpoint: the same
                # bytes, the same run hashes, the same state directories.
                if self.source is None:
                    self.source = pretrain.source_model(self.base_cfg, self.workdir, self.log)
                path = self.source
            self.cache[key] = (model, inputs, path, self._digest(path))
        return self.cache[key]


def _check_one_sweep_per_group(points: list) -> None:
    """Raises ``RuntimeError`` (a bug in tljax) where the grid points of one (strategy,
    dataset, shots) got different sweep hashes: selection compares only points of one
    sweep hash, so each point would be "selected" alone and reported without a choice on
    validation. A setting derived from a swept key must be dropped with it
    (``run_keys.DERIVED_FROM``)."""
    hashes = {}
    for p in points:
        hashes.setdefault((p.strategy, p.cfg.dataset, p.cfg.shots), {})[p.sweep_hash] = p
    for (strategy, dataset, shots), by_hash in hashes.items():
        if len(by_hash) > 1:
            a, b = list(by_hash.values())[:2]
            differ = sorted(k for k in set(a.settings) | set(b.settings)
                            if a.settings.get(k) != b.settings.get(k) and k not in a.hparams)
            raise RuntimeError(f"tljax bug: the grid of {strategy} on {dataset} (shots "
                               f"{shots}) has {len(by_hash)} sweep hashes; settings that "
                               f"differ between points: {', '.join(differ)}")


def append_record(path: str, record: dict) -> None:
    """Appends ``record`` as one JSON line in a single write, then fsyncs. A torn last line
    (a process killed mid-write) is closed first, so it cannot swallow this record."""
    line = (json.dumps(record, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        while line:
            line = line[os.write(fd, line):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def run(cfg, workdir: str, log=print) -> list:
    """Runs every strategy x grid point x seed of ``cfg`` not finished earlier; appends each
    record to ``workdir/results.jsonl`` as it finishes and returns the records of this call.
    """
    from tljax import report
    from tljax.report import selection

    experiment.validate(cfg, only=())
    points = plan(cfg)
    for name in cfg.per_strategy.keys():  # a misspelt name would leave a strategy untuned
        if name not in cfg.strategies:
            log(f"warning: per_strategy names {name!r}, which is not in strategies "
                f"({', '.join(cfg.strategies)}); its settings are not used")
    experiment.enable_compilation_cache()
    experiment.check_writable(workdir)
    writer = jax.process_index() == 0  # one writer in a multi-process run
    results = os.path.join(workdir, "results.jsonl")
    known = report.read_results(results) if os.path.isfile(results) else []
    # No process appends a record before every process has read the file: they all skip
    # and run the same runs.
    parallel.barrier("tljax: results read")
    setup = _Setup(cfg, workdir, log)
    for point in points:  # every batch is checked before anything trains
        model, inputs, _, digest = setup.get(point.cfg)
        experiment.check_train_batch(point.cfg, point.strategy, inputs)
        point.settings = run_keys.run_settings(point.cfg.to_dict(), point.strategy,
                                               experiment.training_path(point.strategy), digest)
        point.sweep_hash = run_keys.sweep_hash(point.settings, point.strategy, point.hparams)
    _check_one_sweep_per_group(points)
    # Every process must plan the same runs (the same bytes read, the same settings), or
    # each would skip, resume and wait for different ones.
    parallel.agree("plan", run_keys.digest([(p.strategy, p.settings) for p in points]),
                   "the runs to do (their settings and the content of what they read)")
    records = []

    def execute(point: Point, seed: int) -> None:
        model, inputs, weights_path, _ = setup.get(point.cfg)
        identity = {"hparams": point.hparams,
                    "run_hash": run_keys.run_hash(point.settings, point.strategy, seed),
                    "sweep_hash": point.sweep_hash,
                    "settings_hash": run_keys.settings_hash(point.settings, point.hparams)}
        label = f"{point.strategy} seed {seed}" + "".join(
            f" {k}={v}" for k, v in point.hparams.items())
        done = [r for r in known + records if r.get("status") == "ok"
                and r.get("run_hash") == identity["run_hash"]]
        if done:
            same = [r for r in done if r.get("sweep_hash") == identity["sweep_hash"]
                    and hparams_key(r.get("hparams")) == hparams_key(point.hparams)]
            if same:
                log(f"{label}: finished earlier in {workdir}; skipped")
                return
            # The same run under another sweep: its record is reused, not rerun.
            record = {**done[0], **identity, "experiment": point.cfg.experiment,
                      "reused_from": done[0].get("time")}
            log(f"{label}: the same run finished earlier under another sweep; reused")
        else:
            start = time.time()
            record = experiment.run_one(point.cfg, model, inputs, weights_path,
                                        point.strategy, int(seed), workdir, identity, log)
            record.update(time=time.strftime("%Y-%m-%dT%H:%M:%S"), tljax=tljax.__version__,
                          jax=jax.__version__, host=platform.node(),
                          processes=jax.process_count(),
                          wall_seconds=round(time.time() - start, 3))
        if writer:
            append_record(results, record)
            if record["status"] == "ok" and record.get("state_dir"):
                shutil.rmtree(record["state_dir"], ignore_errors=True)  # the run is recorded
        records.append(record)
        test = record["metrics"].get("test", {}).get("accuracy", float("nan"))
        log(f"{label}: test accuracy {test:.3f}, {record['trainable_params']:,}/"
            f"{record['total_params']:,} trainable, {record.get('train_seconds', 0):.1f}s "
            f"[{record['status']}]")

    seeds = [int(s) for s in cfg.seeds]

    def selected(strategy: str, grid: list, on_seeds=None) -> list:
        """Returns ``[(Selection, its grid Point)]``: the best point on validation per
        (dataset, shots), over this grid's points only (a workdir may hold points of a wider
        grid run earlier, which this config no longer offers), on ``on_seeds`` if given."""
        hashes = {p.sweep_hash for p in grid}
        offered = {hparams_key(p.hparams): p for p in grid}
        pool = [r for r in known + records if r.get("sweep_hash") in hashes
                and r.get("strategy") == strategy
                and (on_seeds is None or r.get("seed") in on_seeds)
                and hparams_key(r.get("hparams")) in offered]
        return [(chosen, offered[hparams_key(chosen.hparams)])
                for chosen in selection.select(pool, cfg.select_metric)]

    def refit(strategy: str, grid: list) -> None:
        # final_fit: the point selected on validation, refit on train+val on every seed.
        if not cfg.final_fit:
            return
        chosen_points = selected(strategy, grid)
        if not chosen_points:
            log(f"{strategy}: no grid point finished with a finite validation "
                f"{cfg.select_metric}; no {cfg.final_fit} refit")
        for chosen, point in chosen_points:
            final = final_point(point, chosen, setup.get(point.cfg)[3])
            experiment.check_train_batch(final.cfg, strategy, setup.get(final.cfg)[1])
            log(f"{strategy}: selected {chosen.hparams} on validation; refitting on "
                f"{cfg.final_fit}, seeds {seeds}")
            for seed in seeds:
                execute(final, seed)

    for strategy in cfg.strategies:
        grid = [p for p in points if p.strategy == strategy]
        n = cfg.select_seeds
        first = seeds[:n] if len(grid) > 1 and 0 < n < len(seeds) else seeds
        for point in grid:
            for seed in first:
                execute(point, seed)
        if first == seeds:
            refit(strategy, grid)
            continue
        # The rest of the seeds only at the selected point(s), chosen on validation on the
        # selection seeds.
        chosen_points = selected(strategy, grid, first)
        if not chosen_points:
            log(f"{strategy}: no grid point finished with a finite validation "
                f"{cfg.select_metric} on seeds {first}; seeds {seeds[n:]} not run")
        for chosen, point in chosen_points:
            log(f"{strategy}: selected {chosen.hparams} on validation "
                f"({cfg.select_metric} {chosen.val_mean:.4f}); running seeds {seeds[n:]}")
            for seed in seeds[n:]:
                execute(point, seed)
        refit(strategy, grid)
    return records
