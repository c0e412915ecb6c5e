"""``tljax run --dry-run``: a config checked in full, and its plan, without data or training.

Every name and setting is validated as a real run validates it (``plan.grid_points``:
``checks.validate`` over the config and each strategy's grid points, ``per_strategy``
entries included):
the model exists, each strategy resolves to rules over the model's param shapes
(``jax.eval_shape``: no weights read, nothing allocated), dataset specs parse and name a
built-in, a TFDS catalog name or a path, sweep keys are real keys. What a real run would
need that this machine lacks (a weights file or package, a dataset path, prepared TFDS
data) is listed as ``needs:`` lines and is not an error. Nothing is written.
"""

import os

from tljax import adapt, data
from tljax.run import checks, plan
from tljax.run.settings import method_name, published_numbers, training_path


def _prepared(name: str, data_dir: str) -> bool:
    """Returns whether TFDS catalog dataset ``name`` is prepared under ``data_dir``."""
    import tensorflow_datasets as tfds

    from tljax.data.tfds_env import quiet_tfds

    try:
        with quiet_tfds(swallow_prints=True):
            return tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # a builder that cannot even be constructed here is not prepared
        return False


def _data_needs(cfgs) -> list:
    """Returns a ``needs`` line per catalog dataset of ``cfgs`` (the config and each grid
    point's, which may sweep ``dataset``) not prepared under its data dir."""
    out, looked = [], set()
    for cfg in cfgs:
        data_dir = cfg.data_dir or data.default_data_dir()
        specs = [cfg.dataset, *cfg.shifted.values()] + (
            [cfg.pretrain.dataset, *cfg.pretrain.mix] if cfg.pretrain.dataset else [])
        for spec in specs:
            name = data.parse_spec(spec)[0]
            catalog = (name not in data.BUILTIN and name not in data.TEXT_BUILTIN
                       and data.kind(name) == "image" and "/" not in name and os.sep not in name)
            if not catalog or (name, data_dir) in looked:  # a TFDS builder is slow: once each
                continue
            looked.add((name, data_dir))
            if not _prepared(name, data_dir):
                how = "download=True prepares it" if not cfg.download else "the run downloads it"
                out.append(f"prepared data: TFDS {name!r} under {data_dir} ({how}, or "
                           f"`tfds build {name} --data_dir {data_dir}`)")
    return out


def _runs(n_points: int, groups: int, seeds: int, select_seeds: int, final_fit: str) -> tuple:
    """Returns ``(runs, how)``: how many runs one strategy costs, and why, in words.
    ``groups``: its distinct (dataset, shots, adapt), each of which selects a point of its own."""
    each = "" if groups == 1 else f" per (dataset, shots, adapt), {groups} of them"
    if n_points > 1 and 0 < select_seeds < seeds:
        runs = n_points * select_seeds + groups * (seeds - select_seeds)
        how = (f"{n_points} points x {select_seeds} seed(s), then {seeds - select_seeds} more "
               f"at the point selected on val{each}")
    else:
        runs = n_points * seeds
        how = f"{n_points} point(s) x {seeds} seed(s)"
    if final_fit:
        runs += groups * seeds
        how += f", then the selected point{each} refit on {final_fit} x {seeds} seed(s)"
    return runs, how


def _weights_text(cfg) -> str:
    """Returns where the run's weights come from, in words."""
    if cfg.weights:
        return cfg.weights
    p = cfg.pretrain
    if p.dataset:
        mix = f" + {', '.join(p.mix)}" if p.mix else ""
        return (f"(a source model the run trains first: {cfg.model} on {p.dataset}{mix}, "
                f"{p.steps} steps, unless the workdir holds it)")
    return "(random init)"


def describe(cfg, source: str = "") -> str:
    """Returns the dry run's text: the plan and ``needs:`` lines. Raises ``UserError`` (one
    line, naming the bad value) when a name or setting is invalid."""
    needs = []
    model = checks.validate(cfg, only=(), needs=needs)
    points = plan.grid_points(cfg, needs=needs)  # every grid point's effective config, validated
    seeds = [int(s) for s in cfg.seeds]
    lines = [f"dry run of {source or cfg.experiment}: valid; nothing trained or written",
             f"model {model.name} ({model.preprocessing.kind}), weights "
             f"{_weights_text(cfg)}; dataset {cfg.dataset}"
             + (f", splits {cfg.splits.to_dict()}" if cfg.splits else "")
             + (f"; shifted {cfg.shifted.to_dict()}" if cfg.shifted else ""),
             f"seeds {seeds}; select_seeds {cfg.select_seeds or 'all'}; selection on val "
             f"{cfg.select_metric}" + (f"; final_fit {cfg.final_fit}" if cfg.final_fit else "")]
    total = 0
    for strategy in cfg.strategies:
        grid = [p for p in points if p.strategy == strategy]
        # Selection is per group: each dataset, shots and adaptation objective picks its own.
        groups = len({(p.cfg.dataset, p.cfg.shots, p.cfg.adapt) for p in grid})
        runs, how = _runs(len(grid), groups, len(seeds), cfg.select_seeds, cfg.final_fit)
        total += runs
        swept = plan.strategy_grid(cfg, strategy)
        text = ", ".join(f"{k}={v}" for k, v in sorted(swept.items())) or "nothing swept"
        path = "/".join(dict.fromkeys(p.path for p in grid)) or training_path(strategy)
        lines.append(f"  {strategy:<18} {path:<13} grid: {text}; {how} = {runs} runs")
        if strategy in cfg.published:
            lines[-1] += f"; published {published_numbers(cfg, strategy)['published']}"
    lines.append(f"runs in all: {total}")
    if any("adapt" in p.path for p in points):
        lines.append(f"adaptation: target {cfg.target} (its train split's inputs, never its "
                     "labels); its runs take every batch through the network, so the feature "
                     "cache does not apply to them")
    methods = {method_name(s, o) for s in cfg.strategies for o in adapt.OBJECTIVES}
    for key in ("per_strategy", "published"):
        for name in cfg[key].keys():
            if name not in (cfg.strategies if key == "per_strategy" else methods):
                lines.append(f"warning: {key} names {name!r}, which is not in strategies; "
                             "it is not used")
    needs = list(dict.fromkeys(needs + _data_needs([cfg, *(p.cfg for p in points)])))
    lines += [f"needs: {line}" for line in needs] or ["needs: nothing more; ready to run here"]
    return "\n".join(lines)
