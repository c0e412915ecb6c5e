"""``tljax bench``: options -> the benchmark -> table on stdout, JSON and plot files."""

import os
import sys
import time

from tljax.bench import (
    DEFAULT_MODELS,
    DTYPES,
    METHODS,
    PRECISIONS,
    OPTIMIZER,
    STRATEGIES,
    check_names,
    optimizer_text,
)
from tljax.errors import UserError

# Every method but torch_compile, whose cold compile takes tens of seconds per row on 2 CPU
# cores (24-41 s for ResNet-18 at 64 px): name it to have it.
DEFAULT_METHODS = [m for m in METHODS if m != "torch_compile"]
# --quick: ResNet-18 at 64 px, batch 32, probe and full fine-tuning, the default methods;
# under 4 minutes on 2 CPU cores.
QUICK = {"models": ["resnet18"], "strategies": ["linear_probe", "full_ft"],
         "methods": DEFAULT_METHODS, "batch": 32, "image_size": 64, "rounds": 10, "warmup": 1,
         "dtype": "float32", "matmul_precision": "highest"}
DEFAULTS = {"models": list(DEFAULT_MODELS), "strategies": list(STRATEGIES),
            "methods": DEFAULT_METHODS, "batch": 32, "image_size": 64, "rounds": 10, "warmup": 2,
            "dtype": "float32", "matmul_precision": "highest"}


def add_arguments(parser) -> None:
    """Adds ``tljax bench``'s options to ``parser``."""
    d = DEFAULTS
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help=f"models (default: {' '.join(d['models'])}; any of `tljax list`)")
    parser.add_argument("--strategies", nargs="+", metavar="STRATEGY",
                        help=f"strategy specs (default: {' '.join(d['strategies'])}); "
                             "linear_probe trains the head through the frozen network")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help=f"of {', '.join(METHODS)} (default: all but torch_compile)")
    parser.add_argument("--batch", type=int, help=f"batch size (default: {d['batch']})")
    parser.add_argument("--image-size", type=int,
                        help=f"image size in px for image models (default: {d['image_size']})")
    parser.add_argument("--rounds", type=int,
                        help=f"timed interleaved rounds (default: {d['rounds']})")
    parser.add_argument("--warmup", type=int,
                        help=f"untimed rounds first (default: {d['warmup']})")
    parser.add_argument("--dtype", metavar="DTYPE",
                        help=f"compute type of every method, of {', '.join(DTYPES)} (default: "
                             "float32); bfloat16 keeps params and optimizer state float32 "
                             "(tljax's compute_dtype, torch's autocast)")
    parser.add_argument("--matmul-precision", metavar="PRECISION",
                        help=f"float32 matmul/conv precision of every method, of "
                             f"{', '.join(PRECISIONS)} (default: highest, a run's default: "
                             "true float32; tf32: TensorFloat-32 on both sides; default: each "
                             "library's own)")
    parser.add_argument("--peak-tflops", type=float, metavar="TFLOPS",
                        help="the device's stated peak in TFLOP/s (say, 989 for an H100/H200 "
                             "SXM in dense bfloat16): each row's TFLOP/s is also given as a "
                             "fraction of it")
    parser.add_argument("--json", metavar="OUT", help="write rows and machine as JSON here")
    parser.add_argument("--plot", metavar="PNG", help="write a plot of step time and memory")
    parser.add_argument("--quick", action="store_true",
                        help="resnet18, 64 px, batch 32, linear_probe and full_ft, the "
                             "default methods, 10 rounds (about 1 min on 2 quiet cores, "
                             "< 4 min loaded); other options override")
    parser.add_argument("--xla-flags", metavar="STR",
                        help="XLA_FLAGS of every JAX child, set before it imports JAX "
                             "(default: inherited); compare configurations with it. Write "
                             "it with '=': --xla-flags='--xla_cpu_...=VALUE'")


def options(args) -> dict:
    """Returns the settings of ``args``: given options, else --quick's, else the defaults.
    Raises ``UserError`` for an unknown name or a non-positive size or count."""
    base = QUICK if args.quick else DEFAULTS
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    check_names(opts["models"], opts["strategies"], opts["methods"], opts["dtype"],
                opts["matmul_precision"])
    for key, lo in (("batch", 1), ("image_size", 1), ("rounds", 1), ("warmup", 0)):
        if opts[key] < lo:
            raise UserError(f"--{key.replace('_', '-')} {opts[key]} is out of range; "
                            f"valid: >= {lo}")
    peak = getattr(args, "peak_tflops", None)
    if peak is not None and not 0 < peak < float("inf"):
        raise UserError(f"--peak-tflops {peak} is out of range; valid: a number > 0")
    opts["peak_tflops"] = peak
    return opts


def main(args) -> int:
    """Runs ``tljax bench``; returns the exit code (1 if any row failed)."""
    from tljax.bench import output, runner

    opts = options(args)
    for path in (args.json, args.plot):  # fail before minutes of benchmarking, not after
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if path and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            raise UserError(f"cannot write {path!r}: no writable folder {folder!r}")
    start = time.perf_counter()

    def log(msg):
        print(f"bench [{time.perf_counter() - start:5.0f} s]: {msg}", file=sys.stderr,
              flush=True)

    log(f"{', '.join(opts['models'])}: {len(opts['strategies'])} strategies x "
        f"{len(opts['methods'])} methods, batch {opts['batch']}, {opts['image_size']} px, "
        f"{opts['dtype']}, matmul precision {opts['matmul_precision']}")
    rows, infos = runner.run(opts["models"], opts["strategies"], opts["methods"], opts["batch"],
                             opts["image_size"], opts["rounds"], opts["warmup"], OPTIMIZER,
                             args.xla_flags, log, opts["dtype"], opts["peak_tflops"],
                             opts["matmul_precision"])
    info = output.machine(infos, {"batch": opts["batch"], "image_size": opts["image_size"],
                                  "dtype": opts["dtype"], "peak_tflops": opts["peak_tflops"],
                                  "matmul_precision": opts["matmul_precision"],
                                  "rounds": opts["rounds"], "warmup": opts["warmup"],
                                  "optimizer": optimizer_text()})
    print(output.markdown(rows, info))
    if args.json:
        output.write_json(args.json, rows, info)
    if args.plot:
        output.plot(args.plot, rows, info)
    return 1 if any(r["status"] == "failed" for r in rows) else 0
