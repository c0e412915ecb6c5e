"""Paired comparisons of two methods at their selected points: per-seed differences.

The runs of one config share their data order and initialisation seed by seed, so the
difference of two methods' accuracies on the same seed is the statistic to average: the
spread that seeds add to both cancels. For methods A and B on the same dataset and shots,
over the seeds both selected points have, each evaluated split both have (test, shifted
splits, the adaptation target; never a validation split) gets one ``PairedRow``: the
per-seed differences A - B, their mean, sample std and Student-t 95% interval, a sign
count, and a paired bootstrap over the split's examples (the same resampled examples for
both methods and every seed).

    rows = paired.compare(select(records), "full_ft", "linear_probe")
    print(paired.table(rows)); print(paired.verdict(rows[0]))
"""

import dataclasses
import math

import numpy as np

from tljax.errors import UserError, unknown
from tljax.report import stats
from tljax.report.records import metric, shifted_names, shots_text

# Splits a comparison never reads: training fit and the splits hyperparameters were
# selected on (val; target_val, which the oracle selection reads) say nothing held out.
SKIPPED_SPLITS = ("train", "val", "target_val")
RESAMPLES = 2000
_TIE = 1e-12  # two accuracies this close are the same count of examples: a tie


@dataclasses.dataclass
class PairedRow:
    """Method ``a`` against method ``b`` on one split of one dataset and shots."""

    a: str
    b: str
    dataset: str
    shots: int
    split: str
    seeds: list          # the seeds both have a finite accuracy on, ascending
    diffs: list          # accuracy of a minus b, one per seed of ``seeds``
    a_mean: float        # a's mean accuracy over ``seeds``
    b_mean: float
    mean: float          # mean of ``diffs`` (NaN without seeds)
    std: float           # sample std of ``diffs`` (NaN with fewer than two)
    ci95: tuple          # Student-t 95% interval of ``mean``; None with fewer than two
    ahead: int           # seeds where a is ahead
    behind: int          # seeds where b is ahead
    ties: int
    bootstrap_ci95: tuple  # paired bootstrap over examples; None without every seed's bits
    a_config: str = ""   # the selected points' sweep hashes (several configs tell apart)
    b_config: str = ""
    a_experiment: str = ""  # the selected points' experiments (config names)
    b_experiment: str = ""

    @property
    def n(self) -> int:
        """Returns the number of seeds compared."""
        return len(self.seeds)


def record_pairs(records) -> list:
    """Returns the ``(A, B)`` method pairs the records' ``compare`` fields name (the
    config's ``compare`` key), each once, in order of first appearance; malformed entries
    (not two names) are passed over: the config check rejects them before any run."""
    pairs = []
    for r in records:
        for pair in r.get("compare") or ():
            if (isinstance(pair, (list, tuple)) and len(pair) == 2
                    and all(isinstance(x, str) for x in pair) and tuple(pair) not in pairs):
                pairs.append(tuple(pair))
    return pairs


def _by_place(selections, name: str) -> dict:
    """Returns ``{(dataset, shots): [selections of method name]}`` in order of appearance."""
    out = {}
    for sel in selections:
        if sel.name == name:
            out.setdefault((sel.dataset, sel.shots), []).append(sel)
    return out


def _matches(a_sels: list, b_sels: list) -> list:
    """Returns the ``(a selection, b selection)`` pairs of one dataset and shots: each of
    a's selections with b's of the same experiment where b has one (merged workdirs can
    hold several configs), else with every b (a baseline run once, in one experiment,
    serves the others: Yosinski's base in ``:AnB`` for ``:BnB``), and the same the other
    way round for b's selections no a of theirs was paired with."""
    def experiment(sel):
        return sel.records[0].get("experiment")

    pairs = []
    for x in a_sels:
        same = [y for y in b_sels if experiment(y) == experiment(x)]
        pairs += [(x, y) for y in (same or b_sels)]
    for y in b_sels:
        if not any(experiment(x) == experiment(y) for x in a_sels):
            pairs += [(x, y) for x in a_sels if (x, y) not in pairs]
    return pairs


def _splits(a_records: list, b_records: list) -> list:
    """Returns ``test`` then every other evaluated split both methods' records have, in
    order of appearance in a's records."""
    def names(records):
        found = []
        for r in records:
            found += [n for n in shifted_names(r) if n not in found]
        return found

    theirs = set(names(b_records))
    return ["test"] + [n for n in names(a_records)
                       if n in theirs and n != "test" and n not in SKIPPED_SPLITS]


