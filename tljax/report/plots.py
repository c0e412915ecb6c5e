"""PNG figures of a report (matplotlib's Agg canvas: no display, no pyplot state).

Each public function returns the path it wrote (``val_vs_lr``: the list of paths), or None
when there is nothing to draw (no empty figures). Each has a ``_build_*`` twin that returns
the matplotlib ``Figure`` (``_build_val_vs_lr``: ``[(key, Figure)]``) without saving it, so
tests can inspect the artists.

Accuracies are means over seeds drawn with the 95% Student-t interval of the mean
(``stats.t_half95``; no bar for one seed), and the axis label says so. Legends sit right of
their axes, never over the data; the series of one axes differ in marker and linestyle,
each later one thinner with smaller open markers (``series_style``), so a series that
coincides with an earlier one cannot hide it, and series that share x values are shifted a
little apart (``dodge``) so their error bars do not overlap.
"""

import math
import os

from tljax.report.records import hparams_text
from tljax.report.stats import is_finite as _finite
from tljax.report.stats import t_ci95, t_half95  # NaN half-width: matplotlib draws no bar
from tljax.report.transfer import transfer_lines

_MARKERS = "osD^vPX<>"
_LINESTYLES = ("-", "--", "-.", ":")
# Points. Each step leaves 0.6 pt (most of a pixel at 110 dpi) of an earlier line showing
# on either side of a later one drawn over it, and the later one's dash gaps show the rest.
_WIDTHS = (3.0, 1.8, 1.2, 0.8)
_SIZES = (9.0, 7.0, 5.5, 4.5)
_PANEL_WIDTH = 7.3  # inches: a 5.5-inch plot and the legend right of it


def _figure(n_panels: int = 1):
    """Returns ``(figure, 1-D array of n_panels axes)`` on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_PANEL_WIDTH * n_panels, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # fig.canvas.draw() lays it out as savefig will
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def _figure_grid(rows: int, cols: int) -> tuple:
    """Returns ``(figure, flat list of rows x cols axes)`` on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.2 * cols, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(rows, cols, squeeze=False).ravel())


def _save(fig, out_dir: str, name: str):
    """Writes ``fig`` as ``out_dir/name``; returns the path, or None for no figure (a
    ``_build_*`` with nothing to draw)."""
    if fig is None:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    # tight: a legend outside the axes is never cut off, whatever the label lengths.
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def legend_outside(ax, **kwargs) -> None:
    """Puts ``ax``'s legend right of the axes (constrained layout makes room), where it
    cannot cover a bar, point or line; does nothing when no artist is labelled."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0,
                  **kwargs)


def series_style(i: int, line: bool = True) -> dict:
    """Returns the plot keywords of an axes' ``i``-th series: a marker and (``line``) a
    linestyle of its own; each later series is thinner, with smaller open markers, and
    drawn on top, so one that coincides with an earlier series leaves it showing around."""
    return {"marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINESTYLES[i % len(_LINESTYLES)] if line else "none",
            "linewidth": _WIDTHS[min(i, len(_WIDTHS) - 1)],
            "markersize": _SIZES[min(i, len(_SIZES) - 1)],
            "markerfacecolor": None if i == 0 else "none", "zorder": 2 + 0.01 * i}


def _bar_style(i: int, line: bool = True) -> dict:
    """Returns ``series_style`` for ``errorbar``: the interval drawn thin whatever the
    series' width, so it never hides another series' interval."""
    return series_style(i, line) | {"elinewidth": 1.0, "capsize": 3}


def dodge(i: int, k: int, log: bool):
    """Returns a function that shifts the x values of series ``i`` of ``k`` by at most 8%
    of a step (of 1 on a linear axis, of a doubling on a log one), so the error bars of
    series that share x values sit side by side instead of on top of each other."""
    offset = 0.16 * (i - (k - 1) / 2) / max(k - 1, 1)
    if log:
        return lambda xs: [x * 2 ** offset for x in xs]
    return lambda xs: [x + offset for x in xs]


def ci95_half_of(values) -> float:
    """Returns the half-width of the 95% Student-t interval of the mean of the finite
    ``values`` (``stats.t_ci95``); NaN for fewer than two."""
    ci = t_ci95(values)
    return math.nan if ci is None else (ci[1] - ci[0]) / 2


def _n_seeds(row: dict) -> int:
    return len(row.get("seeds") or [])


def _test_half(row: dict) -> float:
    """Returns the half-width of a summary row's 95% t interval of test accuracy."""
    ci = row.get("test_ci95")
    if ci is not None:  # t_ci95 over the per-seed values: the exact interval
        return (ci[1] - ci[0]) / 2
    return t_half95(row.get("test_std"), _n_seeds(row))


