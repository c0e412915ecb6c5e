"""The learning-curve figure: per strategy, the training loss of the point selected on
validation, one line per seed (and the validation loss where it was measured along the
way, ``val_every``)."""

import math

from tljax.report.plots import _figure_grid, _save, legend_outside, series_style
from tljax.report.records import hparams_text

_MAX_PANELS = 12  # a figure stays readable; the TensorBoard curves hold every run


def _build_learning_curves(selections: list, several_configs: bool = False):
    """Returns the Figure of ``learning_curves.png`` (one panel per selected point that
    trained through the network: a cached probe has no steps), or None without data.
    Losses are per seed (no mean over seeds, so no interval)."""
    chosen = [s for s in selections if any(r.get("history") for r in s.records)]
    if not chosen:
        return None
    chosen = chosen[:_MAX_PANELS]
    cols = min(4, len(chosen))
    fig, axes = _figure_grid(math.ceil(len(chosen) / cols), cols)
    for ax, sel in zip(axes, chosen):
        for i, r in enumerate(sel.records):
            history = r.get("history") or []
            # Solid train, dashed val; the seed's width and marker (series_style) keep seeds
            # whose curves coincide all visible.
            style = series_style(i)
            line, = ax.plot([p["step"] for p in history], [p["loss"] for p in history],
                            lw=style["linewidth"], label=f"seed {r['seed']} train")
            val = list(r.get("val_history") or [])
            final = (r.get("metrics") or {}).get("val")
            if final and history and (not val or val[-1]["step"] != history[-1]["step"]):
                val.append({"step": history[-1]["step"], "loss": final["loss"]})
            if val:
                ax.plot([p["step"] for p in val], [p["loss"] for p in val], ls="--",
                        lw=style["linewidth"], marker=style["marker"],
                        ms=0.6 * style["markersize"], mfc=style["markerfacecolor"],
                        color=line.get_color(), label=f"seed {r['seed']} val")
        name = sel.name + (f" [{sel.sweep_hash[:6]}]" if several_configs else "")
        ax.set_title(f"{name} on {sel.dataset}\n{hparams_text(sel.hparams)}",
                     fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (train: the step's batch)")
        ax.grid(True, alpha=0.3)
        legend_outside(ax)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    return fig


def learning_curves(selections: list, out_dir: str, several_configs: bool = False):
    """Writes ``learning_curves.png``; returns its path, or None without data."""
    return _save(_build_learning_curves(selections, several_configs), out_dir,
                 "learning_curves.png")
