"""Plan -> records: the phases of each strategy, skipping finished runs and resuming
unfinished ones.

Per strategy (``tljax.run.plan.StrategyPlan``): every grid point runs on the first seeds
(``select_seeds``); then, per (dataset, shots), the point with the best mean validation
``select_metric`` (``tljax.report.selection``; test and shifted splits are never read)
runs on the remaining seeds. With ``final_fit="train+val"`` (VTAB), that selected point is
then trained again on train and val together, on every seed (``plan.final_point``); those
records carry ``final_fit`` in their hparams and form a summary row of their own.

Every run is keyed by its ``run_hash`` (``tljax.run.identity``): a rerun skips every run
whose record says ``ok`` under the same hash, and resumes an unfinished one from its
checkpoint. Each record is appended to ``workdir/results.jsonl`` as the run finishes.
"""

import os
import platform
import shutil
import time

import jax

import tljax
from tljax import parallel
from tljax.report.records import hparams_key
from tljax.run import plan as planning
from tljax.run.execute import execute
from tljax.run.records import append_record, host_cpu
from tljax.run.resources import Resources


def enable_compilation_cache() -> None:
    """Keeps compiled steps on disk: the same strategy under another seed (or run) then
    skips XLA compilation, which costs seconds per step function on CPU."""
    path = os.environ.get("TLJAX_COMPILATION_CACHE",
                          os.path.expanduser("~/.cache/tljax/jax_compilation_cache"))
    jax.config.update("jax_compilation_cache_dir", path)
    # TLJAX_CACHE_MIN_COMPILE_SECS=0 caches every program (tests that need a warm cache).
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("TLJAX_CACHE_MIN_COMPILE_SECS", "0.5")))


