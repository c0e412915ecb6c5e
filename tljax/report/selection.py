"""Picking each config's hyperparameters on validation data only.

A group is one (config, strategy, dataset, shots, adaptation objective); its grid points
are the distinct swept values (``hparams``). The selected point has the best mean validation metric over the seeds
that every point of the group has finished, so running more seeds at the chosen point
afterwards cannot change the choice. Test and shifted metrics are never read here.
"""

import dataclasses
import math

from tljax.errors import unknown
from tljax.report.records import config_key, hparams_key, method_name

# Selection metrics on the validation split: True where higher is better.
METRICS = {"accuracy": True, "macro_f1": True, "loss": False}


@dataclasses.dataclass
class Selection:
    """The chosen grid point of one group, and the whole grid it was chosen from."""

    strategy: str
    dataset: str
    shots: int
    sweep_hash: str
    hparams: dict
    records: list        # the chosen point's ok records, one per seed, by seed
    val_mean: float      # the criterion: mean val metric over ``compared_seeds``
    compared_seeds: list
    grid: list           # [{"hparams", "val_mean", "seeds", "compared_seeds"}], grid order
    metric: str = "accuracy"
    adapt: str = "none"  # the domain adaptation objective of the group (tljax.adapt)
    split: str = "val"   # the split it was selected on (target_val: the oracle's)

    @property
    def name(self) -> str:
        """Returns the strategy, with its adaptation objective if any (``full_ft+dann``)."""
        return method_name(self.strategy, self.adapt)

    @property
    def seeds(self) -> list:
        """Returns the seeds of the chosen point's records."""
        return [r["seed"] for r in self.records]

    @property
    def key(self) -> tuple:
        """Returns the group key ``(sweep_hash, strategy, dataset, shots, adapt)``."""
        return (self.sweep_hash, self.strategy, self.dataset, self.shots, self.adapt)


def group_key(record: dict) -> tuple:
    """Returns a record's group ``(config hash, strategy, dataset, shots, adapt)``: each
    adaptation objective selects its own point, as each dataset and shots does."""
    return (config_key(record), record.get("strategy"), record.get("dataset"),
            record.get("shots", 0), record.get("adapt", "none"))


def points(records) -> dict:
    """Returns ``{group key: {hparams key: (hparams, {seed: record})}}`` over the ok records,
    groups and points in order of first appearance; a repeated seed keeps the last record."""
    groups = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        hparams = r.get("hparams") or {}
        group = groups.setdefault(group_key(r), {})
        _, runs = group.setdefault(hparams_key(hparams), (hparams, {}))
        runs[int(r["seed"])] = r
    return groups


def _val(record: dict, metric: str, split: str = "val") -> float:
    # Reads the validation split only: selection must not see test labels.
    value = (record.get("metrics") or {}).get(split, {}).get(metric)
    return math.nan if value is None else float(value)


def _mean(values) -> float:
    return sum(values) / len(values) if values else math.nan


def _diverged(records) -> set:
    """Returns the ``(group key, hparams key)`` points with a seed whose every record failed."""
    ok = {(group_key(r), hparams_key(r.get("hparams") or {}), r.get("seed"))
          for r in records if r.get("status") == "ok"}
    return {(group_key(r), hparams_key(r.get("hparams") or {})) for r in records
            if r.get("status") == "failed"
            and (group_key(r), hparams_key(r.get("hparams") or {}), r.get("seed")) not in ok}


def select(records, metric: str = "accuracy", split: str = "val") -> list:
    """Returns one ``Selection`` per group with a selectable point, in order of first
    appearance. ``split`` is the split compared: ``val`` (the source's validation split),
    or ``target_val`` for the oracle selection a report shows beside it (target labels: what
    a user of domain adaptation does not have).

    Only status-ok records count. Points are compared by their mean validation ``metric``
    (accuracy, macro_f1: higher is better; loss: lower) over the seeds every point of the
    group has finished, or each point's own seeds when no seed is shared by all; ties go to
    the earlier point; a point whose mean is not finite is never selected, nor one that
    failed on some seed while another point failed on none. A group whose
    points are all non-finite has no ``Selection``. Raises ``UserError`` for another metric.
    """
    if metric not in METRICS:
        raise unknown("selection metric", metric, METRICS)
    sign = 1.0 if METRICS[metric] else -1.0
    selections = []
    diverged = _diverged(records)
    for key, group in points(records).items():
        common = set.intersection(*(set(runs) for _, runs in group.values()))
        # A point that failed (diverged) on a seed is passed over while another point never
        # failed: comparing it on its surviving seeds alone would flatter it.
        stable = [hk for hk in group if (key, hk) not in diverged]
        grid, best = [], None
        for hk, (hparams, runs) in group.items():
            compared = sorted(common or runs)
            mean = _mean([_val(runs[s], metric, split) for s in compared])
            grid.append({"hparams": hparams, "val_mean": mean, "seeds": sorted(runs),
                         "compared_seeds": compared, "diverged": (key, hk) in diverged})
            if stable and hk not in stable:
                continue
            if math.isfinite(mean) and (best is None or sign * mean > sign * best[0]):
                best = (mean, hparams, runs, compared)
        if best is None:
            continue
        mean, hparams, runs, compared = best
        sweep_hash, strategy, dataset, shots, adapt = key
        selections.append(Selection(
            strategy=strategy, dataset=dataset, shots=shots, sweep_hash=sweep_hash,
            hparams=hparams, records=[runs[s] for s in sorted(runs)], val_mean=mean,
            compared_seeds=compared, grid=grid, metric=metric, adapt=adapt, split=split))
    return selections
