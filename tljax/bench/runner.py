"""The parent of ``tljax bench``: one child process per (model, strategy, method),
compiled one at a time, then stepped in interleaved rounds.

For each model, every child is started at once (their imports overlap) and each builds
and compiles its step in turn while the others wait, so compile seconds are not shared.
Then each round asks every child for ONE step, one after another: while one steps the
others are idle, and drift of the machine (other processes, heat) falls on all methods
alike. A step's time is the median over the rounds after warm-up. A child that fails
becomes a failed row with its last stderr line; the others go on.
"""

import importlib.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading

import numpy as np

from tljax.bench import TORCH_METHODS, torch_ref

TIMEOUT_S = 1800  # one compile or step; a child past it is stopped and reported


class Child:
    """One worker process and the lines it has sent."""

    def __init__(self, key: tuple, spec: dict, env: dict):
        self.key, self.spec = key, spec
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tljax.bench.worker", spec["method"]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
            text=True, bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info, self.times, self.losses, self.error = {}, [], [], None

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of output: the child exited

    def ask(self, message: str | None = None) -> dict | None:
        """Sends ``message`` (if any) and returns the child's reply; on failure records
        ``error`` (the child's last stderr line) and returns None."""
        if self.error:
            return None
        try:
            if message is not None:
                self.proc.stdin.write(message + "\n")
                self.proc.stdin.flush()
            line = self.lines.get(timeout=TIMEOUT_S)
        except (BrokenPipeError, OSError):
            line = None
        except queue.Empty:
            self.proc.kill()
            self.error = f"no reply in {TIMEOUT_S} s"
            return None
        if line is None:
            self.proc.wait()
            self.error = self._last_stderr() or f"exited with code {self.proc.returncode}"
            return None
        return json.loads(line)

    def _last_stderr(self) -> str:
        self.stderr.seek(0)
        lines = [ln.strip() for ln in self.stderr.read().decode(errors="replace").splitlines()]
        return next((ln for ln in reversed(lines) if ln), "")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def _torch_spec(model, strategy: str) -> dict:
    """Returns what a torch child needs of ``strategy`` on ``model``, computed here so that
    it never imports JAX: each param's LR multiplier (None: frozen) and the BatchNorms in
    frozen blocks, by tljax path."""
    import jax
    from flax import traverse_util

    from tljax import strategies
    from tljax.bench import methods

    shapes = jax.eval_shape(model.init, jax.random.key(0))
    rules, _ = methods.strategy_rules(model, strategy, shapes["params"])
    flat = traverse_util.flatten_dict(rules, sep="/")
    stats = strategies.batch_stats_rules(rules, shapes.get("batch_stats", {}), model.blocks)
    frozen_bn = {p.rpartition("/")[0]
                 for p, r in traverse_util.flatten_dict(stats, sep="/").items()
                 if not r.trainable}
    return {"rules": {p: (r.lr_mult if r.trainable else None) for p, r in flat.items()},
            "frozen_bn": sorted(frozen_bn)}


def plan(model_names, strategy_names, method_names, batch: int, image_size: int,
         optimizer: dict, dtype: str = "float32", precision: str = "highest") -> list:
    """Returns one ``(key, spec or skip reason)`` per (model, strategy, method), models in
    order. Every name and size is checked here, before any child starts: raises
    ``UserError`` for a model that cannot take ``image_size`` or a bad strategy argument."""
    import jax

    from tljax.bench import methods

    has_torch = importlib.util.find_spec("torch") is not None
    out = []
    for name in model_names:
        model = methods.make_model(name, image_size)
        shapes = jax.eval_shape(model.init, jax.random.key(0))
        text = model.preprocessing.kind == "text"
        size = None if text else model.preprocessing.image_size
        for strategy in strategy_names:
            methods.strategy_rules(model, strategy, shapes["params"])  # UserError if bad
            for method in method_names:
                key = (name, strategy, method)
                spec = {"model": name, "strategy": strategy, "method": method,
                        "batch": batch, "image_size": size, "optimizer": optimizer,
                        "dtype": dtype, "matmul_precision": precision}
                if method in TORCH_METHODS and not has_torch:
                    spec = "torch is not installed (pip install torch)"
                elif method in TORCH_METHODS and not torch_ref.has_reference(name):
                    spec = (f"no PyTorch reference for {name} in tljax.bench.torch_ref "
                            f"(references: {', '.join(torch_ref.REFERENCES)})")
                elif method in TORCH_METHODS:
                    spec.update(_torch_spec(model, strategy), num_classes=methods.NUM_CLASSES,
                                input_shape=list(model.dummy_input(batch).shape),
                                kind=model.preprocessing.kind)
                out.append((key, spec))
    return out


