"""``tljax bench`` results as a Markdown table, a JSON file and a PNG plot."""

import datetime
import importlib.metadata
import json
import os
import platform


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(infos: list, settings: dict) -> dict:
    """Returns the machine block: CPU, cores, versions, the JAX children's backend and
    ``XLA_FLAGS`` (as they saw them, after tljax's own defaults), date and ``settings``."""
    jax_infos = [i for i in infos if "xla_flags" in i]
    torch_infos = [i for i in infos if "torch_threads" in i]
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "jax": _version("jax"),
        "jaxlib": _version("jaxlib"), "torch": _version("torch"),
        "backend": jax_infos[0]["backend"] if jax_infos else None,
        "device": jax_infos[0]["device"] if jax_infos else None,
        "xla_flags": jax_infos[0]["xla_flags"] if jax_infos else os.environ.get("XLA_FLAGS", ""),
        "torch_threads": torch_infos[0]["torch_threads"] if torch_infos else None,
        "torch_backend": torch_infos[0]["backend"] if torch_infos else None,
        "mem_source": sorted({i["mem_source"] for i in infos if i.get("mem_source")}),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **settings,
    }


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def markdown(rows: list, info: dict) -> str:
    """Returns the Markdown table of ``rows``, with the machine and settings above it.

    ``x full_ft`` is a step's time over the same method's full_ft step (same model);
    ``x torch`` over the torch step of the same model and strategy; ``GFLOP`` the step's
    matmul and convolution FLOPs (``bench.flops``), ``TFLOP/s`` those over the step's time,
    ``of peak`` that over ``info["peak_tflops"]`` (a column only where a peak was given).
    """
    ok = {(r["model"], r["strategy"], r["method"]): r for r in rows if r["status"] == "ok"}
    flags = info.get("xla_flags") or "(none)"
    peak = info.get("peak_tflops")
    lines = [
        (f"{info['cpu']}, {info['cores']} cores; jax {info['jax']}, jaxlib {info['jaxlib']}, "
        f"torch {info['torch'] or '-'}; backend {info['backend']}"
        f"{'; torch ' + info['torch_backend'] if info.get('torch_backend') else ''}; "
        f"XLA_FLAGS={flags}; "
        f"{info['date']}"),
        (f"batch {info['batch']}, image size {info['image_size']} px (text: token ids), "
        f"{info.get('dtype', 'float32')}, matmul precision "
        f"{info.get('matmul_precision', 'highest')}, "
        f"{info['rounds']} interleaved rounds after {info['warmup']} warm-up; "
        f"optimizer: {info['optimizer']}; peak memory: {', '.join(info['mem_source']) or '-'}"
        + (f"; peak {peak:g} TFLOP/s as stated" if peak else "")),
        "",
        ("| model | strategy | method | step ms | x full_ft | x torch | examples/s | "
        "compile s | peak MB | trainable | GFLOP | TFLOP/s |" + (" of peak |" if peak else "")),
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if peak else ""),
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['strategy']} | {r['method']} | "
                         f"{r['status']}: {r['reason']} |  |  |  |  |  |  |  |  |"
                         + ("  |" if peak else ""))
            continue
        full = ok.get((r["model"], "full_ft", r["method"]))
        torch = ok.get((r["model"], r["strategy"], "torch"))
        flops = r["flops"] / 1e9 if r["flops"] else None
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['method']} | {r['step_ms']:.1f} | "
            f"{_ratio(r['step_ms'], full and full['step_ms'])} | "
            f"{_ratio(r['step_ms'], torch and torch['step_ms'])} | "
            f"{_num(r['examples_per_s'], '.1f')} | {_num(r['compile_s'], '.1f')} | "
            f"{_num(r['peak_mem_mb'], '.0f')} | {_num(r['trainable_params'], ',')} | "
            f"{_num(flops, '.2f')} | {_num(r.get('tflops'), '.3g')} |"
            + (f" {_num(r.get('peak_fraction'), '.1%')} |" if peak else ""))
    return "\n".join(lines)


def write_json(path: str, rows: list, info: dict) -> None:
    """Writes ``{"rows": rows, "machine": info}`` to ``path``."""
    with open(path, "w") as f:
        json.dump({"rows": rows, "machine": info}, f, indent=1)


def plot(path: str, rows: list, info: dict) -> None:
    """Writes a PNG to ``path``: step ms and peak memory per strategy, one bar per method,
    one row of panels per model."""
    from matplotlib.figure import Figure  # Agg canvas by default: headless

    ok = [r for r in rows if r["status"] == "ok"]
    models = list(dict.fromkeys(r["model"] for r in ok))
    fig = Figure(figsize=(12, 3.6 * max(len(models), 1)))
    axes = fig.subplots(max(len(models), 1), 2, squeeze=False)
    for row_axes, model in zip(axes, models):
        mine = [r for r in ok if r["model"] == model]
        strategies = list(dict.fromkeys(r["strategy"] for r in mine))
        methods = list(dict.fromkeys(r["method"] for r in mine))
        width = 0.8 / max(len(methods), 1)
        for ax, field, label in ((row_axes[0], "step_ms", "step ms (median)"),
                                 (row_axes[1], "peak_mem_mb", "peak memory MB")):
            for j, method in enumerate(methods):
                by = {r["strategy"]: r[field] for r in mine if r["method"] == method}
                xs = [i + j * width for i, s in enumerate(strategies) if by.get(s) is not None]
                ys = [by[s] for s in strategies if by.get(s) is not None]
                ax.bar(xs, ys, width, label=method)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(strategies))])
            ax.set_xticklabels(strategies, rotation=20, fontsize=8)
            ax.set_ylabel(label)
            ax.set_title(f"{model}, batch {info['batch']}")
        row_axes[0].legend(fontsize=8)
    fig.suptitle(f"tljax bench: {info['cpu']}, {info['cores']} cores, "
                 f"XLA_FLAGS={info.get('xla_flags') or '(none)'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
