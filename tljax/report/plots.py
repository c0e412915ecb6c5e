"""PNG figures of a report (matplotlib's Agg canvas: no display, no pyplot state).

Each function returns the path it wrote, or None when there is nothing to draw (no empty
figures).
"""

import math
import os

from tljax.report.records import hparams_text
from tljax.report.stats import is_finite as _finite
from tljax.report.transfer import transfer_lines


def _figure(n_panels: int = 1):
    from matplotlib.figure import Figure  # Agg canvas by default: headless

    fig = Figure(figsize=(5.5 * n_panels, 4.2), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def _figure_grid(rows: int, cols: int) -> tuple:
    """Returns ``(figure, flat list of rows x cols axes)``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * cols, 3.8 * rows), layout="constrained")
    return fig, list(fig.subplots(rows, cols, squeeze=False).ravel())


def _save(fig, out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    return path


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


def accuracy_vs_trainable(rows: list, out_dir: str, several_configs: bool = False):
    """Plots test accuracy (± sample std) against the trainable fraction (log x), one
    marker per strategy, one panel per dataset."""
    rows = [r for r in _largest_training_set(rows)
            if _finite(r["test"]) and r["trainable_fraction"] > 0]
    if not rows:
        return None
    panels = _by_dataset(rows)
    fig, axes = _figure(len(panels))
    for ax, (dataset, rs) in zip(axes, panels.items()):
        for r in rs:
            err = r["test_std"] if _finite(r["test_std"]) else None
            ax.errorbar(100 * r["trainable_fraction"], r["test"], yerr=err, fmt="o",
                        capsize=3, label=_label(r, several_configs))
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (% of the model, log scale)")
        ax.set_ylabel("test accuracy (selected point, mean ± sample std)")
        ax.set_title(f"{dataset}: accuracy vs trainable fraction", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "accuracy_vs_trainable.png")


def shifted_accuracy(rows: list, out_dir: str, several_configs: bool = False):
    """Plots in-distribution (test) next to each shifted split's accuracy, per strategy;
    None when no run has a shifted split."""
    rows = [r for r in _largest_training_set(rows) if r["shifted"]]
    if not rows:
        return None
    panels = _by_dataset(rows)
    fig, axes = _figure(len(panels))
    for ax, (dataset, rs) in zip(axes, panels.items()):
        splits = ["test"] + list(dict.fromkeys(n for r in rs for n in r["shifted"]))
        width = 0.8 / len(splits)
        for j, split in enumerate(splits):
            values = [r["test"] if split == "test" else r["shifted"].get(split, math.nan)
                      for r in rs]
            ax.bar([i + (j - (len(splits) - 1) / 2) * width for i in range(len(rs))], values,
                   width, label="test (in distribution)" if split == "test" else split)
        ax.set_xticks(range(len(rs)), [_label(r, several_configs) for r in rs],
                      rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (mean over seeds)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset}: in distribution vs shifted", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "shifted_accuracy.png")


def accuracy_vs_shots(rows: list, out_dir: str, several_configs: bool = False):
    """Plots test accuracy against training examples per class, one line per strategy;
    None unless some dataset has more than one shots value."""
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
        for label, line in lines.items():
            line.sort(key=lambda r: r["shots"] or math.inf)
            ax.errorbar([r["shots"] or all_at for r in line], [r["test"] for r in line],
                        yerr=[r["test_std"] if _finite(r["test_std"]) else 0 for r in line],
                        marker="o", capsize=3, label=label)
        ticks = given + ([all_at] if any(not r["shots"] for r in rs) else [])
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in given] + ["all"] * (len(ticks) - len(given)))
        ax.minorticks_off()
        ax.set_xlabel("training examples per class (shots)")
        ax.set_ylabel("test accuracy (mean ± sample std)")
        ax.set_title(f"{dataset}: accuracy vs training-set size", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "accuracy_vs_shots.png")


def _lr_keys(selections: list) -> list:
    keys = []
    for sel in selections:
        for g in sel.grid:
            keys += [k for k in g["hparams"] if k.rpartition(".")[2] == "lr" and k not in keys]
    return keys


def val_vs_lr(selections: list, out_dir: str):
    """Plots the validation criterion against each swept learning rate (log x), one line per
    strategy (and per value of any other swept key), the selected point starred; None when
    no learning rate was swept."""
    paths = []
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
        for label, points in series.items():
            points.sort()
            line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                           label=label)[0]
            ax.plot([p[0] for p in points if p[2]], [p[1] for p in points if p[2]], "*",
                    markersize=14, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel(f"{key} (log scale; star: selected)")
        ax.set_ylabel(f"validation {selections[0].metric} (mean over compared seeds)")
        ax.set_title(f"validation {selections[0].metric} vs {key}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir, f"val_vs_{key.replace('.', '_')}.png"))
    return paths or None




def transfer_curves(rows: list, out_dir: str):
    """Plots test accuracy (± sample std) against the number of copied blocks N for the
    ``transfer_n:N`` (copied blocks frozen, dashed) and ``transfer_n+:N`` (fine-tuned, solid)
    strategies: one line per experiment and kind, as Yosinski et al. (2014) draw AnB, BnB,
    AnB+ and BnB+, and the base (N = 0: trained from scratch) as a horizontal band. None
    without such runs."""
    lines = transfer_lines(_largest_training_set(rows))
    if not lines:
        return None
    datasets = list(dict.fromkeys(d for d, _ in lines))
    fig, axes = _figure(len(datasets))
    for ax, dataset in zip(axes, datasets):
        depth = max((n for (d, _), pts in lines.items() if d == dataset for n, _ in pts),
                    default=1)
        for (d, label), points in lines.items():
            if d != dataset:
                continue
            if label == "base":
                row = points[0][1]
                std = row["test_std"] if _finite(row["test_std"]) else 0
                ax.axhline(row["test"], color="black", linewidth=1,
                           label="base (N = 0: trained from scratch)")
                ax.axhspan(row["test"] - std, row["test"] + std, color="black", alpha=0.1)
                continue
            ax.errorbar([n for n, _ in points], [r["test"] for _, r in points],
                        yerr=[r["test_std"] if _finite(r["test_std"]) else 0 for _, r in points],
                        marker="o", capsize=3, linestyle="-" if label.endswith("+") else "--",
                        label=label + (" (copied blocks fine-tuned)" if label.endswith("+")
                                       else " (copied blocks frozen)"))
        ax.set_xticks(range(1, depth + 1))
        ax.set_xlabel("blocks copied from the source (N)")
        ax.set_ylabel("test accuracy (mean ± sample std)")
        ax.set_title(f"{dataset}: transfer of the first N blocks", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "transfer_curves.png")


def write_all(rows: list, selections: list, out_dir: str, several_configs: bool = False) -> list:
    """Writes every figure that has data into ``out_dir``; returns their paths."""
    paths = [accuracy_vs_trainable(rows, out_dir, several_configs),
             shifted_accuracy(rows, out_dir, several_configs),
             accuracy_vs_shots(rows, out_dir, several_configs), transfer_curves(rows, out_dir)]
    paths += val_vs_lr(selections, out_dir) or []
    return [p for p in paths if p]