def _row(key, spec, child=None, reason: str = "") -> dict:
    model, strategy, method = key
    row = {"model": model, "strategy": strategy, "method": method,
           "batch": spec["batch"] if isinstance(spec, dict) else None,
           "image_size": spec["image_size"] if isinstance(spec, dict) else None,
           "dtype": spec.get("dtype", "float32") if isinstance(spec, dict) else None,
           "matmul_precision": spec.get("matmul_precision") if isinstance(spec, dict) else None,
           "status": "skipped" if not isinstance(spec, dict) else "ok",
           "reason": spec if not isinstance(spec, dict) else reason,
           "step_ms": None, "step_ms_min": None, "examples_per_s": None, "compile_s": None,
           "peak_mem_mb": None, "base_mem_mb": None, "mem_source": None,
           "trainable_params": None, "total_params": None, "flops": None, "xla_flops": None,
           "tflops": None, "peak_fraction": None,
           "steps_timed": 0, "final_loss": None, "backend": None}
    if child is None:
        return row
    info = child.info
    row.update({k: info.get(k) for k in ("compile_s", "flops", "xla_flops", "trainable_params",
                                         "total_params", "peak_mem_mb", "base_mem_mb",
                                         "mem_source", "backend")})
    if child.error:
        row.update(status="failed", reason=child.error)
    if child.times:
        ms = 1e3 * np.asarray(child.times)
        row.update(step_ms=float(np.median(ms)), step_ms_min=float(ms.min()),
                   steps_timed=len(ms), final_loss=child.losses[-1],
                   examples_per_s=spec["batch"] / float(np.median(ms)) * 1e3)
    return row


def run_model(entries: list, rounds: int, warmup: int, env: dict, log,
              env_of: dict | None = None) -> tuple:
    """Runs the children of one model's ``entries`` (from ``plan``); returns ``(rows,
    infos)``: a row per entry, in order, and the ``ready`` messages of those that built.
    ``env_of`` maps an entry's key to environment variables of its child only, on top of
    ``env`` (``benchmarks/cpu_config.py`` compares configurations that way)."""
    env_of = env_of or {}
    children = [Child(key, spec, {**(os.environ if env is None else env), **env_of[key]}
                      if key in env_of else env)
                for key, spec in entries if isinstance(spec, dict)]
    try:
        for c in children:  # every import done before the first compile starts
            hello = c.ask()
            if hello:
                c.info["base_mem_mb"] = hello.get("base_mem_mb")
        for c in children:
            ready = c.ask(json.dumps(c.spec)) if not c.error else None
            if ready:
                c.info.update(ready)
                log(f"built {' '.join(c.key)}: compile {ready['compile_s']:.1f} s")
            else:
                log(f"FAILED {' '.join(c.key)}: {c.error}")
        for r in range(warmup + rounds):
            for c in children:
                reply = c.ask("step")
                if reply and r >= warmup:
                    c.times.append(reply["seconds"])
                if reply:
                    c.losses.append(reply["loss"])
            log(f"round {r + 1}/{warmup + rounds}" + (" (warm-up)" if r < warmup else ""))
        for c in children:
            done = c.ask("done")
            if done:
                c.info.update(done)
    finally:
        for c in children:
            c.close()
    by_key = {c.key: c for c in children}
    rows = [_row(key, spec, by_key.get(key)) for key, spec in entries]
    return rows, [c.info for c in children if not c.error]


def add_throughput(rows: list, peak_tflops: float | None = None) -> None:
    """Fills each ok row's ``tflops`` (its ``flops`` over its median step) and
    ``peak_fraction`` (of ``peak_tflops``, if given). A torch row takes the ``flops`` of
    the tljax row of its model, strategy and dtype: the same network and frozen set, whose
    frozen backward neither computes (torch_compile's likewise)."""
    counted = {(r["model"], r["strategy"], r["dtype"]): r["flops"] for r in rows
               if r["method"] == "tljax" and r["flops"]}
    for r in rows:
        if r["method"] in TORCH_METHODS and r["status"] == "ok" and r["flops"] is None:
            r["flops"] = counted.get((r["model"], r["strategy"], r["dtype"]))
        if r["status"] == "ok" and r["flops"] and r["step_ms"]:
            r["tflops"] = r["flops"] / (r["step_ms"] * 1e-3) / 1e12
            if peak_tflops:
                r["peak_fraction"] = r["tflops"] / peak_tflops


def run(model_names, strategy_names, method_names, batch: int, image_size: int,
        rounds: int, warmup: int, optimizer: dict, xla_flags: str | None = None,
        log=print, dtype: str = "float32", peak_tflops: float | None = None,
        precision: str = "highest") -> tuple:
    """Returns ``(rows, infos)`` of the whole benchmark, one model after another, each ok
    row with its TFLOP/s (``add_throughput``).

    ``xla_flags`` (if not None) is every child's ``XLA_FLAGS``, set before it imports JAX.
    """
    entries = plan(model_names, strategy_names, method_names, batch, image_size, optimizer,
                   dtype, precision)
    env = dict(os.environ)
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    rows, infos = [], []
    for name in model_names:
        mine = [(k, s) for k, s in entries if k[0] == name]
        r, i = run_model(mine, rounds, warmup, env, log)
        rows += r
        infos += i
    add_throughput(rows, peak_tflops)
    return rows, infos