def _shifted_half(row: dict, split: str) -> float:
    """Returns the half-width of a row's 95% t interval on a shifted split: rows keep only
    the mean and std per split, so from ``shifted_std`` and the number of seeds."""
    return t_half95((row.get("shifted_std") or {}).get(split), _n_seeds(row))


def over_seeds(ns) -> str:
    """Returns what an accuracy axis shows for means over ``ns`` seeds (one count per
    point): ``mean over 3 seeds, 95% CI (t)``; ``mean over seeds`` when no count is known."""
    ns = sorted(set(ns) - {0})
    if not ns:
        return "mean over seeds"
    count = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return (f"mean over {count} seed{'' if ns == [1] else 's'}"
            + (", 95% CI (t)" if ns[-1] >= 2 else ""))


def _label(row: dict, several_configs: bool) -> str:
    return row["strategy"] + (f" [{row['sweep_hash'][:6]}]" if several_configs else "")


def _by_dataset(rows: list) -> dict:
    out = {}
    for r in rows:
        out.setdefault(r["dataset"], []).append(r)
    return out


def _largest_training_set(rows: list) -> list:
    """Returns, per (config, strategy, dataset), the row with the most training data
    (shots 0 = the whole split)."""
    best = {}
    for r in rows:
        key = (r["sweep_hash"], r["strategy"], r["dataset"])
        size = math.inf if not r["shots"] else r["shots"]
        if key not in best or size > best[key][0]:
            best[key] = (size, r)
    return [r for _, r in best.values()]


def _build_accuracy_vs_trainable(rows: list, several_configs: bool = False):
    """Returns the Figure of test accuracy against the trainable fraction (log x), one
    marker per strategy, one panel per dataset; None without data."""
    rows = [r for r in _largest_training_set(rows)
            if _finite(r["test"]) and r["trainable_fraction"] > 0]
    if not rows:
        return None
    panels = _by_dataset(rows)
    fig, axes = _figure(len(panels))
    for ax, (dataset, rs) in zip(axes, panels.items()):
        for i, r in enumerate(rs):
            ax.errorbar(100 * r["trainable_fraction"], r["test"], yerr=_test_half(r),
                        label=_label(r, several_configs), **_bar_style(i, line=False))
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (% of the model, log scale)")
        ax.set_ylabel(f"test accuracy ({over_seeds(map(_n_seeds, rs))})")
        ax.set_title(f"{dataset}: accuracy vs trainable fraction", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        legend_outside(ax)
    return fig


def accuracy_vs_trainable(rows: list, out_dir: str, several_configs: bool = False):
    """Writes ``accuracy_vs_trainable.png``; returns its path, or None without data."""
    return _save(_build_accuracy_vs_trainable(rows, several_configs), out_dir,
                 "accuracy_vs_trainable.png")


def _build_shifted_accuracy(rows: list, several_configs: bool = False):
    """Returns the Figure of in-distribution (test) bars next to each shifted split's,
    per strategy; None when no run has a shifted split."""
    rows = [r for r in _largest_training_set(rows) if r["shifted"]]
    if not rows:
        return None
    panels = _by_dataset(rows)
    fig, axes = _figure(len(panels))
    for ax, (dataset, rs) in zip(axes, panels.items()):
        splits = ["test"] + list(dict.fromkeys(n for r in rs for n in r["shifted"]))
        width = 0.8 / len(splits)
        for j, split in enumerate(splits):
            if split == "test":
                values, halves = [r["test"] for r in rs], [_test_half(r) for r in rs]
            else:
                values = [r["shifted"].get(split, math.nan) for r in rs]
                halves = [_shifted_half(r, split) for r in rs]
            ax.bar([i + (j - (len(splits) - 1) / 2) * width for i in range(len(rs))], values,
                   width, yerr=halves, capsize=3, error_kw={"elinewidth": 1},
                   label="test (in distribution)" if split == "test" else split)
        ax.set_xticks(range(len(rs)), [_label(r, several_configs) for r in rs],
                      rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"accuracy ({over_seeds(map(_n_seeds, rs))})")
        ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))  # an interval may reach past 1
        ax.set_title(f"{dataset}: in distribution vs shifted", fontsize=10)
        legend_outside(ax)
    return fig


