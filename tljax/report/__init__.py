"""Result records -> a report: Markdown and CSV tables, a JSON summary and PNG plots.

Hyperparameters are selected on validation data per (config, strategy, dataset, shots)
(``selection``); the summary then gives the selected point's test accuracy over its seeds
with a sample std, a t interval over seeds and a bootstrap interval over test examples.

    records = report.read_results("runs/x/results.jsonl")
    report.write(records, "runs/x")  # results.md, results.csv, summary.csv, report.json, plots/
"""

import json
import os

from tljax.report import adaptation, learning, paired, plots, selection, tables, transfer
from tljax.report.records import read_results, read_workdirs
from tljax.report.selection import METRICS, Selection, select
from tljax.report.stats import decode_correct, encode_correct

__all__ = ["read_results", "read_workdirs", "select", "Selection", "METRICS",
           "encode_correct", "decode_correct", "title_of", "markdown", "summary", "write",
           "write_plots", "paired"]


def title_of(records: list) -> str:
    """Returns the report title: the records' experiment name(s), ``Results`` without one."""
    names = []
    for r in records:
        if r.get("experiment") and r["experiment"] not in names:
            names.append(str(r["experiment"]))
    return " + ".join(names) or "Results"


def _several_configs(records: list) -> bool:
    """Returns whether some (strategy, dataset, shots) has runs of more than one config, so
    tables and plots must tell the configs apart (a strategy's own overrides alone give it a
    hash of its own, which needs no column)."""
    keys = {selection.group_key(r) for r in records}
    return len(keys) > len({k[1:] for k in keys})


def _paired(records: list, selections: list, compare=()) -> tuple:
    """Returns ``(rows, notes)`` of the paired comparisons: the pairs the records' ``compare``
    fields name, then ``compare`` (the user's own pairs, whose bad names raise
    ``UserError``; a record's bad pair is a note: the runs are done, the report must be
    written)."""
    compare = [tuple(p) for p in compare or ()]
    return paired.compare_all(selections, paired.record_pairs(records) + compare,
                              strict=compare)


def _json(rows: list, n_runs: int, paired_rows: list) -> dict:
    return {**tables.summary_json(rows, n_runs), "paired": paired.to_json(paired_rows)}


def summary(records: list, metric: str = "accuracy", compare=()) -> dict:
    """Returns ``{"selected": [one dict per selected (strategy, dataset, shots)], "runs": N,
    "paired": [one dict per compared pair, dataset, shots and split]}`` (the ``--json``
    output and ``report.json``); ``compare``: more ``(A, B)`` method pairs to compare."""
    selections = select(records, metric)
    paired_rows, _ = _paired(records, selections, compare)
    return _json(tables.summary_rows(selections), len(records), paired_rows)


def markdown(records: list, title: str = None, metric: str = "accuracy", compare=()) -> str:
    """Returns the Markdown report: the selected point per (strategy, dataset, shots), the
    paired comparisons the records name and ``compare`` adds (``(A, B)`` method pairs), the
    whole grid when anything was swept, then every run. Raises ``UserError`` for a pair of
    ``compare`` that cannot be matched."""
    selections = select(records, metric)
    return _markdown(records, selections, tables.summary_rows(selections), title, metric,
                     _paired(records, selections, compare))


def _markdown(records, selections, rows, title, metric, compared=((), ())) -> str:
    several = _several_configs(records)
    parts = [f"# {title or title_of(records)}",
             f"Hyperparameters selected on validation {metric} (mean over the seeds every "
             "grid point finished); test columns are the selected point over all its seeds. "
             "Std is the sample std (ddof=1), n/a with one seed.",
             "## Summary", tables.summary_table(rows, several)]
    pivot = tables.by_dataset_table(rows)
    if pivot:
        parts += ["## Test accuracy by dataset and strategy (selected points)", pivot]
    pairs = paired.section(*compared)
    if pairs:
        parts += ["## Paired comparisons (per-seed differences, selected points)",
                  "A − B per seed on the seeds both have (they share data order and "
                  "initialisation), then over seeds: mean, sample std, Student-t 95% CI; the "
                  "bootstrap resamples examples, the same ones for both methods and every "
                  "seed.", pairs]
    adapted = adaptation.adaptation_table(records, selections, metric)
    if adapted:
        parts += ["## Domain adaptation (target accuracy; honest vs oracle selection)", adapted]
    curves = transfer.transfer_table(rows)
    if curves:
        parts += ["## Transfer of the first N blocks (test accuracy, mean ± sample std; "
                  "SOURCE: copied blocks frozen, SOURCE+: fine-tuned)", curves]
    if any(len(sel.grid) > 1 for sel in selections):
        parts += ["## Grid", tables.grid_table(records, selections, several)]
    parts += ["## Runs", tables.runs_table(records, several)]
    parts += [f"- {note}" for note in tables.notes(records, selections)]
    return "\n\n".join(parts) + "\n"


def write_plots(records: list, out_dir: str, metric: str = "accuracy") -> list:
    """Writes the report's PNG figures that have data into ``out_dir``; returns their paths."""
    selections = select(records, metric)
    return _plots(tables.summary_rows(selections), selections, out_dir,
                  _several_configs(records))


def _plots(rows: list, selections: list, out_dir: str, several: bool) -> list:
    paths = plots.write_all(rows, selections, out_dir, several)
    more = [learning.learning_curves(selections, out_dir, several),
            adaptation.target_vs_source(selections, out_dir)]
    return paths + [p for p in more if p]


def write(records: list, workdir: str, title: str = None, metric: str = "accuracy") -> str:
    """Writes ``results.md``, ``results.csv`` (one row per run), ``summary.csv``,
    ``report.json`` (with the paired comparisons the records name under ``paired``) and
    ``plots/*.png`` into ``workdir``; returns the Markdown."""
    selections = select(records, metric)
    rows = tables.summary_rows(selections)
    compared = _paired(records, selections)
    text = _markdown(records, selections, rows, title, metric, compared)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    tables.write_csv(os.path.join(workdir, "results.csv"), tables.run_rows(records, selections))
    tables.write_csv(os.path.join(workdir, "summary.csv"), tables.flat_summary(rows))
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(_json(rows, len(records), compared[0]), f, indent=1)
    _plots(rows, selections, os.path.join(workdir, "plots"), _several_configs(records))
    return text
