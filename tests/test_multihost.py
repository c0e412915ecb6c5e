"""Multi-process runs on one machine: 2 processes x 2 CPU devices started with ``tljax
launch`` give the results of one process with 4 devices, write each record once, resume
after every process is SIGKILLed, and refuse pmap in one line.

Every subprocess has a timeout, so a hang (a process waiting for a peer in a collective)
fails the test instead of blocking the suite.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tljax import data, launch, parallel
from tljax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELF = os.path.join(ROOT, "experiments", "lp_vs_ft_self_pretrained.py")
# Random-init source (no pretraining), a few steps, a batch that splits over 4 devices;
# the grid runs full_ft replicated and FSDP-split in the same command. The probe is the
# closed-form ridge solver: L-BFGS stops within its tolerance, and where it stops moves
# with last-bit differences between compiled programs (seen between two one-process runs
# with and without the compilation cache), which would hide what this file tests; and
# SGD, which learns in 12 steps without Adam's amplification of reordered sums.
SETTINGS = ["seeds=[0]", 'strategies=["linear_probe","full_ft"]', 'pretrain.dataset=""',
            "steps=12", "batch_size=16", 'optimizer="sgd"', "lr=0.05", "log_every=2",
            "eval_batch_size=128", 'probe_solver="ridge"',
            'sweep={"fsdp_regex":["","kernel"]}']
# The same full_ft grid point alone; the killed run checkpoints every 2 steps (not part of
# a run's identity), its restart only at the end.
KILLED = ['strategies=["full_ft"]', 'sweep={}', 'fsdp_regex="kernel"']
TIMEOUT_S = 300


def _start(argv, log, env=None):
    """Starts ``python -m tljax.cli ARGV`` writing to the file ``log``, in a session of its
    own (so the test can kill every process of it at once)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tljax.cli", *argv], stdout=out,
                                stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
    proc.log = log
    return proc


def _launch(workdir, extra=(), devices=2):
    """Starts ``tljax launch`` of 2 processes x ``devices`` CPU devices on a free port."""
    return _start(["launch", "--processes", "2", "--devices-per-process", str(devices),
                   "--port", str(launch.free_port()), "--", "run", SELF, "--workdir",
                   str(workdir), "--set", *SETTINGS, *extra], f"{workdir}.log")


def _single(workdir):
    """Starts one process with 4 forced CPU devices: the reference."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    return _start(["run", SELF, "--workdir", str(workdir), "--set", *SETTINGS],
                  f"{workdir}.log", env)


def _finish(proc, timeout=TIMEOUT_S) -> tuple:
    """Returns ``(returncode, output)``; kills every process of it on a timeout."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"timed out after {timeout}s:\n{open(proc.log).read()[-3000:]}")
    return proc.returncode, open(proc.log).read()


def _kill_after_first_checkpoint(proc, workdir) -> list:
    """SIGKILLs the launcher and its processes once a train-state checkpoint exists (or
    the run ended); returns the checkpointed steps seen."""
    deadline = time.time() + TIMEOUT_S
    steps = []
    while not steps and time.time() < deadline and proc.poll() is None:
        steps = [int(d) for _, ds, _ in os.walk(workdir / "state") for d in ds if d.isdigit()]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both processes: one session
    proc.wait()
    return steps