class _Sweep:
    """The records known and made in one workdir, and how each run is done or skipped."""

    def __init__(self, the_plan: planning.Plan, resources: Resources, workdir: str, log):
        from tljax import report

        self.plan, self.resources, self.workdir, self.log = the_plan, resources, workdir, log
        self.results = os.path.join(workdir, "results.jsonl")
        self.known = report.read_results(self.results) if os.path.isfile(self.results) else []
        self.records = []

    def run(self, spec: planning.RunSpec) -> None:
        """Runs ``spec`` unless a record says it finished; appends its record."""
        ident, label = spec.identity, spec.label
        done = [r for r in self.known + self.records if r.get("status") == "ok"
                and r.get("run_hash") == spec.run_hash]
        if done:
            same = [r for r in done if r.get("sweep_hash") == ident["sweep_hash"]
                    and hparams_key(r.get("hparams")) == hparams_key(ident["hparams"])]
            if same:
                self.log(f"{label}: finished earlier in {self.workdir}; skipped")
                return
            # The same run under another sweep: its record is reused, not rerun.
            record = {**done[0], **ident, "experiment": spec.cfg.experiment,
                      "reused_from": done[0].get("time")}
            self.log(f"{label}: the same run finished earlier under another sweep; reused")
        else:
            start = time.time()
            record = execute(spec, self.resources, self.workdir, self.log)
            record.update(time=time.strftime("%Y-%m-%dT%H:%M:%S"), tljax=tljax.__version__,
                          jax=jax.__version__, host=platform.node(), cpu=host_cpu(),
                          processes=jax.process_count(),
                          wall_seconds=round(time.time() - start, 3))
        if jax.process_index() == 0:  # one writer in a multi-process run
            append_record(self.results, record)
            if record["status"] == "ok" and record.get("state_dir"):
                shutil.rmtree(record["state_dir"], ignore_errors=True)  # the run is recorded
        self.records.append(record)
        test = record["metrics"].get("test", {}).get("accuracy", float("nan"))
        self.log(f"{label}: test accuracy {test:.3f}, {record['trainable_params']:,}/"
                 f"{record['total_params']:,} trainable, {record.get('train_seconds', 0):.1f}s "
                 f"[{record['status']}]")

    def selected(self, strategy: str, grid: tuple, on_seeds=None) -> list:
        """Returns ``[(Selection, its grid Point)]``: the best point on validation per
        (dataset, shots), over this grid's points only (a workdir may hold points of a wider
        grid run earlier, which this plan no longer offers), on ``on_seeds`` if given."""
        from tljax.report import selection

        hashes = {p.sweep_hash for p in grid}
        offered = {hparams_key(p.hparams): p for p in grid}
        pool = [r for r in self.known + self.records if r.get("sweep_hash") in hashes
                and r.get("strategy") == strategy
                and (on_seeds is None or r.get("seed") in on_seeds)
                and hparams_key(r.get("hparams")) in offered]
        return [(chosen, offered[hparams_key(chosen.hparams)])
                for chosen in selection.select(pool, self.plan.select_metric)]

    def strategy(self, phases: planning.StrategyPlan) -> None:
        """Runs one strategy's phases: grid, the selected point's other seeds, refit."""
        name, grid, first, rest = (phases.strategy, phases.grid, phases.first_seeds,
                                   phases.rest_seeds)
        metric = self.plan.select_metric
        for point in grid:
            for seed in first:
                self.run(planning.spec(point, seed, "grid"))
        if rest:
            # The rest of the seeds only at the selected point(s), chosen on validation on
            # the selection seeds.
            chosen_points = self.selected(name, grid, first)
            if not chosen_points:
                self.log(f"{name}: no grid point finished with a finite validation {metric} "
                         f"on seeds {list(first)}; seeds {list(rest)} not run")
            for chosen, point in chosen_points:
                self.log(f"{name}: selected {chosen.hparams} on validation ({metric} "
                         f"{chosen.val_mean:.4f}); running seeds {list(rest)}")
                for seed in rest:
                    self.run(planning.spec(point, seed, "selected"))
        if not self.plan.final_fit:
            return
        # final_fit: the point selected on validation, refit on train+val on every seed.
        chosen_points = self.selected(name, grid)
        if not chosen_points:
            self.log(f"{name}: no grid point finished with a finite validation {metric}; "
                     f"no {self.plan.final_fit} refit")
        for chosen, point in chosen_points:
            l2s = [r["probe"]["l2"] for r in chosen.records if r.get("probe")]
            final = planning.final_point(point, l2s, self.resources)
            self.log(f"{name}: selected {chosen.hparams} on validation; refitting on "
                     f"{self.plan.final_fit}, seeds {list(self.plan.seeds)}")
            for seed in self.plan.seeds:
                self.run(planning.spec(final, seed, "final"))


def prepare(cfg, workdir: str | None, log=print) -> tuple:
    """Returns ``(plan, resources)`` of ``cfg``: every user error is raised here, and the
    config is read nowhere after."""
    enable_compilation_cache()
    resources = Resources(cfg, workdir, log)
    return planning.make(cfg, resources, workdir, log), resources


def run(cfg, workdir: str, log=print) -> list:
    """Runs every run of ``cfg``'s plan not finished earlier; appends each record to
    ``workdir/results.jsonl`` as it finishes and returns the records of this call."""
    return run_plan(*prepare(cfg, workdir, log), workdir, log)


def run_plan(the_plan: planning.Plan, resources: Resources, workdir: str, log=print) -> list:
    """Runs every run of ``the_plan`` not finished earlier (``run``); returns the records of
    this call."""
    sweep = _Sweep(the_plan, resources, workdir, log)
    # No process appends a record before every process has read the file: they all skip
    # and run the same runs.
    parallel.barrier("tljax: results read")
    for phases in the_plan.strategies:
        sweep.strategy(phases)
    return sweep.records


def probe_only(cfg, log=lambda msg: None) -> list:
    """Returns the record of every run of ``cfg``'s plan (``tljax probe``: a cached-feature
    probe per swept ``shots`` and seed), nothing read from or written to a workdir."""
    the_plan, resources = prepare(cfg, None, log)
    return [execute(planning.spec(point, seed, "grid"), resources, None, log)
            for point in the_plan.points() for seed in the_plan.seeds]
