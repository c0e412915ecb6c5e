"""What each freezing strategy costs per step: flops (XLA cost analysis), compile time,
step time and trainable params, side by side in one process.

Frozen compute is skipped by construction (only trainable params are differentiated), so
a linear probe's step costs a forward pass plus the head's gradient, and last-k sits
between it and full fine-tuning.

    python benchmarks/strategy_cost.py --model resnet18 --image-size 64 --batch 16
"""

import argparse
import json
import sys
import time

import jax
import numpy as np

from tljax import models, optim, strategies, train
from tljax.config import transfer

DEFAULT = ["linear_probe", "last_k:1", "last_k:3", "bitfit", "norm_only", "llrd:0.65", "full_ft"]


def measure(model, strategy: str, batch: int, repeats: int) -> dict:
    """Returns flops, compile and step seconds, and trainable params of one strategy's step."""
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    rules = strategies.labels(strategy, variables["params"], model.blocks)
    tx = optim.make(transfer(steps=100), rules)
    step = train.make_step(model.module, rules, tx, strategies.frozen_blocks(rules, model.blocks))
    rng = np.random.default_rng(0)
    x = rng.normal(size=model.dummy_input(batch).shape).astype(np.float32)
    y = rng.integers(0, 10, batch)
    state = train.init_state(variables, tx)
    start = time.perf_counter()
    compiled = step.lower(state, x, y).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    state, _ = compiled(state, x, y)  # warm up
    jax.block_until_ready(state.params)
    start = time.perf_counter()
    for _ in range(repeats):
        state, _ = compiled(state, x, y)
    jax.block_until_ready(state.params)
    trainable, total = strategies.count(variables["params"], rules)
    return {"strategy": strategy, "gflops": cost["flops"] / 1e9,
            "compile_seconds": compile_seconds,
            "step_seconds": (time.perf_counter() - start) / repeats,
            "trainable_params": trainable, "total_params": total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=DEFAULT)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    model = models.create(args.model, 10, image_size=args.image_size)
    rows = [measure(model, s, args.batch, args.repeats) for s in args.strategies]
    full = next((r for r in rows if r["strategy"] == "full_ft"), rows[-1])
    print(f"{args.model}, {args.image_size} px, batch {args.batch}, {jax.default_backend()}")
    print("| strategy | trainable % | GFLOP/step | x full_ft | compile s | step s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {100 * r['trainable_params'] / r['total_params']:.2f} | "
              f"{r['gflops']:.2f} | {r['gflops'] / full['gflops']:.2f} | "
              f"{r['compile_seconds']:.1f} | {r['step_seconds']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
