"""Multi-process runs on one machine: 2 processes x 2 CPU devices started with ``tljax
launch`` from a data dir nothing has prepared give the results of one process with 4
devices, write each record once, resume after every process is SIGKILLed, and refuse pmap
in one line; a process that fails alone, or is killed, ends the launch within seconds with
one line naming it, and without the launcher its peer stops by itself.

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

from tljax import launch, locks, parallel, peers
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


def _launch(workdir, extra=(), devices=2, env=None, config=SELF):
    """Starts ``tljax launch`` of 2 processes x ``devices`` CPU devices on a free port."""
    return _start(["launch", "--processes", "2", "--devices-per-process", str(devices),
                   "--port", str(launch.free_port()), "--", "run", str(config), "--workdir",
                   str(workdir), "--set", *SETTINGS, *extra], f"{workdir}.log", env)


def _single(workdir, env=None):
    """Starts one process with 4 forced CPU devices: the reference."""
    env = {**(env or os.environ), "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
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
    root = tmp_path_factory.mktemp("multihost")
    # A data dir nothing has prepared: five processes start at once (one alone, two
    # launches of two), and one of them prepares digits while the others wait for it.
    env = {**os.environ, "TLJAX_DATA_DIR": str(root / "data")}
    started = time.perf_counter()
    procs = {"one": _single(root / "one", env), "two": _launch(root / "two", env=env)}
    killed = _launch(root / "killed", KILLED + ["checkpoint_every=2"], env=env)
    out = {"killed": (root / "killed", _kill_after_first_checkpoint(killed, root / "killed"))}
    for name, proc in procs.items():
        code, text = _finish(proc)
        assert code == 0, f"{name}:\n{text[-3000:]}"
        out[name] = (root / name, text)
        print(f"\n{name}: done after {time.perf_counter() - started:.1f}s (started together)")
    out["logs"] = [open(f"{root / name}.log").read() for name in ("one", "two", "killed")]
    return out


def test_one_process_prepares_the_data_the_others_wait_for(runs):
    """Five processes needed digits in a data dir nothing had prepared: one prepared it,
    none crashed on the others' copy (the runs above all finished)."""
    preparing = sum(log.count("tljax: preparing the built-in dataset 'digits'")
                    for log in runs["logs"])
    assert preparing == 1, "\n".join(log[-2000:] for log in runs["logs"])


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


def test_hundreds_of_steps_with_a_frozen_backbone_do_not_deadlock(tmp_path):
    """last_k:1 for 300 steps, 2 processes x 2 CPU devices on a small host: with steps
    queued ahead, XLA's pool threads blocked each other behind gloo's all-reduce and the
    run hung (the README's launch example did, in most tries)."""
    code, text = _finish(_launch(tmp_path / "w", [
        'strategies=["last_k:1"]', "sweep={}", "steps=300", "checkpoint_every=0",
        'optimizer="adam"', "lr=0.001"]), 180)
    assert code == 0, text[-3000:]
    (record,) = _records(tmp_path / "w")
    assert record["status"] == "ok" and record["steps"] == 300


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
    lines = text.splitlines()
    why = ("parallel='pmap' runs in one process only; this run has 2 processes: use "
           "parallel='mesh' (the default)")
    for i in range(2):  # each says it in one line (or, a moment later, that its peer did)
        assert any(line.startswith(f"[p{i}/2] tljax: error:") and why in line
                   for line in lines), text[-3000:]
    (launched,) = [line for line in lines if line.startswith("tljax: launch:")]
    assert f"failed with exit status 2: {why}" in launched
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


def _children(pid: int) -> dict:
    """Returns ``{JAX_PROCESS_ID: pid}`` of the processes ``pid`` started (Linux /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            out[int(env[b"JAX_PROCESS_ID"])] = int(entry)
        except (OSError, ValueError, IndexError, KeyError):
            continue
    return out


@pytest.mark.parametrize("failing", [1, 0])
def test_a_process_failing_alone_ends_the_launch_within_seconds_naming_it(tmp_path, failing):
    """One process cannot read its config; the other would wait for it at the first
    barrier, and the failing one itself in JAX's shutdown for its peer."""
    config = tmp_path / "fails_in_one.py"
    config.write_text(
        "import os\n"
        "from tljax.config import transfer\n\n\n"
        "def get_config():\n"
        f"    if os.environ['JAX_PROCESS_ID'] == '{failing}':\n"
        "        raise OSError('the config share is not mounted here')\n"
        "    return transfer(experiment='alone', dataset='digits:5-9')\n")
    started = time.perf_counter()
    code, text = _finish(_launch(tmp_path / "w", config=config), 120)
    elapsed = time.perf_counter() - started
    assert code == 2, text[-3000:]
    (launched,) = [line for line in text.splitlines() if line.startswith("tljax: launch:")]
    assert launched.startswith(f"tljax: launch: process {failing} of 2 failed with exit status "
                               f"2: config {config}:7: get_config() failed: OSError: the config "
                               "share is not mounted here"), launched
    assert elapsed < 60, f"{elapsed:.0f}s"  # JAX's start included; it took 123 s before
    assert not (tmp_path / "w" / "results.jsonl").exists()


