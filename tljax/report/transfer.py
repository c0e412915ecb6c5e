"""Yosinski et al. (2014)'s transfer curves from summary rows: AnB, AnB+, BnB, BnB+ and the
base, for the report's table and figure."""

import re

from tljax.report.stats import is_finite as _finite
from tljax.report.tables import _fmt, _table

_TRANSFER = re.compile(r"transfer_n(\+?):(\d+)")


def transfer_lines(rows: list) -> dict:
    """Returns ``{(dataset, label): [(N, row), ...]}``, N ascending, for the
    ``transfer_n:N`` / ``transfer_n+:N`` summary rows with N >= 1: label ``SOURCE`` for
    copied blocks frozen, ``SOURCE+`` for copied blocks fine-tuned (Yosinski et al.'s AnB
    and AnB+), where SOURCE is the record's experiment name (one config per source model,
    e.g. AnB and BnB).
    A curve holds the rows of one config (``settings_hash``): two configs under one
    experiment name in one workdir give two curves, ``NAME [hash]`` each, never one curve
    that zigzags between them.
    N = 0 (every block re-initialised) is the base: ``(dataset, "base")`` holds its first
    source's row as ``[(0, row)]``."""
    by_config = {}
    for r in rows:
        m = _TRANSFER.fullmatch(r["strategy"])
        if not (m and _finite(r["test"])):
            continue
        n = int(m[2])
        if n == 0:  # the same network whatever the source: one base per dataset
            by_config.setdefault((r["dataset"], "base", ""), [(0, r)])
            continue
        source = r.get("experiment") or r["sweep_hash"][:6]
        config = r.get("settings_hash") or ""  # older records: by experiment name alone
        by_config.setdefault((r["dataset"], source + m[1], config), []).append((n, r))
    configs = {}
    for dataset, label, config in by_config:
        configs.setdefault((dataset, label), []).append(config)
    lines = {}
    for (dataset, label, config), points in by_config.items():
        shared = len(configs[(dataset, label)]) > 1
        name = f"{label} [{config[:6] or 'earlier records'}]" if shared else label
        lines[(dataset, name)] = sorted(points, key=lambda p: p[0])
    return lines


def transfer_table(rows: list):
    """Returns a Markdown table of test accuracy (mean ± sample std) with one row per N
    and one column per curve (``SOURCE``: copied blocks frozen, ``SOURCE+``: fine-tuned),
    the base (N = 0) in its own row; None without ``transfer_n`` rows. One table per
    dataset (and training-set size), titled by it when there are several."""
    groups = {}
    for r in rows:
        groups.setdefault((str(r["dataset"]), r["shots"]), []).append(r)
    out = []
    for (dataset, shots), group in groups.items():
        lines = transfer_lines(group)
        curves = [label for (_, label) in lines if label != "base"]
        if not curves:
            continue
        cell = lambda r: f"{_fmt(r['test'])} ± {_fmt(r['test_std'])}"  # noqa: E731
        body = []
        base = lines.get((dataset, "base"))
        if base:
            body.append(["0 (base: from scratch)", *[cell(base[0][1])] * len(curves)])
        for n in sorted({n for label in curves for n, _ in lines[(dataset, label)]}):
            at = {label: dict(lines[(dataset, label)]).get(n) for label in curves}
            body.append([str(n), *[cell(at[c]) if at[c] else "-" for c in curves]])
        title = f"{dataset}, shots {shots or 'all'}" if len(groups) > 1 else ""
        out.append((f"{title}\n\n" if title else "") + _table(["N", *curves], body))
    return "\n\n".join(out) or None
