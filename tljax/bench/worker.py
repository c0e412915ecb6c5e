"""One ``tljax bench`` child process: builds ONE (model, strategy, method), compiles it,
then runs one step each time the parent asks.

Protocol, one JSON object per line (``runner`` speaks the other side):

- child -> ``{"event": "hello", "base_mem_mb"}`` once its imports are done;
- parent -> the spec (``model``, ``strategy``, ``method``, ``batch``, ``image_size``,
  ``optimizer``; for ``torch`` also ``rules``, ``frozen_bn``, ``input_shape``, ``kind``);
- child -> ``{"event": "ready", "compile_s", "flops", "xla_flops", "trainable_params",
  ...}`` (``flops``: ``bench.flops.count``'s, the same on every backend; torch's is None);
- parent -> ``step``; child -> ``{"seconds", "loss"}`` (repeated);
- parent -> ``done``; child -> ``{"peak_mem_mb", "mem_source"}`` and exits.

A failure is a traceback on stderr, then the error in one line, and a non-zero exit; the
parent reports that last line.
The protocol uses a copy of the original stdout; fd 1 is pointed at stderr, so nothing a
library prints can corrupt it.

    python -m tljax.bench.worker   # started by tljax.bench.runner, not by hand
"""

import json
import os
import resource
import sys
import time

from tljax.bench import TORCH_METHODS


def _rss_mb(field: str = "VmRSS") -> float | None:
    """Returns this process's ``field`` of /proc/self/status in MB (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Resets the peak RSS (VmHWM) to the current RSS; returns whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Jax:
    """A tljax / mask_only / mask_clip step, compiled, on one fixed batch."""

    def __init__(self, spec: dict):
        import jax

        from tljax import strategies
        from tljax.bench import flops, methods

        # Cold compile every time: the compile seconds are what a first run pays.
        jax.config.update("jax_enable_compilation_cache", False)
        self.jax = jax
        model = methods.make_model(spec["model"], spec["image_size"])
        variables = methods.random_variables(model)
        step, state, rules = methods.build(model, spec["strategy"], spec["method"], variables,
                                           spec.get("dtype", "float32"), **spec["optimizer"])
        inputs, labels = methods.make_batch(model, spec["batch"])
        self.inputs, self.labels = jax.device_put(inputs), jax.device_put(labels)
        start = time.perf_counter()
        self.step, xla_flops = methods.compile_step(step, state, self.inputs, self.labels,
                                                    spec.get("matmul_precision", "highest"))
        compile_s = time.perf_counter() - start
        self.info = {"compile_s": compile_s, "xla_flops": xla_flops,
                     "flops": flops.count(step, state, self.inputs, self.labels),
                     "trainable_params": strategies.count(variables["params"], rules)[0],
                     "total_params": strategies.count(variables["params"], rules)[1],
                     "backend": jax.default_backend(), "device": str(jax.devices()[0]),
                     "xla_flags": os.environ.get("XLA_FLAGS", "")}
        self.state = state

    def run(self) -> tuple:
        start = time.perf_counter()
        self.state, metrics = self.step(self.state, self.inputs, self.labels)
        self.jax.block_until_ready(self.state)
        seconds = time.perf_counter() - start
        return seconds, float(metrics["loss"])

    def peak(self) -> tuple | None:
        stats = self.jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2 ** 20, "device peak_bytes_in_use"
        return None


class _Torch:
    """The PyTorch reference's step (``torch_ref``) on the same batch."""

    def __init__(self, spec: dict):
        import torch

        from tljax.bench import random_batch, torch_ref

        torch.manual_seed(0)  # the same initial weights in every child and every run
        inputs, labels = random_batch(tuple(spec["input_shape"]), spec["kind"],
                                      spec["num_classes"])
        # The GPU where there is one, as a GPU user's torch runs; else the CPU.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        compiled = spec["method"] == "torch_compile"
        if compiled and not hasattr(torch, "compile"):
            raise RuntimeError(f"torch {torch.__version__} has no torch.compile")
        start = time.perf_counter()
        self.step, module = torch_ref.build(spec["model"], spec["rules"], spec["frozen_bn"],
                                            inputs, labels, spec["optimizer"],
                                            spec["num_classes"], device=self.device,
                                            dtype=spec.get("dtype", "float32"),
                                            compile=compiled,
                                            precision=spec.get("matmul_precision", "highest"))
        build_s = time.perf_counter() - start
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.info = {"compile_s": build_s if compiled else 0.0, "flops": None,
                     "xla_flops": None,
                     "backend": f"torch {'compile' if compiled else 'eager'} {self.device}",
                     "trainable_params": sum(p.numel() for p in module.parameters()
                                             if p.requires_grad),
                     "total_params": sum(p.numel() for p in module.parameters()),
                     "torch_threads": torch.get_num_threads()}

    def run(self) -> tuple:
        start = time.perf_counter()
        loss = self.step()
        return time.perf_counter() - start, loss

    def peak(self) -> tuple | None:
        if self.device == "cuda":
            return (self.torch.cuda.max_memory_allocated() / 2 ** 20,
                    "torch.cuda.max_memory_allocated")
        return None


def main() -> int:
    """Runs the child's side of the protocol; returns the exit code."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(obj):
        proto.write(json.dumps(obj) + "\n")

    method = sys.argv[1] if len(sys.argv) > 1 else ""
    if method == "torch_compile":  # a cold compile, as the JAX children's
        os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
    if method in TORCH_METHODS:
        import torch  # noqa: F401  (imported before the baseline is read)
    else:
        import jax  # noqa: F401

        from tljax.bench import methods  # noqa: F401
    send({"event": "hello", "base_mem_mb": _rss_mb()})
    spec = json.loads(sys.stdin.readline())
    runner = _Torch(spec) if spec["method"] in TORCH_METHODS else _Jax(spec)
    # The peak counts from here: steps, not compilation (whose scratch memory is gone).
    can_reset = _reset_peak()
    send({"event": "ready", **runner.info})
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            seconds, loss = runner.run()
            send({"seconds": seconds, "loss": loss})
        elif command == "done":
            peak = runner.peak()
            if peak is None and can_reset and _rss_mb("VmHWM") is not None:
                peak = _rss_mb("VmHWM"), "peak RSS during steps (VmHWM)"
            elif peak is None:  # ru_maxrss is in KB on Linux, bytes on macOS
                scale = 2 ** 20 if sys.platform == "darwin" else 2 ** 10
                peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale,
                        "peak RSS of the process (ru_maxrss)")
            send({"peak_mem_mb": peak[0], "mem_source": peak[1]})
            return 0
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        # The traceback, then one line naming the error last: the parent reports the last
        # stderr line, which JAX's traceback filtering would otherwise make a note of its own.
        import traceback

        traceback.print_exc()
        print(f"{type(e).__name__}: {e}".splitlines()[0], file=sys.stderr, flush=True)
        sys.exit(1)
