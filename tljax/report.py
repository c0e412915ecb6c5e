"""Result records -> Markdown tables (one row per run, and a per-strategy summary)."""

import json
import math
import os
from collections import defaultdict


def read_results(path: str) -> list:
    """Returns the records of a ``results.jsonl`` file, in file order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _acc(record: dict, split: str) -> float:
    return record.get("metrics", {}).get(split, {}).get("accuracy", math.nan)


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def runs_table(records: list) -> str:
    """Returns a Markdown table with one row per run."""
    extra = sorted({s for r in records for s in r.get("metrics", {})} - {"train", "val", "test"})
    head = ["strategy", "seed", "trainable", "total", "train acc", "val acc", "test acc",
            "test F1", *[f"{s} acc" for s in extra], "train s", "status"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        m = r.get("metrics", {})
        cells = [r["strategy"], str(r["seed"]), f"{r['trainable_params']:,}",
                 f"{r['total_params']:,}", _fmt(_acc(r, "train")), _fmt(_acc(r, "val")),
                 _fmt(_acc(r, "test")), _fmt(m.get("test", {}).get("macro_f1", math.nan)),
                 *[_fmt(_acc(r, s)) for s in extra], f"{r.get('train_seconds', 0):.1f}",
                 r["status"]]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def summary_table(records: list) -> str:
    """Returns a Markdown table per strategy: test accuracy mean ± std over seeds, params, time."""
    groups = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            groups[r["strategy"]].append(r)
    head = ["strategy", "seeds", "trainable %", "test acc (mean ± std)", "val acc", "train s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy, rs in groups.items():
        tests = [_acc(r, "test") for r in rs]
        mean = sum(tests) / len(tests)
        std = math.sqrt(sum((t - mean) ** 2 for t in tests) / len(tests))
        val = sum(_acc(r, "val") for r in rs) / len(rs)
        pct = 100.0 * rs[0]["trainable_params"] / rs[0]["total_params"]
        secs = sum(r.get("train_seconds", 0) for r in rs) / len(rs)
        rows.append(f"| {strategy} | {len(rs)} | {pct:.2f} | {mean:.3f} ± {std:.3f} | "
                    f"{_fmt(val)} | {secs:.1f} |")
    return "\n".join(rows)


def markdown(records: list, title: str = "Results") -> str:
    """Returns the full Markdown report: summary by strategy, then every run."""
    return (f"# {title}\n\n## By strategy\n\n{summary_table(records)}\n\n"
            f"## Runs\n\n{runs_table(records)}\n")


def write(records: list, workdir: str, title: str = "Results") -> str:
    """Writes ``workdir/results.md``; returns the Markdown."""
    text = markdown(records, title)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    return text
