"""Depthwise conv on CPU: XLA's grouped conv vs the sum of shifted slices, per train step.

Times the main job's train step (experiments/lp_vs_ft.py: EfficientNet-Lite0, 48 px,
batch 32, BatchNorm on running statistics) for each strategy with every depthwise conv
computed either by ``lax.conv_general_dilated`` (``conv``) or as
``sum_ij x_pad[:, i::s, j::s, :] * k[i, j]`` (``slices``, tljax's default on CPU). The step
is built like a real run's (``strategies.labels`` + ``optim.make`` + ``train.make_step``).
All steps are compiled first; then each round runs one step of every (strategy, route)
in turn, so load from other processes falls on all of them alike; the table gives the
median over rounds, and the ratio is conv / slices.

    python benchmarks/depthwise.py
    python benchmarks/depthwise.py --strategies full_ft linear_probe --rounds 30 --json dw.json

XLA flags (``XLA_FLAGS``) apply to the whole process: compare them across runs.

One run on a 2-core CPU shared with other jobs (medians, ms): full_ft 286 slices vs 971
conv (3.4x), linear_probe 51 vs 190 (3.7x).
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from tljax import config, optim, strategies, train
from tljax.run.settings import strategy_config
from tljax.run.sources import create_model
from tljax.models import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(model, cfg, strategy: str, route: str, batch: int) -> dict:
    """Returns the compiled step of ``strategy`` with depthwise ``route``, its state and batch."""
    run_cfg = strategy_config(cfg, strategy)
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    rules = strategies.labels(strategy, variables["params"], model.blocks)
    frozen = strategies.frozen_blocks(rules, model.blocks)
    if run_cfg.bn_mode == "eval":
        frozen = model.block_names
    tx = optim.make(run_cfg, rules)
    step = train.make_step(model.module, rules, tx, frozen)
    rng = np.random.default_rng(0)
    x = rng.normal(size=model.dummy_input(batch).shape).astype(np.float32)
    y = rng.integers(0, 5, batch)
    state = train.init_state(variables, tx)
    previous = os.environ.get("TLJAX_DEPTHWISE")
    os.environ["TLJAX_DEPTHWISE"] = route  # read when the step is traced
    try:
        start = time.perf_counter()
        compiled = step.lower(state, x, y).compile()
        compile_seconds = time.perf_counter() - start
    finally:
        if previous is None:
            del os.environ["TLJAX_DEPTHWISE"]
        else:
            os.environ["TLJAX_DEPTHWISE"] = previous
    return {"strategy": strategy, "route": route, "step": compiled, "state": state,
            "batch": (x, y), "compile_seconds": compile_seconds, "times": [], "losses": []}


def run_step(entry: dict) -> float:
    """Runs one step of ``entry`` (its state advances); returns its wall seconds."""
    start = time.perf_counter()
    entry["state"], metrics = entry["step"](entry["state"], *entry["batch"])
    jax.block_until_ready(entry["state"].params)
    seconds = time.perf_counter() - start
    entry["losses"].append(float(metrics["loss"]))
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=os.path.join(ROOT, "experiments", "lp_vs_ft.py"))
    parser.add_argument("--model", help="override the experiment's model (e.g. with --weights '')")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--strategies", nargs="+", default=["full_ft", "linear_probe"])
    parser.add_argument("--routes", nargs="+", default=list(layers.DEPTHWISE_ROUTES),
                        choices=layers.DEPTHWISE_ROUTES)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    cfg = config.load(args.experiment)
    overrides = {"image_size": args.image_size, "weights": ""}  # timing needs no weights
    if args.model:
        overrides["model"] = args.model
    cfg = config.apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])
    model = create_model(cfg, 5)
    entries = [build(model, cfg, s, r, args.batch) for s in args.strategies for r in args.routes]
    for _ in range(args.warmup):
        for e in entries:
            run_step(e)
    for _ in range(args.rounds):
        for e in entries:
            e["times"].append(run_step(e))
    rows = [{"strategy": e["strategy"], "route": e["route"],
             "compile_seconds": e["compile_seconds"],
             "median_ms": 1e3 * float(np.median(e["times"])),
             "min_ms": 1e3 * float(np.min(e["times"])),
             "final_loss": e["losses"][-1]} for e in entries]
    print(f"{cfg.model}, {args.image_size} px, batch {args.batch}, bn_mode {cfg.bn_mode}, "
          f"{jax.default_backend()}, {args.rounds} interleaved rounds after {args.warmup} warm-up"
          + (f", XLA_FLAGS={os.environ['XLA_FLAGS']}" if os.environ.get("XLA_FLAGS") else ""))
    print("| strategy | route | median ms | min ms | compile s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['route']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
              f"{r['compile_seconds']:.1f} |")
    by = {(r["strategy"], r["route"]): r for r in rows}
    for s in args.strategies:
        if (s, "conv") in by and (s, "slices") in by:
            print(f"{s}: conv / slices = "
                  f"{by[(s, 'conv')]['median_ms'] / by[(s, 'slices')]['median_ms']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
