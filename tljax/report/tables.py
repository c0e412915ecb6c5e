"""Summary, grid and per-run tables (Markdown and CSV) and the JSON summary."""

import csv
import json
import math

from tljax.report import stats
from tljax.report.records import (CORE_SPLITS, config_key, hparams_key, hparams_text,
                                  method_name, metric, shifted_names, shots_text)
from tljax.report.selection import points


def _features(records: list):
    """Returns where a probe's features came from (``cached``, ``extracted``, ``cached k/n``),
    or None for runs that extract none."""
    hits = [bool(r["probe"].get("feature_cache_hit")) for r in records if r.get("probe")]
    if not hits:
        return None
    if all(hits):
        return "cached"
    return f"cached {sum(hits)}/{len(hits)}" if any(hits) else "extracted"


def _mean(values) -> float:
    return stats.mean_std(values)[0]


def _shifted(records: list) -> list:
    names = []
    for r in records:
        names += [n for n in shifted_names(r) if n not in names]
    return names


def _probe_edges(records: list) -> list:
    """Returns ``["probe l2"]`` when some seed's probe chose the smallest or largest L2 of
    its grid, else []."""
    for r in records:
        sweep = (r.get("probe") or {}).get("sweep") or []
        grid = [p["l2"] for p in sweep]
        if len(grid) > 1 and r["probe"].get("l2") in (min(grid), max(grid)):
            return ["probe l2"]
    return []


def _margin_cell(row: dict) -> str:
    """Returns the selection margin: the chosen point's lead over the runner-up, in
    validation examples where the split size is known (``+1.5 ex``), with the swept keys
    chosen at a grid end."""
    if row.get("select_margin") is None:
        text = "- (one point)" if row.get("grid_points", 1) <= 1 else \
            "- (no finite runner-up)"
    elif row.get("tie_broken_by_loss"):
        text = "0 (tie; lower val loss)"
    elif row["select_margin"] == 0.0:
        text = "0 (tie; grid order)"
    elif row.get("select_margin_examples") is not None:
        text = f"+{row['select_margin_examples']:.1f} ex"
    else:
        text = f"+{row['select_margin']:.4f}"
    edge = row.get("grid_edge") or []
    return text + (f"; {', '.join(edge)} at grid end" if edge else "")


def summary_rows(selections: list) -> list:
    """Returns one dict per selection: its hparams, validation and test accuracy over the
    chosen point's seeds (mean, sample std, t and bootstrap 95% CIs), shifted accuracy,
    trainable fraction, seconds per run and where probe features came from."""
    rows = []
    for sel in selections:
        rs = sel.records
        tests = [metric(r, "test") for r in rs]
        test, test_std = stats.mean_std(tests)
        correct = [stats.decode_correct(r["correct"]["test"]) for r in rs
                   if (r.get("correct") or {}).get("test")]
        probes = [r["probe"] for r in rs if r.get("probe")]
        first = rs[0]
        rows.append({
            "strategy": sel.name, "adapt": sel.adapt, "dataset": sel.dataset,
            "shots": sel.shots,
            "experiment": first.get("experiment", ""),
            "settings_hash": first.get("settings_hash", ""),
            "sweep_hash": sel.sweep_hash, "hparams": sel.hparams, "seeds": sel.seeds,
            "val": _mean([metric(r, "val") for r in rs]),
            "val_select": sel.val_mean, "select_metric": sel.metric,
            "select_margin": sel.margin, "select_margin_examples": sel.margin_examples,
            "tie_broken_by_loss": sel.tie_broken_by_loss,
            "grid_edge": sel.edge + _probe_edges(rs), "grid_points": len(sel.grid),
            "test": test, "test_std": test_std, "test_ci95": stats.t_ci95(tests),
            # Every seed must carry its bits: the interval is of the mean over all of them.
            "test_bootstrap_ci95": stats.bootstrap_ci95(correct) if len(correct) == len(rs)
            else None,
            "shifted": {n: _mean([metric(r, n) for r in rs]) for n in _shifted(rs)},
            "shifted_std": {n: stats.mean_std([metric(r, n) for r in rs])[1]
                            for n in _shifted(rs)},
            "trainable_fraction": first.get("trainable_params", 0)
            / max(first.get("total_params", 0), 1),
            "train_seconds": _mean([r.get("train_seconds", math.nan) for r in rs]),
            "features": _features(rs),
            # The paper's numbers (tljax.run.settings.published_numbers), shown beside ours.
            "published": next((r["published"] for r in rs if r.get("published")), {}),
            "published_source": next((r["published_source"] for r in rs
                                      if r.get("published_source")), ""),
            "extract_seconds": _mean([p.get("extract_seconds", math.nan) for p in probes]),
            "solve_seconds": _mean([p.get("solve_seconds", math.nan) for p in probes]),
        })
    return rows


