"""Which CPU configuration is fastest: tljax's train step under several configurations of
the conv routes and XLA flags, interleaved step by step in one run.

Each (model, strategy, configuration) is a ``tljax bench`` child (``tljax.bench.runner``)
with its own environment, set before it imports JAX: ``default`` (what tljax does on CPU),
``no_patches`` (``TLJAX_PATCHES_MAX_SIDE=0``: small maps through XLA's conv too, tljax
before the patches route), ``depthwise_conv`` (``TLJAX_DEPTHWISE=conv``: XLA's grouped conv
for depthwise layers), ``ynn_off`` (``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=``:
XLA's YNNPACK fusions off). The table gives each configuration's median step and its ratio
to ``default``; below 1.00 would mean a faster configuration than tljax's own.

    python benchmarks/cpu_config.py    # the main job's model, the miniatures', ResNet-18
    python benchmarks/cpu_config.py --cases resnet18@224 --rounds 5
"""

import argparse
import json
import os
import sys

from tljax.bench import OPTIMIZER, runner

CONFIGS = {
    "default": {},
    "no_patches": {"TLJAX_PATCHES_MAX_SIDE": "0"},
    "depthwise_conv": {"TLJAX_DEPTHWISE": "conv"},
    "ynn_off": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="},
}
# model@image size: the main job's (EfficientNet-Lite0, 48 px), the miniatures' (cnn, cnn6,
# 16 px) and ResNet-18 at tljax bench --quick's 64 px.
CASES = ["efficientnet_lite0@48", "cnn@16", "cnn6@16", "resnet18@64"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, help="MODEL@IMAGE_SIZE ...")
    parser.add_argument("--strategies", nargs="+", default=["full_ft", "linear_probe"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for case in args.cases:
        model, _, size = case.partition("@")
        base = runner.plan([model], args.strategies, ["tljax"], args.batch, int(size),
                           OPTIMIZER)
        entries, env_of = [], {}
        for key, spec in base:
            for name in args.configs:
                ckey = (key[0], key[1], name)
                entries.append((ckey, spec))
                env_of[ckey] = CONFIGS[name]
        got, _ = runner.run_model(entries, args.rounds, args.warmup, dict(os.environ), print,
                                  env_of)
        for r in got:
            r.update(config=r.pop("method"), image_size=int(size))
        rows += got
    print("\n| model | px | strategy | config | step ms | x default | compile s |")
    print("|---|---|---|---|---|---|---|")
    default = {(r["model"], r["image_size"], r["strategy"]): r["step_ms"]
               for r in rows if r["config"] == "default"}
    for r in rows:
        base_ms = default.get((r["model"], r["image_size"], r["strategy"]))
        ratio = f"{r['step_ms'] / base_ms:.2f}" if r["step_ms"] and base_ms else "-"
        step = f"{r['step_ms']:.1f}" if r["step_ms"] else r.get("reason", "failed")
        print(f"| {r['model']} | {r['image_size']} | {r['strategy']} | {r['config']} | {step} | "
              f"{ratio} | {r['compile_s'] or 0:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
