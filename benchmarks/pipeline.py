"""Images/s the streamed input path delivers at 224 px, beside the training step's.

Can the host feed the accelerator? The benchmark writes N generated PNG images (default
2,048 of 256 px, 4 class folders), prepares the folder once (decoded into array_record:
the decode is paid there, once per dataset, and timed as such), then reads the train split
the way a streamed run does (``tljax.data.streaming``: records read by index, the view's
corruption applied, resized 256 -> 224 bilinear with antialiasing, normalised, on
``tljax.data.lazy.threads()`` worker threads, prefetched) and puts every batch on the
default device. It times that for a clean view and a corrupted one (``@gaussian_noise:3``),
and, on one batch in the main thread, each stage alone (read, corrupt, resize + normalise).

Beside it, in a child process afterwards (so the two never share the cores), ``tljax bench``
times the tljax training step of ``--models`` (default resnet50) for ``linear_probe``
(through the frozen network) and ``full_ft`` at the same batch and size: the images/s the
pipeline must reach for the step never to wait. On a GPU host the step rows are the GPU's
(``benchmarks/gpu_check.py`` runs the pipeline there beside ``tljax bench``'s bfloat16 rows).

    python benchmarks/pipeline.py                        # about 4 min on 2 CPU cores
    python benchmarks/pipeline.py --images 512 --skip-step
    python benchmarks/pipeline.py --json pipeline.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SIDE = 256  # stored images: larger than the model's 224, as real photos are
VIEWS = ("", "@gaussian_noise:3")


def _prep():
    from tljax.models.registry import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    return Preprocessing(224, 3, IMAGENET_MEAN, IMAGENET_STD)


def stream_rate(root: str, view: str, batch: int, batches: int) -> dict:
    """Returns images/s of ``batches`` streamed train batches of ``root + view`` placed on
    the default device (the first batch, which starts the worker threads, untimed)."""
    import jax

    from tljax import data

    prep = _prep()
    ds = data.streaming.load(root + view, prep=prep, stream_above_mb=0)
    split = ds.splits["train"]
    x = data.preprocess(split.images, prep)
    if isinstance(x, np.ndarray):
        raise SystemExit("the split did not stream; the benchmark measures the streamed path")
    it = data.batches(x, split.labels, batch, seed=0)
    jax.block_until_ready(jax.device_put(next(it)))
    start = time.perf_counter()
    for _ in range(batches):
        images, labels = next(it)
        jax.block_until_ready(jax.device_put((images, labels)))
    seconds = time.perf_counter() - start
    return {"view": view or "clean", "images_per_s": batch * batches / seconds,
            "batches": batches, "seconds": seconds}


def stage_rates(root: str, batch: int) -> dict:
    """Returns images/s of each host stage on one batch, in this thread alone: reading the
    uint8 records, the same with the corruption applied, and resize + normalise."""
    from tljax import data

    prep = _prep()
    rates = {}
    for view, name in (("", "read"), ("@gaussian_noise:3", "read + corrupt")):
        records = data.streaming.load(root + view, prep=prep, stream_above_mb=0) \
            .splits["train"].images
        idx = np.arange(batch)
        records[idx]  # warm: opens the files
        start = time.perf_counter()
        uint8 = records[idx]
        rates[name] = batch / (time.perf_counter() - start)
    data.pipeline.preprocess(uint8[:1], prep)  # compiles the resize
    start = time.perf_counter()
    data.pipeline.preprocess(uint8, prep)
    rates["resize + normalise"] = batch / (time.perf_counter() - start)
    return rates


def step_rates(models: list, batch: int, rounds: int, workdir: str) -> list:
    """Returns ``tljax bench`` rows (tljax method, linear_probe and full_ft) for ``models``
    at 224 px, run in a child process."""
    out = os.path.join(workdir, "bench.json")
    cmd = [sys.executable, "-m", "tljax.cli", "bench", "--models", *models,
           "--strategies", "linear_probe", "full_ft", "--methods", "tljax",
           "--batch", str(batch), "--image-size", "224", "--rounds", str(rounds),
           "--warmup", "1", "--json", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"tljax bench failed:\n{proc.stderr[-3000:]}")
    with open(out) as f:
        return [r for r in json.load(f)["rows"] if r.get("step_ms")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="images written (4 classes)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per view")
    parser.add_argument("--models", nargs="+", default=["resnet50"])
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per bench row")
    parser.add_argument("--skip-step", action="store_true", help="the pipeline alone")
    parser.add_argument("--workdir", default="/tmp/tljax-pipeline")
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TLJAX_DATA_DIR", os.path.join(args.workdir, "data"))
    import jax

    import stream_rss
    from tljax.data import datasets, lazy

    root = os.path.join(args.workdir, f"folder_{args.images}_{SIDE}px")
    stream_rss.make_folder(root, args.images, side=SIDE)
    start = time.perf_counter()
    datasets.folder_dir(root, datasets.default_data_dir())
    prepared = time.perf_counter() - start
    train = len(datasets.load(root).splits["train"].labels)
    if args.batch * args.batches > train:
        raise SystemExit(f"--batch x --batches ({args.batch * args.batches}) exceeds the "
                         f"train split ({train} images); raise --images")
    streamed = [stream_rate(root, v, args.batch, args.batches) for v in VIEWS]
    stages = stage_rates(root, args.batch)
    steps = [] if args.skip_step else step_rates(args.models, args.batch, args.rounds,
                                                 args.workdir)
    machine = {"cpu_cores": os.cpu_count(), "worker_threads": lazy.threads(),
               "device": str(jax.devices()[0]), "jax": jax.__version__}
    result = {"machine": machine, "images": args.images, "stored_px": SIDE, "batch": args.batch,
              "prepare_seconds": prepared, "prepare_images_per_s": args.images / prepared,
              "streamed": streamed, "stages_one_thread": stages, "steps": steps}
    print(f"streamed input at 224 px from {SIDE} px records, batch {args.batch}; "
          f"{machine['cpu_cores']} CPU cores, {machine['worker_threads']} worker threads, "
          f"device {machine['device']}\n")
    print("| what | images/s |\n| --- | ---: |")
    print(f"| prepare (decode PNG -> array_record, once per folder) | "
          f"{result['prepare_images_per_s']:,.0f} |")
    for s in streamed:
        work = "read, resize" if s["view"] == "clean" else "read, corrupt, resize"
        print(f"| streamed, {s['view']}: {work}, normalise, to device | "
              f"{s['images_per_s']:,.0f} |")
    for name, rate in stages.items():
        print(f"| one thread: {name} | {rate:,.0f} |")
    for r in steps:
        print(f"| step: {r['model']} {r['strategy']} ({r['method']}, {r.get('dtype', 'float32')}) "
              f"| {r['examples_per_s']:,.1f} |")
    if steps:
        need = max(r["examples_per_s"] for r in steps)
        have = min(s["images_per_s"] for s in streamed)
        print(f"\nslowest streamed view / fastest step: {have / need:,.1f}x "
              f"({'the pipeline keeps up' if have >= need else 'the step waits for input'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
