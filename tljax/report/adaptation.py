"""Domain adaptation in the report: target accuracy under honest selection (the source's
validation split, what a user without target labels can do) beside the oracle's (the
target's labelled validation split, never a headline), the domain gap each method leaves
(a linear domain classifier on the penultimate features: ``tljax.run.domain_gap``), and
a plot of target against source accuracy."""

import math

from tljax.report import stats
from tljax.report.plots import (_figure, _save, ci95_half_of, legend_outside,
                                over_seeds, series_style)
from tljax.report.records import hparams_text, metric
from tljax.report.selection import select

_NOTE = ("Selected on the source's validation split (a user without target labels can do "
         "this); the oracle column selects on the target's labelled validation split "
         "instead, to show how much a method's result depends on labels a user would not "
         "have (with select_seeds, a point the honest selection did not pick ran on the "
         "selection seeds only: oracle n). Domain accuracy: a linear classifier telling "
         "source from target test inputs by the penultimate features, before and after "
         "training (0.5: indistinguishable); proxy A-distance = max(0, 2 (1 - 2 err)).")


def _acc(records: list, split: str) -> tuple:
    return stats.mean_std([metric(r, split) for r in records])


def _cell(mean_std: tuple, n: int) -> str:
    mean, std = mean_std
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.3f} ± {'n/a' if n < 2 else f'{std:.3f}'}"


def _interval(records: list) -> str:
    ci = stats.t_ci95([metric(r, "target") for r in records])
    return "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _gap(records: list, when: str, field: str) -> str:
    values = [r["domain_gap"][when][field] for r in records if r.get("domain_gap")]
    return f"{sum(values) / len(values):.3f}" if values else "-"


def adaptation_table(records: list, selections: list, metric: str = "accuracy"):
    """Returns the Markdown section on domain adaptation, or None when no run had a target."""
    chosen = [s for s in selections if any(r.get("target") for r in s.records)]
    if not chosen:
        return None
    oracle = {s.key: s for s in select(records, metric, split="target_val")}
    head = ["method", "dataset", "target", "selected on source val", "n", "source test acc",
            "target acc (mean ± sample std)", "target 95% CI over seeds (t)",
            "oracle: selected on target val", "oracle n",
            "oracle target acc", "domain acc before", "domain acc after", "PAD after"]
    rows = []
    for sel in chosen:
        rs, o = sel.records, oracle.get(sel.key)
        rows.append([
            sel.name, str(sel.dataset), str(rs[0].get("target", "")), hparams_text(sel.hparams),
            str(len(rs)), _cell(_acc(rs, "test"), len(rs)), _cell(_acc(rs, "target"), len(rs)),
            _interval(rs), hparams_text(o.hparams) if o else "-",
            str(len(o.records)) if o else "-",
            _cell(_acc(o.records, "target"), len(o.records)) if o else "-",
            _gap(rs, "before", "domain_accuracy"), _gap(rs, "after", "domain_accuracy"),
            _gap(rs, "after", "proxy_a_distance")])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return _NOTE + "\n\n" + "\n".join(lines)


def _build_target_vs_source(selections: list):
    """Returns the Figure of ``target_vs_source.png``: per method (the point selected on
    source val), its target accuracy against its source test accuracy, both means over its
    seeds with the 95% t interval as error bars; None without a target."""
    chosen = [s for s in selections if any(r.get("target") for r in s.records)]
    if not chosen:
        return None
    fig, axes = _figure(1)
    ax = axes[0]
    ns, i = [], 0
    for sel in chosen:
        sources = [metric(r, "test") for r in sel.records]
        targets = [metric(r, "target") for r in sel.records]
        sx, ty = stats.mean_std(sources)[0], stats.mean_std(targets)[0]
        if not (math.isfinite(sx) and math.isfinite(ty)):
            continue
        ax.errorbar(sx, ty, xerr=ci95_half_of(sources), yerr=ci95_half_of(targets),
                    elinewidth=1.0, capsize=3, label=sel.name, **series_style(i, line=False))
        ns.append(len(stats.finite(targets)))
        i += 1
    ax.set_xlabel(f"source test accuracy ({over_seeds(ns)})")
    ax.set_ylabel("target test accuracy")
    ax.set_title("Domain adaptation: target vs source (selected on source val)", fontsize=10)
    ax.grid(True, alpha=0.3)
    legend_outside(ax)
    return fig


def target_vs_source(selections: list, out_dir: str):
    """Writes ``target_vs_source.png``; returns its path, or None without a target."""
    return _save(_build_target_vs_source(selections), out_dir, "target_vs_source.png")
