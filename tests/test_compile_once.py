"""A sweep compiles each distinct train step once per process, and a step shared between
runs gives each run the result it gets alone, bit for bit."""

import json
import logging
import os

import jax
import numpy as np

from tljax import checkpoint, cli, compiled
from tljax.run.records import host_cpu

CONFIG = '''
from tljax.config import transfer

def get_config():
    c = transfer(experiment="{name}", model="cnn", dataset="digits:5-9")
    c.strategies = {strategies}
    c.seeds = {seeds}
    c.steps = 4
    c.batch_size = 32
    c.log_every = 2
    c.sweep = {{"lr": {lrs}}}
    return c
'''


def _config(tmp_path, name, strategies, seeds, lrs):
    path = tmp_path / f"{name}.py"
    path.write_text(CONFIG.format(name=name, strategies=strategies, seeds=seeds, lrs=lrs))
    return str(path)


def _compiles(caplog, name: str) -> int:
    """Returns how many times JAX logged compiling the jitted function ``name``."""
    return sum(f"Compiling {name} " in r.getMessage() or f"Compiling jit({name})"
               in r.getMessage() for r in caplog.records)


def _records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "results.jsonl"))]


def test_a_sweep_compiles_its_step_once_per_strategy_and_shares_it_exactly(tmp_path, caplog):
    compiled.clear()
    jax.clear_caches()
    cfg = _config(tmp_path, "compile_once", ["last_k:1", "full_ft"], [0, 1],
                  [1e-3, 1e-2, 1e-1])
    caplog.set_level(logging.WARNING)
    with jax.log_compiles(True):
        assert cli.main(["run", cfg, "--workdir", str(tmp_path / "w")]) == 0
    records = _records(tmp_path / "w")
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    # Each record names the CPU it ran on: XLA:CPU's kernels, and so the last bits of a
    # result, depend on it.
    assert {r["cpu"] for r in records} == {host_cpu()} and "(" in host_cpu()
    # 2 strategies x 3 learning rates x 2 seeds: one step per strategy, and one loss for
    # both (it reads the model's variables alone), where each run compiled its own before.
    assert _compiles(caplog, "step") == 2
    assert _compiles(caplog, "variables_loss") == 1

    # The last run of the sweep, at a learning rate other than the one its step was first
    # compiled for, again alone in a process that has compiled nothing: the same bits.
    compiled.clear()
    jax.clear_caches()
    alone = _config(tmp_path, "compile_once", ["full_ft"], [1], [1e-1])
    assert cli.main(["run", alone, "--workdir", str(tmp_path / "alone")]) == 0
    [single] = _records(tmp_path / "alone")
    [shared] = [r for r in records if r["run_hash"] == single["run_hash"]]
    assert single["metrics"] == shared["metrics"]
    assert single["history"] == shared["history"]
    a, b = (checkpoint.restore_variables(r["checkpoint"]) for r in (single, shared))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
