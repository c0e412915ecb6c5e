"""One GPU check: what issue 20 asks of tljax on a GPU, measured in one go (about 8 minutes).

Run it from a fresh copy of the repository on a machine with one GPU and the project's
dependencies (``../shared/GPU.md`` says how, offline). Every part runs in its own child
process under its own time limit and is written to the JSON as soon as it ends, so a part
cut off leaves the others' figures:

1. ``machine``: the GPU (``nvidia-smi -L``), JAX's devices and versions.
2. ``tests``: ``tests/test_parity.py``, ``test_freezing.py`` and ``test_train.py`` on the
   GPU, the GPU-only test that cuDNN's flash attention is chosen in bfloat16 and matches
   XLA's, and the input tests (host-side resize, streamed = in-memory batches): passed /
   failed counts and the failed tests' names.
3. ``bench_bfloat16``: ``tljax bench`` for ResNet-50, ViT-B/16 and EfficientNet-Lite0,
   ``linear_probe`` and ``full_ft``, tljax and torch, batch 128 at 224 px, bfloat16;
   ``bench_float32``: ResNet-50 alone in float32 with TF32 matmuls and convs on both sides
   (``--matmul-precision tf32``, as the issue's first GPU run measured; a run's default is
   true float32). Each row has the bench's own TFLOP/s (``tljax.bench.flops``: the step's
   matmul and conv FLOPs from its jaxpr, right on a GPU, where XLA's cost analysis leaves
   out cuDNN) and its fraction of ``--peak-tflops`` (float32 rows against the same
   bfloat16 peak: TF32's dense peak is half of it).
4. ``main_job``: ``tljax run experiments/lp_vs_ft.py`` cold (fresh compilation, feature
   and data caches; new workdir): its wall time.
5. ``pipeline``: ``benchmarks/pipeline.py --skip-step`` at batch 128: the streamed input
   path's images/s at 224 px, to set beside the bench rows' examples/s.

    python benchmarks/gpu_check.py --json gpu_check.json    # on the GPU machine
    python benchmarks/gpu_check.py --smoke                  # here, on CPU: tiny sizes, same code

``--smoke`` runs every part at toy sizes (cnn at 16 px, batch 8, two test files' first
tests, the main job's dry run, 256 images) to check the script before spending GPU time.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense bfloat16 tensor-core peak of an H100 / H200 SXM, TFLOP/s (NVIDIA's datasheet).
H200_PEAK_TFLOPS = 989.0

FULL = {
    "tests": ["tests/test_parity.py", "tests/test_freezing.py", "tests/test_train.py",
              "tests/test_layers.py::test_cudnn_attention_is_chosen_and_matches_xla_on_a_gpu",
              "tests/test_data.py::test_resize_runs_on_the_host_cpu_whatever_the_default_backend",
              "tests/test_streaming.py"],
    "bench_bfloat16": {"models": ["resnet50", "vit_b16", "efficientnet_lite0"],
                       "batch": 128, "image_size": 224, "rounds": 10, "warmup": 2},
    "bench_float32": {"models": ["resnet50"], "batch": 128, "image_size": 224, "rounds": 10,
                      "warmup": 2, "matmul_precision": "tf32"},
    "pipeline": ["--images", "1024", "--batch", "128", "--batches", "5"],
    "timeouts": {"machine": 60, "tests": 150, "bench_bfloat16": 170, "bench_float32": 70,
                 "main_job": 120, "pipeline": 90},
}
SMOKE = {
    "tests": ["tests/test_train.py", "tests/test_freezing.py", "-k", "fit or bitfit"],
    "bench_bfloat16": {"models": ["cnn"], "batch": 8, "image_size": 16, "rounds": 2,
                       "warmup": 1},
    "bench_float32": {"models": ["cnn"], "batch": 8, "image_size": 16, "rounds": 2,
                      "warmup": 1, "matmul_precision": "tf32"},
    "pipeline": ["--images", "256", "--batch", "32", "--batches", "3"],
    "timeouts": {"machine": 60, "tests": 300, "bench_bfloat16": 300, "bench_float32": 300,
                 "main_job": 120, "pipeline": 300},
}


def run_part(cmd: list, timeout: int, env: dict | None = None) -> dict:
    """Returns ``{"rc", "seconds", "out"}`` of ``cmd`` run under ``timeout`` seconds (rc 124
    when cut off; ``out`` the last 4,000 characters of stdout and stderr)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = 124
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                      for x in (e.stdout, e.stderr))
    return {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "out": out[-4000:]}