def shifted_accuracy(rows: list, out_dir: str, several_configs: bool = False):
    """Writes ``shifted_accuracy.png``; returns its path, or None without a shifted split."""
    return _save(_build_shifted_accuracy(rows, several_configs), out_dir, "shifted_accuracy.png")


def _build_accuracy_vs_shots(rows: list, several_configs: bool = False):
    """Returns the Figure of test accuracy against training examples per class, one line
    per strategy; None unless some dataset has more than one shots value."""
    panels = {d: rs for d, rs in _by_dataset(rows).items() if len({r["shots"] for r in rs}) > 1}
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (dataset, rs) in zip(axes, panels.items()):
        given = sorted({r["shots"] for r in rs if r["shots"]})
        all_at = 2 * given[-1] if given else 1  # "all" (shots 0) drawn right of the largest k
        lines = {}
        for r in rs:
            lines.setdefault(_label(r, several_configs), []).append(r)
        for i, (label, line) in enumerate(lines.items()):
            line.sort(key=lambda r: r["shots"] or math.inf)
            shift = dodge(i, len(lines), log=True)
            ax.errorbar(shift([r["shots"] or all_at for r in line]), [r["test"] for r in line],
                        yerr=[_test_half(r) for r in line], label=label, **_bar_style(i))
        ticks = given + ([all_at] if any(not r["shots"] for r in rs) else [])
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in given] + ["all"] * (len(ticks) - len(given)))
        ax.minorticks_off()
        ax.set_xlabel("training examples per class (shots)")
        ax.set_ylabel(f"test accuracy ({over_seeds(map(_n_seeds, rs))})")
        ax.set_title(f"{dataset}: accuracy vs training-set size", fontsize=10)
        ax.grid(True, alpha=0.3)
        legend_outside(ax)
    return fig


def accuracy_vs_shots(rows: list, out_dir: str, several_configs: bool = False):
    """Writes ``accuracy_vs_shots.png``; returns its path, or None without a shots sweep."""
    return _save(_build_accuracy_vs_shots(rows, several_configs), out_dir, "accuracy_vs_shots.png")


def _lr_keys(selections: list) -> list:
    keys = []
    for sel in selections:
        for g in sel.grid:
            keys += [k for k in g["hparams"] if k.rpartition(".")[2] == "lr" and k not in keys]
    return keys