def _records(workdir) -> list:
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def _variables(record) -> dict:
    """Returns the checkpoint of record of ``record`` as ``{"params": [...], "batch_stats":
    [...]}`` (numpy leaves in tree order)."""
    restored = ocp.StandardCheckpointer().restore(record["checkpoint"])
    return {k: [np.asarray(x) for x in jax.tree.leaves(v)] for k, v in restored.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Returns ``{"one": (workdir, output), "two": ..., "killed": (workdir, steps)}``: the
    same config run by one process with 4 devices and by 2 processes x 2 devices, side by
    side with a two-process run of its FSDP full_ft point SIGKILLed after its first
    checkpoint (resumed by the test that needs it)."""
    data.load("digits:5-9")  # prepared once here: the runs would race to write it
    root = tmp_path_factory.mktemp("multihost")
    started = time.perf_counter()
    procs = {"one": _single(root / "one"), "two": _launch(root / "two")}
    killed = _launch(root / "killed", KILLED + ["checkpoint_every=2"])
    out = {"killed": (root / "killed", _kill_after_first_checkpoint(killed, root / "killed"))}
    for name, proc in procs.items():
        code, text = _finish(proc)
        assert code == 0, f"{name}:\n{text[-3000:]}"
        out[name] = (root / name, text)
        print(f"\n{name}: done after {time.perf_counter() - started:.1f}s (started together)")
    return out


def test_two_processes_match_one_process_with_as_many_devices(runs):
    one = {r["run_hash"]: r for r in _records(runs["one"][0])}
    two = _records(runs["two"][0])
    # One writer: each of the three grid points is recorded once, not once per process.
    assert len(two) == 3 and len({r["run_hash"] for r in two}) == 3
    assert set(one) == {r["run_hash"] for r in two}
    assert sorted((r["strategy"], r["hparams"].get("fsdp_regex")) for r in two) == [
        ("full_ft", ""), ("full_ft", "kernel"), ("linear_probe", None)]
    for b in two:
        a = one[b["run_hash"]]
        assert b["status"] == a["status"] == "ok"
        assert (a["devices"], a["processes"], b["devices"], b["processes"]) == (4, 1, 4, 2)
        for split in ("train", "val", "test"):
            np.testing.assert_allclose(b["metrics"][split]["loss"], a["metrics"][split]["loss"],
                                       rtol=1e-5)
        if b["strategy"] == "full_ft":
            assert [h["step"] for h in b["history"]] == list(range(2, 13, 2))
            np.testing.assert_allclose([h["loss"] for h in b["history"]],
                                       [h["loss"] for h in a["history"]], rtol=1e-5)
        va, vb = _variables(a), _variables(b)
        for x, y in zip(va["params"], vb["params"], strict=True):
            np.testing.assert_allclose(y, x, atol=1e-4)
        # Running statistics are sums over the batch, added up in another order across
        # processes: relative agreement for the variances (values up to ~10), and for means
        # near zero the params' absolute tolerance (since the 8 px convs run as patches +
        # matmul, means of ~0.1 differ by up to 4e-5 between the two setups).
        for x, y in zip(va["batch_stats"], vb["batch_stats"], strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4)
    # Sharding really changed between the two full_ft points, and the result did not.
    by_fsdp = {r["hparams"].get("fsdp_regex"): r for r in two}
    np.testing.assert_allclose(by_fsdp["kernel"]["metrics"]["test"]["loss"],
                               by_fsdp[""]["metrics"]["test"]["loss"], rtol=1e-5)
    # Log lines say which process speaks; the report is written once.
    text = runs["two"][1]
    assert "[p0/2] linear_probe seed 0: test accuracy" in text
    assert "[p1/2] linear_probe seed 0: test accuracy" in text
    assert [line for line in text.splitlines() if "## Summary" in line] == ["[p0] ## Summary"]
    assert (runs["two"][0] / "results.md").is_file()


def test_every_process_killed_then_restarted_resumes_to_the_same_result(runs):
    """SIGKILL of the launcher and both processes after a mid-run checkpoint of an
    FSDP-split state; the same command again resumes from it and ends where the
    uninterrupted two-process run ended."""
    workdir, steps = runs["killed"]
    assert steps, "no checkpoint was written"
    assert not (workdir / "results.jsonl").exists()  # it died unfinished

    code, text = _finish(_launch(workdir, KILLED))
    assert code == 0, text[-3000:]
    assert "[p0/2] full_ft seed 0: resuming from the checkpoint at step" in text
    assert "[p1/2] full_ft seed 0: resuming from the checkpoint at step" in text
    (resumed,) = _records(workdir)
    (reference,) = [r for r in _records(runs["two"][0])
                    if r["hparams"].get("fsdp_regex") == "kernel"]
    assert resumed["run_hash"] == reference["run_hash"]
    assert 2 <= resumed["resumed_from_step"] < 12
    assert resumed["metrics"] == reference["metrics"]
    for part, leaves in _variables(reference).items():
        for x, y in zip(leaves, _variables(resumed)[part], strict=True):
            np.testing.assert_array_equal(y, x)


def test_pmap_is_refused_in_one_line_per_process_when_there_are_several(tmp_path):
    code, text = _finish(_launch(tmp_path / "pmap", ['parallel="pmap"'], devices=1), 120)
    assert code == 2, text[-3000:]
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert sorted(errors) == [
        f"[p{i}] tljax: error: parallel='pmap' runs in one process only; this run has 2 "
        "processes: use parallel='mesh' (the default)" for i in range(2)]
    assert "Traceback" not in text
    assert not (tmp_path / "pmap" / "results.jsonl").exists()


def test_distributed_passes_the_environment_to_jax_or_lets_it_detect_the_cluster(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    parallel.initialize_multihost({"JAX_COORDINATOR_ADDRESS": "host0:1234",
                                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
    parallel.initialize_multihost({})  # SLURM, Cloud TPU...: JAX reads the cluster itself
    assert calls == [(("host0:1234",), {"num_processes": 2, "process_id": 1}), ((), {})]
    with pytest.raises(UserError, match="JAX_COORDINATOR_ADDRESS not set"):
        parallel.initialize_multihost({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
    with pytest.raises(UserError, match="JAX_PROCESS_ID 2 is not in 0..1"):
        parallel.initialize_multihost({"JAX_COORDINATOR_ADDRESS": "h:1",
                                       "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})
    assert len(calls) == 2