def test_process_0_trains_the_source_model_once_and_the_others_read_it(tmp_path):
    """A sweep over two datasets needs the source twice in every process: trained once,
    by process 0; process 1 waits for it and reads it."""
    code, text = _finish(_launch(tmp_path / "w", [
        'pretrain.dataset="digits:0-4"', "pretrain.steps=5", 'strategies=["linear_probe"]',
        'sweep={"dataset":["digits:5-9","digits:5-9@contrast:1"]}']), TIMEOUT_S)
    assert code == 0, text[-3000:]
    assert text.count("source model: cnn trained on digits:0-4 for 5 steps") == 1
    assert "[p0/2] source model: cnn trained on" in text
    assert "[p1/2] source model: reusing" in text and "(trained by process 0)" in text
    assert len(_records(tmp_path / "w")) == 2


def test_processes_that_plan_different_runs_stop_in_one_line(tmp_path):
    """Process 1 reads another weight decay (say, a config edited on one host only): the
    processes would skip, resume and wait for different runs, so they stop before any."""
    config = tmp_path / "differs.py"
    config.write_text(
        "import os\n"
        "from tljax.config import transfer\n\n\n"
        "def get_config():\n"
        "    c = transfer(experiment='differs', dataset='digits:5-9')\n"
        "    c.weight_decay = 0.1 if os.environ['JAX_PROCESS_ID'] == '1' else 0.0\n"
        "    return c\n")
    code, text = _finish(_launch(tmp_path / "w", ['strategies=["full_ft"]', "sweep={}"],
                                 config=config), 120)
    assert code == 2, text[-3000:]
    (launched,) = [line for line in text.splitlines() if line.startswith("tljax: launch:")]
    assert launched.startswith("tljax: launch: process 1 of 2 failed with exit status 2: this "
                               "process (1) and process 0 disagree on the runs to do"), launched
    assert not (tmp_path / "w" / "results.jsonl").exists()


def test_a_killed_process_ends_the_launch_within_seconds_naming_it(tmp_path):
    workdir = tmp_path / "w"
    proc = _launch(workdir, KILLED + ["steps=100000", "checkpoint_every=20"])
    deadline = time.time() + TIMEOUT_S
    while not (workdir / "state").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # both processes are training once the first checkpoint is there
    while not any(d.isdigit() for _, ds, _ in os.walk(workdir / "state") for d in ds):
        assert proc.poll() is None and time.time() < deadline, open(proc.log).read()[-3000:]
        time.sleep(0.05)
    pid = _children(proc.pid)[1]  # proc is `tljax launch`; its children run the processes
    killed_at = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    code, text = _finish(proc, 60)
    elapsed = time.perf_counter() - killed_at
    assert code == 128 + signal.SIGKILL, text[-3000:]
    (launched,) = [line for line in text.splitlines() if line.startswith("tljax: launch:")]
    assert launched.startswith("tljax: launch: process 1 of 2 was killed by SIGKILL (exit 137)")
    assert elapsed < 15, f"{elapsed:.1f}s"


def test_a_process_whose_peer_is_killed_stops_by_itself_naming_it(tmp_path):
    """Two ``--distributed`` processes without the launcher, both waiting for data that
    another process prepares (the test holds its lock): one is SIGKILLed; the other is
    in no collective that could fail, yet stops within its peer timeout, in one line."""
    port = launch.free_port()
    data_dir = tmp_path / "data"
    procs = {}
    with locks.held(locks.lock_path(str(data_dir), "digits"), "the test"):
        for i in range(2):
            env = {**launch.child_env(os.environ, i, 2, port, None),
                   "TLJAX_DATA_DIR": str(data_dir), peers.TIMEOUT_ENV: "3"}
            procs[i] = _start(["run", SELF, "--workdir", str(tmp_path / "w"), "--distributed",
                               "--set", *SETTINGS], str(tmp_path / f"p{i}.log"), env)
        deadline = time.time() + TIMEOUT_S
        while not all("waiting for another process" in open(p.log).read()
                      for p in procs.values()):
            assert time.time() < deadline and all(p.poll() is None for p in procs.values()), (
                open(procs[0].log).read()[-3000:])
            time.sleep(0.1)
        killed_at = time.perf_counter()
        os.killpg(procs[1].pid, signal.SIGKILL)
        code, text = _finish(procs[0], 60)
    elapsed = time.perf_counter() - killed_at
    assert code == 1, text[-3000:]
    assert ("[p0/2] tljax: error: process 1 stopped responding (no heartbeat for 3 s: "
            "killed, or its machine lost); stopping process 0") in text
    assert elapsed < 15, f"{elapsed:.1f}s"


def test_a_peer_counts_as_lost_when_its_heartbeat_stands_still_and_never_when_done():
    seen = {1: ("", 0.0), 2: ("", 0.0)}
    assert peers._verdict({1: "beat 1", 2: "beat 1"}, seen, 1.0, 0, 3.0) is None
    assert peers._verdict({1: "beat 5", 2: "beat 1"}, seen, 3.5, 0, 3.0) is None
    assert peers._verdict({1: "beat 9", 2: "beat 1"}, seen, 4.5, 0, 3.0) == (
        "process 2 stopped responding (no heartbeat for 3 s: killed, or its machine lost); "
        "stopping process 0")
    assert peers._verdict({1: "done", 2: "done"}, seen, 99.0, 0, 3.0) is None
    assert peers._verdict({1: "done", 2: "done"}, seen, 999.0, 0, 3.0) is None
    assert peers._verdict({1: "failed tljax: error: no data", 2: "done"}, seen, 999.0, 0,
                          3.0) == ("process 1 failed (tljax: error: no data); stopping "
                                   "process 0")
    assert peers._verdict({}, {1: ("", 0.0)}, 5.0, 0, 3.0).startswith(
        "process 1 has not started")
