"""Picking each config's hyperparameters on validation data only.

A group is one (config, strategy, dataset, shots, adaptation objective); its grid points
are the distinct swept values (``hparams``). The selected point has the best mean
validation metric over the seeds that every point of the group has finished, so running
more seeds at the chosen point afterwards cannot change the choice. Test and shifted
metrics are never read here.
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
    grid: list           # [{"hparams", "val_mean", "val_loss", "seeds", "compared_seeds"}]
    metric: str = "accuracy"
    adapt: str = "none"  # the domain adaptation objective of the group (tljax.adapt)
    split: str = "val"   # the split it was selected on (target_val: the oracle's)
    # The chosen point's lead over the runner-up on the criterion (None: one point), in
    # the metric's units and, for accuracy, in validation examples (lead x val size).
    margin: float | None = None
    margin_examples: float | None = None
    tie_broken_by_loss: bool = False  # the runner-up tied on the criterion; lower val loss won
    edge: list = dataclasses.field(default_factory=list)  # swept keys chosen at a grid end

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


def _split_size(runs: dict, split: str):
    """Returns the number of examples in ``split`` (from a record's correctness bits), or
    None when no record carries them."""
    for r in runs.values():
        field = (r.get("correct") or {}).get(split)
        if field:
            return int(field["n"])
    return None


def grid_edges(chosen: dict, grid: list) -> list:
    """Returns the swept numeric keys whose chosen value is the smallest or largest of the
    grid's (at least two) distinct values: the optimum may lie beyond the grid."""
    edges = []
    for name, value in chosen.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values = {h.get(name) for h in grid if isinstance(h.get(name), (int, float))
                  and not isinstance(h.get(name), bool)}
        if len(values) > 1 and value in (min(values), max(values)):
            edges.append(name)
    return edges


def select(records, metric: str = "accuracy", split: str = "val") -> list:
    """Returns one ``Selection`` per group with a selectable point, in order of first
    appearance. ``split`` is the split compared: ``val`` (the source's validation split),
    or ``target_val`` for the oracle selection a report shows beside it (target labels: what
    a user of domain adaptation does not have).

    Only status-ok records count. Points are compared by their mean validation ``metric``
    (accuracy, macro_f1: higher is better; loss: lower) over the seeds every point of the
    group has finished, or each point's own seeds when no seed is shared by all; ties go to
    the point with the lower mean validation loss (then the earlier point); each selection
    carries its margin over the runner-up and the swept keys it chose at a grid end
    (``grid_edges``). A point whose mean is not finite is never selected, nor one that
    failed on some seed while another point failed on none. A group whose
    points are all non-finite has no ``Selection``. Raises ``UserError`` for another metric.
    """
    if metric not in METRICS:
        raise unknown("selection metric", metric, METRICS)
    sign = 1.0 if METRICS[metric] else -1.0
    selections = []
    diverged = _diverged(records)
    # Points that failed on every seed were tried too: the grid's ends include them.
    tried = {}
    for r in records:
        if r.get("status") == "failed":
            tried.setdefault(group_key(r), []).append(r.get("hparams") or {})
    for key, group in points(records).items():
        common = set.intersection(*(set(runs) for _, runs in group.values()))
        # A point that failed (diverged) on a seed is passed over while another point never
        # failed: comparing it on its surviving seeds alone would flatter it.
        stable = [hk for hk in group if (key, hk) not in diverged]
        grid, candidates = [], []
        for hk, (hparams, runs) in group.items():
            compared = sorted(common or runs)
            mean = _mean([_val(runs[s], metric, split) for s in compared])
            loss = _mean([_val(runs[s], "loss", split) for s in compared])
            grid.append({"hparams": hparams, "val_mean": mean, "val_loss": loss,
                         "seeds": sorted(runs), "compared_seeds": compared,
                         "diverged": (key, hk) in diverged})
            if (not stable or hk in stable) and math.isfinite(mean):
                candidates.append((mean, loss, hparams, runs, compared))
        if not candidates:
            continue
        # Best criterion first; a tie goes to the lower validation loss (a NaN loss last),
        # then to grid order (sorted() is stable): not to grid order alone.
        # Means are rounded to 12 places so that a tie is not broken by summation order.
        ranked = sorted(candidates, key=lambda c: (-sign * round(c[0], 12),
                                                   c[1] if math.isfinite(c[1]) else math.inf))
        mean, _, hparams, runs, compared = ranked[0]
        margin = margin_examples = None
        tie = False
        if len(ranked) > 1:
            runner_up = ranked[1]
            margin = sign * (mean - runner_up[0])
            if round(mean, 12) == round(runner_up[0], 12):
                margin = 0.0
                # Said only where the loss decided: not for the loss itself, nor for equal
                # or missing losses, which leave the choice to grid order.
                tie = (metric != "loss" and math.isfinite(ranked[0][1])
                       and math.isfinite(runner_up[1]) and ranked[0][1] != runner_up[1])
            n_val = _split_size(runs, split)
            if metric == "accuracy" and n_val:
                margin_examples = margin * n_val
        sweep_hash, strategy, dataset, shots, adapt = key
        selections.append(Selection(
            strategy=strategy, dataset=dataset, shots=shots, sweep_hash=sweep_hash,
            hparams=hparams, records=[runs[s] for s in sorted(runs)], val_mean=mean,
            compared_seeds=compared, grid=grid, metric=metric, adapt=adapt, split=split,
            margin=margin, margin_examples=margin_examples, tie_broken_by_loss=tie,
            edge=grid_edges(hparams, [g["hparams"] for g in grid] + tried.get(key, []))))
    return selections