def paired_bootstrap_ci95(a_correct, b_correct, resamples: int = RESAMPLES, seed: int = 0):
    """Returns the 95% percentile-bootstrap interval ``(lo, hi)`` of the mean over seeds of
    accuracy(a) - accuracy(b), resampling the examples: one draw of example indices per
    resample serves both methods and every seed (they saw the same examples), so what the
    two methods get right together cancels. None without seeds, when the seed counts differ,
    or when the vectors differ in size.

    ``a_correct``, ``b_correct``: one boolean vector per seed, in the same seed order. The
    generator is seeded: the interval is the same on every call.
    """
    a = [np.asarray(c, dtype=bool).ravel() for c in a_correct]
    b = [np.asarray(c, dtype=bool).ravel() for c in b_correct]
    if not a or len(a) != len(b) or len({v.size for v in a + b}) != 1 or a[0].size == 0:
        return None
    # The mean over seeds of the accuracy difference is the mean over examples of this.
    per_example = np.mean(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=0)
    return stats.percentile_bootstrap95(per_example, resamples, seed)


def _bits(record: dict, split: str):
    field = (record.get("correct") or {}).get(split)
    return stats.decode_correct(field) if field else None


def _row(a_sel, b_sel, split: str, seeds: list, resamples: int) -> PairedRow:
    a_runs = {r["seed"]: r for r in a_sel.records}
    b_runs = {r["seed"]: r for r in b_sel.records}
    # A seed counts on a split only where both runs have a finite accuracy on it.
    seeds = [s for s in seeds if stats.is_finite(metric(a_runs[s], split))
             and stats.is_finite(metric(b_runs[s], split))]
    a_acc = [metric(a_runs[s], split) for s in seeds]
    b_acc = [metric(b_runs[s], split) for s in seeds]
    diffs = [x - y for x, y in zip(a_acc, b_acc)]
    mean, std = stats.mean_std(diffs)
    a_bits = [_bits(a_runs[s], split) for s in seeds]
    b_bits = [_bits(b_runs[s], split) for s in seeds]
    # Every seed must carry its bits: the interval is of the mean over all of them.
    complete = all(v is not None for v in a_bits + b_bits)
    return PairedRow(
        a=a_sel.name, b=b_sel.name, dataset=a_sel.dataset, shots=a_sel.shots, split=split,
        seeds=seeds, diffs=diffs, a_mean=stats.mean_std(a_acc)[0],
        b_mean=stats.mean_std(b_acc)[0], mean=mean, std=std, ci95=stats.t_ci95(diffs),
        ahead=sum(d > _TIE for d in diffs), behind=sum(d < -_TIE for d in diffs),
        ties=sum(abs(d) <= _TIE for d in diffs),
        bootstrap_ci95=paired_bootstrap_ci95(a_bits, b_bits, resamples) if complete else None,
        a_config=a_sel.sweep_hash, b_config=b_sel.sweep_hash,
        a_experiment=str(a_sel.records[0].get("experiment") or ""),
        b_experiment=str(b_sel.records[0].get("experiment") or ""))


def compare(selections, a: str, b: str, resamples: int = RESAMPLES) -> list:
    """Returns the ``PairedRow``s of method ``a`` against method ``b`` (``Selection.name``s,
    e.g. ``full_ft``, ``full_ft+dann``): per dataset and shots both were selected on, one
    row per split both evaluated, test first. Rows of one dataset and shots with no common
    seed have ``n`` 0.

    Raises ``UserError`` naming the valid method names when ``a`` or ``b`` is no selected
    method, when they are the same, or when they share no dataset and shots.
    """
    names = []
    for sel in selections:
        if sel.name not in names:
            names.append(sel.name)
    for name in (a, b):
        if name not in names:
            raise unknown("method to compare", name, names or ["(no selected runs)"])
    if a == b:
        raise UserError(f"compare needs two different methods; got {a!r} twice")
    a_places, b_places = _by_place(selections, a), _by_place(selections, b)
    shared = [p for p in a_places if p in b_places]
    if not shared:
        def where(places):
            return ", ".join(f"{d} shots {shots_text(k)}" for d, k in places)

        raise UserError(f"{a!r} and {b!r} share no dataset and shots ({a}: {where(a_places)}; "
                        f"{b}: {where(b_places)}); known methods: {', '.join(sorted(names))}")
    rows = []
    for place in shared:
        for a_sel, b_sel in _matches(a_places[place], b_places[place]):
            seeds = sorted(set(a_sel.seeds) & set(b_sel.seeds))
            common = [r for r in a_sel.records if r["seed"] in seeds]
            other = [r for r in b_sel.records if r["seed"] in seeds]
            for split in _splits(common, other):
                row = _row(a_sel, b_sel, split, seeds, resamples)
                if row.n or split == "test":  # a split no common seed evaluated: no row
                    rows.append(row)
    return rows


def compare_all(selections, pairs, strict=(), resamples: int = RESAMPLES) -> tuple:
    """Returns ``(rows, notes)``: the rows of every pair in ``pairs`` (a pair given twice
    counts once), and one line per pair that cannot be compared saying why. A pair in
    ``strict`` (the user's own on the command line) raises its ``UserError`` instead."""
    rows, notes, seen = [], [], []
    strict = {tuple(p) for p in strict}
    for pair in pairs:
        pair = tuple(pair)
        if pair in seen:
            continue
        seen.append(pair)
        try:
            rows += compare(selections, *pair, resamples=resamples)
        except UserError as e:
            if pair in strict:
                raise
            notes.append(f"{pair[0]} vs {pair[1]}: not compared: {e}")
    return rows, notes