def machine() -> dict:
    """Returns the GPU's name (``nvidia-smi -L``), JAX's devices and versions."""
    smi = run_part(["nvidia-smi", "-L"], 20) if _has("nvidia-smi") else {"out": "no nvidia-smi"}
    code = ("import jax, jaxlib, flax, json; print(json.dumps({'jax': jax.__version__, "
            "'jaxlib': jaxlib.__version__, 'flax': flax.__version__, 'backend': "
            "jax.default_backend(), 'devices': [str(d) for d in jax.devices()]}))")
    info = run_part([sys.executable, "-c", code], 60)
    try:
        versions = json.loads(info["out"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        versions = {"error": info["out"][-500:]}
    return {"gpu": smi["out"].strip(), "cpu_cores": os.cpu_count(), **versions}


def _has(program: str) -> bool:
    return any(os.access(os.path.join(d, program), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep))


def tests(args: list, timeout: int) -> dict:
    """Runs pytest on ``args``; returns its counts and the failed tests."""
    part = run_part([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
                     *args], timeout)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)",
                                               part["out"])}
    failed = re.findall(r"^FAILED (\S+)", part["out"], re.M)
    return {"rc": part["rc"], "seconds": part["seconds"], **counts, "failed_tests": failed,
            "tail": part["out"][-1500:]}


