"""Peak host memory of the cached linear probe at 224 px as an image folder grows.

For each size N (default 2,000 and 20,000) the benchmark writes N generated 64x64 PNG
images in 4 class folders, prepares the folder once (``tljax.data.folders``: decoded into
array_record) in one child process, then runs the cached linear probe at 224 px in a
fresh child process: ``tljax.run.inputs.load_inputs`` (every split above ``stream_above_mb``
streams), ``tljax.run.paths.fit_probe`` (features extracted batch by batch into the cache,
then the solver), as ``tljax run`` does for ``linear_probe``. Each child reports its peak
resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and wall time; the table
puts them beside the size the split's float32 inputs would take in memory.

Model. ``tiny`` (default): tljax's ``SmallCNN`` with widths 8-16-32 and a 2x2 pool after
every block, 224x224 RGB input with ImageNet statistics, random init (about 40 MMAC per
image). EfficientNet-Lite0 at 224 px costs about 0.1 s per image on a shared 2-core CPU
(over 35 minutes for 22,000 images); ``--model efficientnet_lite0`` runs it with its
packaged ImageNet weights. The data path (read, resize 64 -> 224, normalise, prefetch) is
the same for both; only the forward pass differs.

    python benchmarks/stream_rss.py                      # 2,000 and 20,000 images, streamed
    python benchmarks/stream_rss.py --sizes 2000 --stream-above-mb -1   # in memory, to compare
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

CLASSES = 4
SIDE = 64


def make_folder(root: str, n: int, seed: int = 0, side: int = SIDE) -> None:
    """Writes ``n`` PNG images (``side`` px, RGB) into ``root/class_k/`` unless present.

    Class k is a colour gradient at angle k * 45 degrees plus noise: separable, not trivial.
    """
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for k in range(CLASSES):
        os.makedirs(os.path.join(root, f"class_{k}"), exist_ok=True)
    for i in range(n):
        k = i % CLASSES
        angle = np.pi / 4 * k
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        colour = rng.random(3)
        img = ramp[..., None] * colour + 0.35 * rng.random((side, side, 3))
        img = np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, f"class_{k}", f"{i:06d}.png"))
    open(done, "w").close()


def _tiny_model(num_classes: int):
    from tljax.models import Model, cnn
    from tljax.models.classifier import Classifier
    from tljax.models.registry import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    backbone = cnn.SmallCNN(widths=(8, 16, 32), pools=(True, True, True))
    return Model("tiny_cnn", Classifier(backbone, num_classes),
                 cnn.BLOCKS + (("head", r"head/.*"),),
                 Preprocessing(224, 3, IMAGENET_MEAN, IMAGENET_STD))


def child_prepare(root: str) -> dict:
    """Prepares the folder (decode -> array_record); returns peak RSS and wall time."""
    from tljax.data import datasets

    start = time.perf_counter()
    datasets.folder_dir(root, datasets.default_data_dir())
    return {"seconds": time.perf_counter() - start, "peak_rss": _peak_rss()}


def child_probe(root: str, model_name: str, stream_above_mb: int,
                eval_batch_size: int) -> dict:
    """Runs the cached linear probe on ``root``; returns what the table shows."""
    import jax

    from tljax import config, weights
    from tljax.run import inputs as run_inputs
    from tljax.run import paths, sources

    start = time.perf_counter()
    cfg = config.transfer(
        model="cnn" if model_name == "tiny" else model_name,
        weights="" if model_name == "tiny" else model_name, dataset=root,
        strategies=["linear_probe"], stream_above_mb=stream_above_mb,
        eval_batch_size=eval_batch_size)
    num_classes = run_inputs.dataset_classes(cfg, root)
    model = _tiny_model(num_classes) if model_name == "tiny" else \
        sources.create_model(cfg, num_classes)
    inputs = run_inputs.load_inputs(cfg, root, model.preprocessing)
    variables = model.init(jax.random.key(0))
    if model_name != "tiny":
        variables = weights.load(sources.resolve_weights(cfg), variables, model.torch_names)
    run = paths.Run(cfg, None, model, inputs, variables, {}, (), 0, state_dir="")
    paths.fit_probe(run)
    test_y = inputs.splits["test"][1]
    accuracy = float(np.mean(np.argmax(run.logits["test"], -1) == test_y))
    streamed = [name for name, (x, _) in inputs.splits.items() if not isinstance(x, np.ndarray)]
    return {"seconds": time.perf_counter() - start, "peak_rss": _peak_rss(),
            "extract_seconds": run.record["probe"]["extract_seconds"],
            "examples": {name: len(y) for name, (_, y) in inputs.splits.items()},
            "streamed": streamed, "test_accuracy": accuracy}


def _peak_rss() -> int:
    """Returns this process's peak resident set in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run_child(args: list, env: dict) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--model", default="tiny", help="tiny | efficientnet_lite0")
    parser.add_argument("--stream-above-mb", type=int, default=2048,
                        help="tljax's default; -1 holds every split in memory")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--workdir", default="/tmp/tljax-stream-rss")
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, root = args.child[:2]
        result = child_prepare(root) if kind == "prepare" else child_probe(
            root, args.model, args.stream_above_mb, args.eval_batch_size)
        print(json.dumps(result))
        return
    env = dict(os.environ, TLJAX_DATA_DIR=os.path.join(args.workdir, "data"),
               TLJAX_COMPILATION_CACHE=os.path.join(args.workdir, "jax_cache"))
    rows = []
    for n in args.sizes:
        root = os.path.join(args.workdir, f"folder_{n}")
        start = time.perf_counter()
        make_folder(root, n)
        generated = time.perf_counter() - start
        prepared = _run_child(["--child", "prepare", root], env)
        # A fresh feature cache: the probe extracts every feature, nothing is read back.
        cache = os.path.join(args.workdir, f"features_{n}_{time.time_ns()}")
        probed = _run_child(["--child", "probe", root, "--model", args.model,
                             "--stream-above-mb", str(args.stream_above_mb),
                             "--eval-batch-size", str(args.eval_batch_size)],
                            dict(env, TLJAX_FEATURE_CACHE=cache))
        float32_gb = n * 224 * 224 * 3 * 4 / 1e9
        rows.append({"images": n, "float32_inputs_gb": round(float32_gb, 2),
                     "generate_seconds": round(generated, 1),
                     "prepare_seconds": round(prepared["seconds"], 1),
                     "prepare_peak_rss_gb": round(prepared["peak_rss"] / 1e9, 2),
                     "probe_seconds": round(probed["seconds"], 1),
                     "extract_seconds": probed["extract_seconds"],
                     "probe_peak_rss_gb": round(probed["peak_rss"] / 1e9, 2),
                     "streamed": probed["streamed"], "examples": probed["examples"],
                     "test_accuracy": round(probed["test_accuracy"], 3)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"cached linear probe, {args.model} at 224 px, stream_above_mb="
          f"{args.stream_above_mb:g}, eval_batch_size={args.eval_batch_size}\n")
    print("| images | float32 inputs | streamed splits | probe peak RSS | probe wall | "
          "prepare peak RSS | prepare wall | test acc |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['images']:,} | {r['float32_inputs_gb']:.2f} GB | "
              f"{','.join(r['streamed']) or 'none'} | {r['probe_peak_rss_gb']:.2f} GB | "
              f"{r['probe_seconds']:.0f} s | {r['prepare_peak_rss_gb']:.2f} GB | "
              f"{r['prepare_seconds']:.0f} s | {r['test_accuracy']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