def _signed(x: float) -> str:
    return "-" if not stats.is_finite(x) else f"{x:+.3f}"


def _interval(ci) -> str:
    return "n/a" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _winner(row: PairedRow):
    """Returns ``a`` or ``b`` when the t interval excludes 0 on its side, else None."""
    if row.ci95 is None:
        return None
    lo, hi = row.ci95
    return row.a if lo > 0 else row.b if hi < 0 else None


def _ambiguous(rows: list) -> bool:
    """Returns whether some method of ``rows`` ran under several experiments, so a verdict
    must say which (``transfer_n:1 (BnB)``)."""
    seen = {}
    for row in rows:
        for name, experiment in ((row.a, row.a_experiment), (row.b, row.b_experiment)):
            seen.setdefault(name, set()).add(experiment)
    return any(len(experiments) > 1 for experiments in seen.values())


def verdict(row: PairedRow, place: bool = False, experiments: bool = False) -> str:
    """Returns one line on ``row``: ``A ahead of B on SPLIT: +x.xxx [lo, hi], k/n seeds``
    when the t interval of the mean difference excludes 0 (named the other way round when
    B is ahead), else that no difference is shown, or that the interval is undefined with
    fewer than two common seeds. ``place`` adds the dataset and shots (``on test of
    digits@invert:5, 10-shot``), for a report over several; ``experiments`` names each
    method's experiment, for methods that ran under several."""
    if experiments:
        row = dataclasses.replace(row, a=f"{row.a} ({row.a_experiment})",
                                  b=f"{row.b} ({row.b_experiment})")
    where = f"on {row.split}"
    if place:
        shots = f", {shots_text(row.shots)}-shot" if row.shots else ""
        where += f" of {row.dataset}{shots}"
    if row.ci95 is None:
        return (f"{row.a} vs {row.b} {where}: {row.n} common seed(s); the interval is "
                "undefined (needs 2)")
    lo, hi = row.ci95
    ties = f", {row.ties} tied" if row.ties else ""
    if _winner(row) == row.a:
        return (f"{row.a} ahead of {row.b} {where}: {row.mean:+.3f} [{lo:.3f}, {hi:.3f}], "
                f"{row.ahead}/{row.n} seeds{ties}")
    if _winner(row) == row.b:
        return (f"{row.b} ahead of {row.a} {where}: {-row.mean:+.3f} [{-hi:.3f}, {-lo:.3f}], "
                f"{row.behind}/{row.n} seeds{ties}")
    return (f"{row.a} vs {row.b} {where}: no difference shown (interval includes 0): "
            f"{row.mean:+.3f} [{lo:.3f}, {hi:.3f}]")


def _short_verdict(row: PairedRow) -> str:
    if row.ci95 is None:
        return "undefined (< 2 seeds)"
    winner = _winner(row)
    return f"{winner} ahead" if winner else "no difference shown"


def table(rows: list) -> str:
    """Returns the Markdown table of ``rows``: one line per pair, dataset, shots and split,
    with the configs' sweep hashes when one method has several on a dataset and shots."""
    places = {}
    for row in rows:
        places.setdefault((row.a, row.b, row.dataset, row.shots), set()).add(
            (row.a_config, row.b_config))
    several = any(len(configs) > 1 for configs in places.values())
    head = ["A", "B", "dataset", "shots"] + (["configs (A / B)"] if several else []) + [
        "split", "seeds", "A − B (mean ± sample std)", "t 95% CI", "bootstrap 95% CI",
        "A ahead", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        spread = "n/a" if not stats.is_finite(row.std) else f"{row.std:.3f}"
        ahead = f"{row.ahead}/{row.n}" + (f" ({row.ties} tied)" if row.ties else "")
        cells = [row.a, row.b, row.dataset, shots_text(row.shots)]
        cells += [f"{row.a_experiment} {row.a_config} / {row.b_experiment} {row.b_config}"
                  ] if several else []
        cells += [row.split, ", ".join(map(str, row.seeds)) or "-",
                  f"{_signed(row.mean)} ± {spread}", _interval(row.ci95),
                  _interval(row.bootstrap_ci95), ahead, _short_verdict(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _clean(x):
    """Returns ``x`` with NaN as None and tuples as lists (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def to_json(rows: list) -> list:
    """Returns one strict-JSON dict per row: its fields, ``n`` and its ``verdict``."""
    return [{**{k: _clean(v) for k, v in dataclasses.asdict(row).items()}, "n": row.n,
             "verdict": verdict(row)} for row in rows]


def section(rows: list, notes: list) -> str:
    """Returns the report's paired section body: the table, one verdict per row, and the
    pairs that could not be compared; '' when there is nothing."""
    parts = []
    if rows:
        several = len({(row.dataset, row.shots) for row in rows}) > 1
        named = _ambiguous(rows)
        parts += [table(rows), "\n".join(f"- {verdict(row, several, named)}" for row in rows)]
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    return "\n\n".join(parts)