def _build_val_vs_lr(selections: list) -> list:
    """Returns ``[(lr key, Figure)]``: per swept learning rate, the validation criterion
    against it (log x), one line per strategy (and per value of any other swept key), the
    selected point starred; empty when no learning rate was swept. The grid keeps only a
    mean per point, so the lines carry no interval."""
    figures = []
    strategies = [sel.name for sel in selections]
    for key in _lr_keys(selections):
        series = {}
        for sel in selections:
            name = sel.name
            if strategies.count(sel.name) > 1:  # one line per dataset, shots and config
                name += f" {sel.dataset} shots={sel.shots or 'all'} [{sel.sweep_hash[:6]}]"
            for g in sel.grid:
                if key not in g["hparams"] or not _finite(g["val_mean"]):
                    continue
                rest = {k: v for k, v in g["hparams"].items() if k != key}
                label = name + ("" if not rest else f" ({hparams_text(rest)})")
                chosen = g["hparams"] == sel.hparams
                series.setdefault(label, []).append((g["hparams"][key], g["val_mean"], chosen))
        if not any(len(points) > 1 for points in series.values()):
            continue
        fig, axes = _figure(1)
        ax = axes[0]
        for i, (label, points) in enumerate(series.items()):
            points.sort()
            style = series_style(i)
            line = ax.plot([p[0] for p in points], [p[1] for p in points], label=label,
                           **style)[0]
            # The star keeps the series' fill rule: an open star inside a filled one.
            ax.plot([p[0] for p in points if p[2]], [p[1] for p in points if p[2]], "*",
                    markersize=style["markersize"] + 7, color=line.get_color(),
                    markerfacecolor=style["markerfacecolor"], zorder=style["zorder"])
        ax.set_xscale("log")
        ax.set_xlabel(f"{key} (log scale; star: selected)")
        ax.set_ylabel(f"validation {selections[0].metric} (mean over compared seeds)")
        ax.set_title(f"validation {selections[0].metric} vs {key}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        legend_outside(ax)
        figures.append((key, fig))
    return figures


def val_vs_lr(selections: list, out_dir: str):
    """Writes ``val_vs_<lr key>.png`` per swept learning rate; returns the paths, or None
    when no learning rate was swept."""
    return [_save(fig, out_dir, f"val_vs_{key.replace('.', '_')}.png")
            for key, fig in _build_val_vs_lr(selections)] or None


def _build_transfer_curves(rows: list):
    """Returns the Figure of test accuracy against the number of copied blocks N for the
    ``transfer_n:N`` (copied blocks frozen, dashed) and ``transfer_n+:N`` (fine-tuned, solid)
    strategies: one line per experiment and kind, as Yosinski et al. (2014) draw AnB, BnB,
    AnB+ and BnB+, and the base (N = 0: trained from scratch) as a line with its interval
    as a band. None without such runs."""
    lines = transfer_lines(_largest_training_set(rows))
    if not lines:
        return None
    datasets = list(dict.fromkeys(d for d, _ in lines))
    fig, axes = _figure(len(datasets))
    for ax, dataset in zip(axes, datasets):
        depth = max((n for (d, _), pts in lines.items() if d == dataset for n, _ in pts),
                    default=1)
        drawn = [r for (d, _), pts in lines.items() if d == dataset for _, r in pts]
        n_curves, i = sum(d == dataset and label != "base" for d, label in lines), 0
        for (d, label), points in lines.items():
            if d != dataset:
                continue
            if label == "base":
                row = points[0][1]
                half = _test_half(row)
                ax.axhline(row["test"], color="black", linewidth=1,
                           label="base (N = 0: trained from scratch)")
                if _finite(half):
                    ax.axhspan(row["test"] - half, row["test"] + half, color="black",
                               alpha=0.1)
                continue
            # The linestyle tells frozen from fine-tuned; marker and width tell the curves
            # apart, so two that coincide both show.
            style = _bar_style(i) | {"linestyle": "-" if label.endswith("+") else "--"}
            shift = dodge(i, n_curves, log=False)
            i += 1
            ax.errorbar(shift([n for n, _ in points]), [r["test"] for _, r in points],
                        yerr=[_test_half(r) for _, r in points],
                        label=label + (" (copied blocks fine-tuned)" if label.endswith("+")
                                       else " (copied blocks frozen)"), **style)
        ax.set_xticks(range(1, depth + 1))
        ax.set_xlabel("blocks copied from the source (N)")
        ax.set_ylabel(f"test accuracy ({over_seeds(map(_n_seeds, drawn))})")
        ax.set_title(f"{dataset}: transfer of the first N blocks", fontsize=10)
        ax.grid(True, alpha=0.3)
        legend_outside(ax)
    return fig


def transfer_curves(rows: list, out_dir: str):
    """Writes ``transfer_curves.png``; returns its path, or None without transfer_n runs."""
    return _save(_build_transfer_curves(rows), out_dir, "transfer_curves.png")


def write_all(rows: list, selections: list, out_dir: str, several_configs: bool = False) -> list:
    """Writes every figure that has data into ``out_dir``; returns their paths."""
    paths = [accuracy_vs_trainable(rows, out_dir, several_configs),
             shifted_accuracy(rows, out_dir, several_configs),
             accuracy_vs_shots(rows, out_dir, several_configs), transfer_curves(rows, out_dir)]
    paths += val_vs_lr(selections, out_dir) or []
    return [p for p in paths if p]