def _clean(x):
    """Returns ``x`` with NaN and infinities as None and tuples as lists (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def summary_json(rows: list, n_runs: int) -> dict:
    """Returns ``{"selected": [...], "runs": n_runs}`` for ``--json`` and ``report.json``."""
    keys = ("strategy", "dataset", "shots", "hparams", "val", "test", "test_std", "seeds",
            "shifted", "shifted_std", "test_ci95", "test_bootstrap_ci95", "trainable_fraction",
            "sweep_hash", "select_metric", "val_select", "train_seconds", "features",
            "published", "published_source", "select_margin", "select_margin_examples",
            "tie_broken_by_loss", "grid_edge")
    return {"selected": [_clean({k: row[k] for k in keys}) for row in rows], "runs": n_runs}


# -- Markdown ---------------------------------------------------------------------------

def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ci(ci, missing: str) -> str:
    return missing if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(head: list, rows: list) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def _shifted_cell(row: dict, split: str, n_seeds: int) -> str:
    mean = row["shifted"].get(split)
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{_fmt(mean)} ± {'n/a' if n_seeds < 2 else _fmt(row['shifted_std'].get(split))}"


def summary_table(rows: list, show_config: bool = False) -> str:
    """Returns the Markdown summary: one row per selected (strategy, dataset, shots)."""
    shifted = _shifted([{"shifted": list(r["shifted"])} for r in rows])
    features = any(r["features"] for r in rows)
    # A paper column beside each of our accuracies the paper reports for some row.
    paper = {s for r in rows for s in r.get("published") or {}}

    def beside(split: str) -> list:
        return [f"paper {split} acc"] if split in paper else []

    def number(r, split: str) -> list:
        if split not in paper:
            return []
        value = (r.get("published") or {}).get(split)
        return [_fmt(value) if value is not None else "-"]
    head = ["strategy", "n", "seeds", *(["config"] if show_config else []), "dataset",
            "shots", "hparams", "trainable %", "val acc",
            "selection margin (val)",
            "test acc (mean ± sample std)", *beside("test"), "95% CI over seeds (t)",
            "95% CI over test examples (bootstrap)",
            *[c for s in shifted for c in (f"{s} acc (mean ± sample std)", *beside(s))],
            "train s/run", *(["features"] if features else [])]
    cells = []
    for r in rows:
        std = "n/a" if len(r["seeds"]) < 2 else _fmt(r["test_std"])
        cells.append([
            r["strategy"], str(len(r["seeds"])), ", ".join(map(str, r["seeds"])),
            *([r["sweep_hash"][:8]] if show_config else []), str(r["dataset"]),
            shots_text(r["shots"]), hparams_text(r["hparams"]),
            f"{100 * r['trainable_fraction']:.2f}", _fmt(r["val"]), _margin_cell(r),
            f"{_fmt(r['test'])} ± {std}", *number(r, "test"),
            _ci(r["test_ci95"], "n/a"), _ci(r["test_bootstrap_ci95"], "-"),
            *[c for s in shifted for c in (_shifted_cell(r, s, len(r["seeds"])),
                                           *number(r, s))],
            _fmt(r["train_seconds"], 1),
            *([r["features"] or "-"] if features else [])])
    return _table(head, cells)


def by_dataset_table(rows: list):
    """Returns a Markdown table of test accuracy (mean ± sample std) with one row per
    (dataset, shots) and one column per strategy, naming the best strategy on validation
    and on test; None unless several datasets each ran several strategies, once each."""
    cells, strategies = {}, []
    for r in rows:
        key = (str(r["dataset"]), r["shots"])
        if r["strategy"] in cells.setdefault(key, {}):
            return None  # one strategy under two configs: a column would mix them
        cells[key][r["strategy"]] = r
        strategies += [r["strategy"]] if r["strategy"] not in strategies else []
    if len(cells) < 2 or len(strategies) < 2:
        return None

    def best(found: dict, field: str) -> str:
        scored = [(r[field], s) for s, r in found.items() if r[field] is not None
                  and math.isfinite(r[field])]
        return max(scored)[1] if scored else "-"

    out = []
    for (dataset, shots), found in cells.items():
        out.append([dataset, shots_text(shots)]
                   + [f"{_fmt(found[s]['test'])} ± {_fmt(found[s]['test_std'])}"
                      if s in found else "-" for s in strategies]
                   + [best(found, "val"), best(found, "test")])
    return _table(["dataset", "shots", *strategies, "best on val", "best on test"], out)


def grid_table(records: list, selections: list, show_config: bool = False) -> str:
    """Returns the Markdown grid: per group and swept point, the validation criterion (over
    the seeds compared), validation and test accuracy over its own seeds, and which point
    was selected."""
    chosen = {sel.key: sel for sel in selections}
    metric_name = selections[0].metric if selections else "accuracy"
    head = ["strategy", *(["config"] if show_config else []), "dataset", "shots", "hparams",
            "seeds", f"val {metric_name} (compared seeds)", "val acc", "test acc", "selected"]
    cells = []
    for key, group in points(records).items():
        sel = chosen.get(key)
        criterion = {hparams_key(g["hparams"]): g for g in sel.grid} if sel else {}
        for hkey, (hparams, runs) in group.items():
            g = criterion.get(hkey, {})
            rs = list(runs.values())
            compared = g.get("compared_seeds", [])
            cells.append([
                method_name(key[1], key[4]), *([key[0][:8]] if show_config else []), str(key[2]),
                shots_text(key[3]), hparams_text(hparams), ", ".join(map(str, sorted(runs))),
                f"{_fmt(g.get('val_mean'))} ({', '.join(map(str, compared)) or '-'})",
                _fmt(_mean([metric(r, "val") for r in rs])),
                _fmt(_mean([metric(r, "test") for r in rs])),
                "yes" if sel and hparams_key(sel.hparams) == hkey else ""])
    return _table(head, cells)


def _varies(records: list, field) -> bool:
    return len({json.dumps(field(r), sort_keys=True, default=str) for r in records}) > 1


def runs_table(records: list, show_config: bool = False) -> str:
    """Returns the Markdown table with one row per run (failed ones included)."""
    extra = _shifted(records)
    cols = {"dataset": _varies(records, lambda r: r.get("dataset")),
            "shots": _varies(records, lambda r: r.get("shots", 0)),
            "hparams": any(r.get("hparams") for r in records)}
    probe = any(r.get("probe") for r in records)
    head = ["strategy", "seed", *(["config"] if show_config else []),
            *[c for c, shown in cols.items() if shown], "trainable", "total", "train acc",
            "val acc", "test acc", "test F1", *[f"{s} acc" for s in extra], "train s",
            *(["extract s", "solve s", "features"] if probe else []), "status"]
    cells = []
    for r in records:
        p = r.get("probe") or {}
        optional = {"dataset": str(r.get("dataset")), "shots": shots_text(r.get("shots")),
                    "hparams": hparams_text(r.get("hparams"))}
        cells.append([
            str(r.get("strategy")), str(r.get("seed")),
            *([config_key(r)[:8]] if show_config else []),
            *[optional[c] for c, shown in cols.items() if shown],
            f"{r.get('trainable_params', 0):,}", f"{r.get('total_params', 0):,}",
            *[_fmt(metric(r, s)) for s in ("train", "val", "test")],
            _fmt(metric(r, "test", "macro_f1")), *[_fmt(metric(r, s)) for s in extra],
            _fmt(r.get("train_seconds", math.nan), 1),
            *([_fmt(p.get("extract_seconds", math.nan), 1),
               _fmt(p.get("solve_seconds", math.nan), 1),
               (_features([r]) or "-")] if probe else []),
            str(r.get("status"))])
    return _table(head, cells)


# -- CSV --------------------------------------------------------------------------------

def write_csv(path: str, rows: list) -> None:
    """Writes dicts as CSV (columns: the union of keys, first-seen order)."""
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def run_rows(records: list, selections: list) -> list:
    """Returns one flat dict per run for ``results.csv``, with a ``selected`` column."""
    chosen = {id(r) for sel in selections for r in sel.records}
    rows = []
    for r in records:
        p = r.get("probe") or {}
        row = {"experiment": r.get("experiment"), "config": config_key(r),
               "strategy": r.get("strategy"), "dataset": r.get("dataset"),
               "shots": r.get("shots", 0), "hparams": json.dumps(r.get("hparams") or {}),
               "seed": r.get("seed"), "status": r.get("status"),
               "selected": id(r) in chosen,
               "trainable_params": r.get("trainable_params"),
               "total_params": r.get("total_params"),
               "train_seconds": r.get("train_seconds")}
        for split in (*CORE_SPLITS, *shifted_names(r)):
            for name in ("accuracy", "macro_f1", "loss"):
                row[f"{split}_{name}"] = metric(r, split, name)
        if p:
            row.update(extract_seconds=p.get("extract_seconds"),
                       solve_seconds=p.get("solve_seconds"),
                       feature_cache_hit=p.get("feature_cache_hit"))
        rows.append(row)
    return rows


def flat_summary(rows: list) -> list:
    """Returns the summary rows flattened for ``summary.csv``."""
    flat = []
    for r in rows:
        row = {k: v for k, v in r.items()
               if k not in ("hparams", "seeds", "shifted", "shifted_std", "test_ci95",
                            "test_bootstrap_ci95", "published", "grid_edge")}
        row.update(hparams=json.dumps(r["hparams"]), seeds=" ".join(map(str, r["seeds"])),
                   grid_edge="; ".join(r["grid_edge"]))
        for key in ("test_ci95", "test_bootstrap_ci95"):
            lo, hi = r[key] or (math.nan, math.nan)
            row.update({f"{key}_lo": lo, f"{key}_hi": hi})
        row.update({f"{n}_accuracy": v for n, v in r["shifted"].items()})
        row.update({f"{n}_accuracy_std": v for n, v in r["shifted_std"].items()})
        row.update({f"published_{n}_accuracy": v for n, v in (r["published"] or {}).items()})
        flat.append(row)
    return flat


def notes(records: list, selections: list) -> list:
    """Returns sentences about runs the summary leaves out: failed runs, repeated seeds,
    groups with no point of finite validation metric."""
    out = []
    sources = list(dict.fromkeys(r["published_source"] for r in records
                                 if r.get("published") and r.get("published_source")))
    if sources:
        out.append(f"paper columns: the published numbers, from {'; '.join(sources)}.")
    failed = sum(r.get("status") != "ok" for r in records)
    if failed:
        out.append(f"{failed} run(s) failed; they are listed under Runs only.")
    groups = points(records)
    kept = sum(len(runs) for g in groups.values() for _, runs in g.values())
    repeated = sum(r.get("status") == "ok" for r in records) - kept
    if repeated:
        out.append(f"{repeated} repeated run(s) (same config, strategy, hparams and seed) "
                   "left out of the summary; the last of each counts.")
    if any(sel.margin is not None for sel in selections):
        out.append("selection margin: the selected point's lead over the runner-up on the "
                   "validation criterion (mean over the compared seeds), in validation "
                   "examples (ex) for accuracy; a tie goes to the lower mean validation loss, "
                   "then to grid order. A lead of one or two examples is a coin toss.")
    edges, unconverged = [], []
    for sel in selections:
        where = f"{sel.name} on {sel.dataset} (shots {shots_text(sel.shots)})"
        keys = sel.edge + _probe_edges(sel.records)
        if keys:
            edges.append(f"{where}: {', '.join(keys)}")
        seeds = [str(r["seed"]) for r in sel.records
                 if (r.get("probe") or {}).get("converged") is False]
        if seeds:
            unconverged.append(f"{where}, seed(s) {', '.join(seeds)}")
    if edges:
        out.append("chosen at a grid end (the best value may lie beyond the grid): "
                   + "; ".join(edges) + ".")
    if unconverged:
        out.append("probe stopped before converging at its chosen L2 (iteration cap or a "
                   "stalled line search): " + "; ".join(unconverged) + ".")
    chosen = {sel.key for sel in selections}
    for key in groups:
        if key not in chosen:
            out.append(f"{key[1]} on {key[2]} (shots {shots_text(key[3])}): no grid point "
                       "has a finite validation metric; not summarised.")
    return out