def bench(settings: dict, dtype: str, timeout: int, workdir: str, peak: float) -> dict:
    """Runs ``tljax bench`` (tljax and torch, linear_probe and full_ft); returns its rows,
    with TFLOP/s and the fraction of ``peak``."""
    out = os.path.join(workdir, f"bench_{dtype}.json")
    cmd = [sys.executable, "-m", "tljax.cli", "bench", "--models", *settings["models"],
           "--strategies", "linear_probe", "full_ft", "--methods", "tljax", "torch",
           "--batch", str(settings["batch"]), "--image-size", str(settings["image_size"]),
           "--rounds", str(settings["rounds"]), "--warmup", str(settings["warmup"]),
           "--dtype", dtype, "--matmul-precision", settings.get("matmul_precision", "highest"),
           "--peak-tflops", str(peak), "--json", out]
    part = run_part(cmd, timeout, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    rows = []
    if os.path.exists(out):
        with open(out) as f:
            rows = json.load(f)["rows"]
    return {"rc": part["rc"], "seconds": part["seconds"], "rows": rows,
            "tail": "" if part["rc"] == 0 else part["out"][-1500:]}


def main_job(timeout: int, workdir: str, smoke: bool) -> dict:
    """Runs the README's main job cold; returns its wall time and exit code."""
    fresh = tempfile.mkdtemp(dir=workdir, prefix="main_")
    env = {k: os.path.join(fresh, k.lower()) for k in
           ("TLJAX_COMPILATION_CACHE", "TLJAX_FEATURE_CACHE", "TLJAX_DATA_DIR")}
    cmd = [sys.executable, "-m", "tljax.cli", "run", "experiments/lp_vs_ft.py", "--workdir",
           os.path.join(fresh, "run")] + (["--dry-run"] if smoke else [])
    part = run_part(cmd, timeout, env)
    return {"rc": part["rc"], "seconds": part["seconds"], "dry_run": smoke,
            "tail": part["out"][-1500:]}


def pipeline(args: list, timeout: int, workdir: str) -> dict:
    """Runs ``benchmarks/pipeline.py --skip-step``; returns its figures."""
    out = os.path.join(workdir, "pipeline.json")
    part = run_part([sys.executable, "benchmarks/pipeline.py", "--skip-step", *args,
                     "--workdir", os.path.join(workdir, "pipeline"), "--json", out], timeout)
    result = {"rc": part["rc"], "seconds": part["seconds"]}
    if os.path.exists(out):
        with open(out) as f:
            figures = json.load(f)
        result.update(streamed=figures["streamed"], stages=figures["stages_one_thread"],
                      machine=figures["machine"])
    else:
        result["tail"] = part["out"][-1500:]
    return result


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    """Returns the Markdown summary of ``result``."""
    m = result["parts"].get("machine", {})
    lines = [f"{m.get('gpu') or m.get('devices')}; jax {m.get('jax')}, "
             f"{m.get('cpu_cores')} CPU cores; {result['date']}", ""]
    t = result["parts"].get("tests")
    if t:
        lines.append(f"tests (parity, freezing, train): {t.get('passed', 0)} passed, "
                     f"{t.get('failed', 0)} failed, rc {t['rc']}, {t['seconds']} s"
                     + (f"; failed: {', '.join(t['failed_tests'])}" if t["failed_tests"] else ""))
    j = result["parts"].get("main_job")
    if j:
        lines.append(f"main job cold: {j['seconds']} s, rc {j['rc']}"
                     + (" (dry run)" if j["dry_run"] else ""))
    p = result["parts"].get("pipeline")
    if p and p.get("streamed"):
        lines.append("pipeline images/s: " + ", ".join(
            f"{s['view']} {s['images_per_s']:,.0f}" for s in p["streamed"]))
    lines += ["", "| model | strategy | dtype | method | step ms | x torch | examples/s | "
              "TFLOP/s | of peak | compile s | peak MB |", "|---|---|---|---|---|---|---|---|"
              "---|---|---|"]
    for key in ("bench_bfloat16", "bench_float32"):
        rows = result["parts"].get(key, {}).get("rows", [])
        ok = {(r["model"], r["strategy"], r["method"]): r for r in rows if r.get("step_ms")}
        for r in rows:
            dtype = r["dtype"] + (" (tf32)" if r["dtype"] == "float32"
                                  and r.get("matmul_precision") == "tf32" else "")
            if not r.get("step_ms"):
                lines.append(f"| {r['model']} | {r['strategy']} | {dtype} | {r['method']} "
                             f"| {r['status']}: {r['reason']} | | | | | | |")
                continue
            torch = ok.get((r["model"], r["strategy"], "torch"))
            ratio = f"{r['step_ms'] / torch['step_ms']:.2f}" if torch else "-"
            lines.append(
                f"| {r['model']} | {r['strategy']} | {dtype} | {r['method']} | "
                f"{r['step_ms']:.1f} | {ratio} | {r['examples_per_s']:,.0f} | "
                f"{_fmt(r.get('tflops'), '.1f')} | {_fmt(r.get('peak_fraction'), '.1%')} | "
                f"{r['compile_s'] or 0:.1f} | {r['peak_mem_mb'] or 0:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="gpu_check.json", help="results, written as they come")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, to check on CPU")
    parser.add_argument("--parts", nargs="+", default=["machine", "tests", "bench_bfloat16",
                        "bench_float32", "main_job", "pipeline"], help="a subset, in order")
    parser.add_argument("--peak-tflops", type=float, default=H200_PEAK_TFLOPS)
    parser.add_argument("--workdir", default="")
    args = parser.parse_args(argv)
    if not 0 < args.peak_tflops < float("inf"):
        parser.error(f"--peak-tflops {args.peak_tflops} is out of range; valid: a number > 0")
    plan = SMOKE if args.smoke else FULL
    workdir = args.workdir or tempfile.mkdtemp(prefix="tljax-gpu-check-")
    os.makedirs(workdir, exist_ok=True)
    limits = plan["timeouts"]
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "smoke": args.smoke,
              "peak_tflops": args.peak_tflops, "parts": {}}
    start = time.perf_counter()
    for name in args.parts:
        print(f"gpu_check [{time.perf_counter() - start:5.0f} s]: {name}", file=sys.stderr,
              flush=True)
        if name == "machine":
            part = machine()
        elif name == "tests":
            part = tests(plan["tests"], limits["tests"])
        elif name.startswith("bench_"):
            part = bench(plan[name], name.split("_", 1)[1], limits[name], workdir,
                         args.peak_tflops)
        elif name == "main_job":
            part = main_job(limits["main_job"], workdir, args.smoke)
        elif name == "pipeline":
            part = pipeline(plan["pipeline"], limits["pipeline"], workdir)
        else:
            parser.error(f"unknown part {name!r}")
        result["parts"][name] = part
        result["seconds"] = round(time.perf_counter() - start, 1)
        with open(args.json, "w") as f:  # after every part: a cut-off run keeps the rest
            json.dump(result, f, indent=1)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
