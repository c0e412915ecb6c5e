"""Report figures carry their uncertainty and hide nothing: every accuracy bar, point and
line has the 95% Student-t interval over seeds as its error bar (none for one seed), the
legend never covers data, and series that coincide all stay visible. Asserted on the
matplotlib artists of the figures the report saves (``plots._build_*``)."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tljax.report import adaptation, learning, plots, selection, tables

SEEDS = (0, 1, 2)
# Per-seed test accuracy of each strategy (and its ``noise`` shifted split): what the
# expected intervals are computed from, independently of the report's own statistics.
TESTS = {"linear_probe": [0.70, 0.74, 0.79], "full_ft": [0.80, 0.83, 0.90]}
NOISE = {"linear_probe": [0.50, 0.55, 0.62], "full_ft": [0.60, 0.61, 0.70]}


def _record(strategy, seed, test, *, hparams=None, val=0.5, shots=0, shifted=None,
            trainable=100, total=1000, **extra):
    metrics = {"val": {"accuracy": val, "macro_f1": val, "loss": 1 - val},
               "test": {"accuracy": test, "macro_f1": test, "loss": 1 - test}}
    for name, acc in (shifted or {}).items():
        metrics[name] = {"accuracy": acc, "macro_f1": acc, "loss": 1 - acc}
    return {"experiment": "exp", "model": "cnn", "dataset": "digits:5-9", "strategy": strategy,
            "seed": seed, "trainable_params": trainable, "total_params": total,
            "shots": shots, "status": "ok", "metrics": metrics, "config_hash": "c-cfgA",
            "sweep_hash": "cfgA", "hparams": hparams or {}, "shifted": list(shifted or {}),
            **extra}


def _records(shots=(0,)):
    """Three seeds each of linear_probe and full_ft (TESTS, NOISE), one of bitfit."""
    out = [_record(name, s, TESTS[name][s] - 0.1 * bool(k), shots=k,
                   shifted={"noise": NOISE[name][s]},
                   trainable=10 if name == "linear_probe" else 1000)
           for name in TESTS for k in shots for s in SEEDS]
    return out + [_record("bitfit", 0, 0.75, shifted={"noise": 0.5}, trainable=50)]


def _rows(records):
    return tables.summary_rows(selection.select(records))


def _half(values):
    """The 95% Student-t half-width of the mean of ``values``, from scratch."""
    v = np.asarray(values, dtype=float)
    return scipy_stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)


def _errors(container, axis="y"):
    """Returns an ErrorbarContainer's half-widths along ``axis``, one per point (NaN where
    no bar is drawn; all NaN when the container has no such error bars)."""
    if container is None:  # a bar plot drawn without error bars
        return [math.nan]
    n = len(container.lines[0].get_xdata()) if container.lines[0] is not None else None
    for collection in container.lines[2]:
        segments = collection.get_segments()
        drawn = [s for s in segments if len(s)]
        i = 1 if axis == "y" else 0
        if drawn and np.allclose([s[0][1 - i] for s in drawn], [s[1][1 - i] for s in drawn]):
            return [abs(s[1][i] - s[0][i]) / 2 if len(s) else math.nan for s in segments]
    return [math.nan] * (n or 1)


def _by_label(ax):
    """Returns ``{label: container}`` of the labelled containers (a bar's error bars are an
    unlabelled container of their own)."""
    return {c.get_label(): c for c in ax.containers if not c.get_label().startswith("_")}


def _close(got, want):
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, rel=1e-6), (got, want)


def test_accuracy_points_and_lines_carry_the_seeds_95pct_t_interval():
    rows = _rows(_records(shots=(0, 5)))
    fig = plots._build_accuracy_vs_trainable(rows)
    ax = fig.axes[0]
    found = _by_label(ax)
    _close(_errors(found["linear_probe"]), [_half(TESTS["linear_probe"])])
    _close(_errors(found["full_ft"]), [_half(TESTS["full_ft"])])
    _close(_errors(found["bitfit"]), [math.nan])  # one seed: no interval, no bar
    assert "95% CI" in ax.get_ylabel() and "seeds" in ax.get_ylabel()

    fig = plots._build_accuracy_vs_shots(rows)
    ax = fig.axes[0]
    found = _by_label(ax)
    # shots 5 then "all" (shots 0); the shots-5 accuracies are the same seeds' minus 0.1.
    for name in TESTS:
        _close(_errors(found[name]), [_half(TESTS[name])] * 2)
    assert "95% CI" in ax.get_ylabel() and "mean over 1-3 seeds" in ax.get_ylabel()


def test_shifted_bars_carry_the_interval_from_shifted_std_and_the_seed_count():
    fig = plots._build_shifted_accuracy(_rows(_records()))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["linear_probe", "full_ft", "bitfit"]
    bars = _by_label(ax)
    assert set(bars) == {"test (in distribution)", "noise"}
    _close(_errors(bars["test (in distribution)"].errorbar),
           [_half(TESTS["linear_probe"]), _half(TESTS["full_ft"]), math.nan])
    _close(_errors(bars["noise"].errorbar),
           [_half(NOISE["linear_probe"]), _half(NOISE["full_ft"]), math.nan])
    assert "95% CI" in ax.get_ylabel()


def test_transfer_curves_and_target_vs_source_carry_the_interval():
    tests = {0: [0.50, 0.56, 0.60], 1: [0.80, 0.82, 0.88], 2: [0.70, 0.71, 0.79]}
    records = [_record(f"transfer_n:{n}", s, tests[n][s], experiment="AnB")
               for n in tests for s in SEEDS]
    fig = plots._build_transfer_curves(_rows(records))
    ax = fig.axes[0]
    (curve,) = ax.containers
    _close(_errors(curve), [_half(tests[1]), _half(tests[2])])
    (band,) = ax.patches  # the base (N = 0): its interval as a band
    assert band.get_height() == pytest.approx(2 * _half(tests[0]))
    assert "95% CI" in ax.get_ylabel()

    sources, targets = [0.90, 0.93, 0.97], [0.30, 0.41, 0.45]
    records = [_record("full_ft", s, sources[s], target="mnist_m")
               for s in SEEDS]
    for r, t in zip(records, targets):
        r["metrics"]["target"] = {"accuracy": t}
    fig = adaptation._build_target_vs_source(selection.select(records))
    ax = fig.axes[0]
    (point,) = ax.containers
    _close(_errors(point, "x"), [_half(sources)])
    _close(_errors(point, "y"), [_half(targets)])
    assert "95% CI" in ax.get_xlabel()


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def test_legends_never_cover_data():
    # Accuracies near 1 fill the axes up to its top: a legend inside covers some bar.
    records = [_record(name, s, 0.93 + 0.01 * s, shifted={"noise": 0.9 + 0.02 * s,
                                                          "blur": 0.95 + 0.01 * s})
               for name in ("linear_probe", "lp_ft", "full_ft", "bitfit") for s in SEEDS]
    fig = _drawn(plots._build_shifted_accuracy(_rows(records)))
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert len(ax.patches) == 12
    for bar in ax.patches:
        assert not legend.overlaps(bar.get_window_extent()), bar
    # Every other figure: the legend sits outside its axes, so it covers no data at all.
    history = [{"step": k, "loss": 1 / (k + 1)} for k in range(10)]
    records = [r | {"history": history, "target": "mnist_m"} for r in records]
    for r in records:
        r["metrics"]["target"] = {"accuracy": 0.5}
    records += [_record("full_ft", s, 0.9, shots=5) for s in SEEDS]
    records += [_record(f"transfer_n{p}:{n}", s, 0.8, experiment="AnB")
                for p in ("", "+") for n in range(3) for s in SEEDS]
    records += [_record("lp_ft", s, 0.9, hparams={"lr": lr}, val=v)
                for lr, v in ((1e-3, 0.6), (1e-2, 0.7)) for s in SEEDS]
    selections = selection.select(records)
    rows = tables.summary_rows(selections)
    figures = [plots._build_accuracy_vs_trainable(rows), plots._build_accuracy_vs_shots(rows),
               plots._build_transfer_curves(rows), learning._build_learning_curves(selections),
               adaptation._build_target_vs_source(selections),
               *[f for _, f in plots._build_val_vs_lr(selections)]]
    assert len(figures) == 6 and all(f is not None for f in figures)
    for fig in map(_drawn, figures):
        for ax in fig.axes:
            if ax.get_visible() and ax.get_legend():
                assert not ax.get_legend().get_window_extent().overlaps(
                    ax.get_window_extent()), ax.get_title()


def _pixels_of(fig, ax, color) -> int:
    """Returns how many pixels of ``ax``'s plotting area (outside its legend) have
    ``color``."""
    from matplotlib.colors import to_rgb

    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    height = image.shape[0]
    keep = np.zeros(image.shape[:2], dtype=bool)
    box = ax.get_window_extent()
    keep[int(height - box.y1) + 2:int(height - box.y0) - 2, int(box.x0) + 2:int(box.x1) - 2] = 1
    legend = ax.get_legend().get_window_extent()
    keep[int(height - legend.y1):int(height - legend.y0) + 1,
         int(legend.x0):int(legend.x1) + 1] = 0
    target = np.array(to_rgb(color)) * 255
    return int((keep & (np.abs(image - target).max(axis=-1) <= 10)).sum())


def test_identical_val_curves_both_stay_visible():
    """full_ft and lp_ft with the same validation accuracy at every learning rate: the
    second line lies exactly on the first, which must still show."""
    records = [_record(name, s, 0.8, hparams={"lr": lr}, val=v)
               for name in ("full_ft", "lp_ft")
               for lr, v in ((1e-4, 0.60), (1e-3, 0.75), (1e-2, 0.70)) for s in SEEDS]
    ((key, fig),) = plots._build_val_vs_lr(selection.select(records))
    assert key == "lr"
    ax = _drawn(fig).axes[0]
    first, second = [line for line in ax.get_lines() if line.get_label() in ("full_ft", "lp_ft")]
    assert list(first.get_ydata()) == list(second.get_ydata())
    assert (first.get_marker(), first.get_linestyle()) != \
        (second.get_marker(), second.get_linestyle())
    assert second.get_linewidth() < first.get_linewidth()
    assert second.get_markersize() < first.get_markersize()
    for line in (first, second):
        assert _pixels_of(fig, ax, line.get_color()) > 150, line.get_label()
