"""Scale and survival: sharded = single-device, bf16, gradient accumulation, resume after
SIGKILL, corrupt checkpoints, NaN guard."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tljax import checkpoint, models, optim, strategies, train
from tljax.config import transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELF = os.path.join(ROOT, "experiments", "lp_vs_ft_self_pretrained.py")


def test_sharded_and_pmap_steps_match_the_single_device_step():
    """On 4 forced CPU devices, in a fresh process (the device count is fixed at start)."""
    script = textwrap.dedent("""
        import jax, numpy as np
        from tljax import models, optim, parallel, strategies, train
        from tljax.config import transfer
        assert jax.device_count() == 4
        model = models.create("cnn", 5)
        rng = np.random.default_rng(0)
        batches = [(rng.normal(size=(16, 16, 16, 1)).astype(np.float32), rng.integers(0, 5, 16))
                   for _ in range(3)]
        for strategy, bn_eval in (("full_ft", False), ("linear_probe", False), ("full_ft", True)):
            variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
            rules = strategies.labels(strategy, variables["params"], model.blocks)
            frozen = model.block_names if bn_eval else strategies.frozen_blocks(rules, model.blocks)
            tx = optim.make(transfer(lr=1e-2, steps=3), rules)
            step1 = train.make_step(model.module, rules, tx, frozen)
            s1 = jax.device_put(train.init_state(variables, tx), jax.devices()[0])
            mesh = parallel.make_mesh(4)
            s4 = parallel.place_state(mesh, train.init_state(variables, tx),
                                      fsdp_regex="kernel" if strategy == "full_ft" else "")
            step4 = train.make_step(model.module, rules, tx, frozen)
            losses1, losses4 = [], []
            for x, y in batches:
                s1, m1 = step1(s1, jax.device_put(x, jax.devices()[0]), jax.device_put(y, jax.devices()[0]))
                s4, m4 = step4(s4, *parallel.shard_batch(mesh, x, y))
                losses1.append(float(m1["loss"])); losses4.append(float(m4["loss"]))
            np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
            for a, b in zip(jax.tree.leaves(jax.device_get(s1.params)), jax.tree.leaves(jax.device_get(s4.params))):
                np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)  # Adam amplifies reordered sums
            if strategy == "full_ft" and not bn_eval:
                continue  # pmap normalises with per-device batch statistics: not the same math
            pstep = parallel.pmap_step(train.make_step(model.module, rules, tx, frozen,
                                                       axis_name="data", jit=False), 4)
            sp = parallel.replicate(train.init_state(variables, tx), 4)
            s1 = train.init_state(variables, tx)
            for x, y in batches:
                sp, mp = pstep(sp, *parallel.split_batch(4, x, y))
                s1, m1 = step1(s1, x, y)
                np.testing.assert_allclose(float(mp["loss"][0]), float(m1["loss"]), rtol=1e-5)
            for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(parallel.unreplicate(sp).params)):
                np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)  # Adam amplifies reordered sums
        print("ok")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_accumulated_micro_batches_stay_sharded_over_the_mesh():
    """Each micro-batch is split over all 4 devices: no device gathers the batch, and each
    computes a quarter of what one device does alone (compiled HLO and XLA's cost model)."""
    script = textwrap.dedent("""
        import jax, numpy as np
        from tljax import models, optim, parallel, strategies, train
        from tljax.config import transfer
        assert jax.device_count() == 4
        model = models.create("cnn", 5)
        variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
        rules = strategies.labels("full_ft", variables["params"], model.blocks)
        tx = optim.make(transfer(lr=1e-2, steps=3), rules)
        x, y = np.zeros((64, 16, 16, 1), np.float32), np.zeros(64, np.int32)

        def compiled(state, *batch):
            step = train.make_step(model.module, rules, tx, model.block_names, accum_steps=4)
            c = step.lower(state, *batch).compile()
            cost = c.cost_analysis()
            return c.as_text(), (cost[0] if isinstance(cost, list) else cost)["flops"]

        mesh = parallel.make_mesh(4)
        hlo, flops4 = compiled(parallel.place_state(mesh, train.init_state(variables, tx)),
                               *parallel.shard_batch(mesh, x, y))
        one = jax.devices()[0]
        _, flops1 = compiled(jax.device_put(train.init_state(variables, tx), one),
                             jax.device_put(x, one), jax.device_put(y, one))
        gathers = [line for line in hlo.splitlines() if " all-gather(" in line]
        print("gathers", len(gathers), "ratio", flops4 / flops1)
        assert not gathers, gathers[:3]
        assert 0.2 < flops4 / flops1 < 0.3, (flops4, flops1)
        print("ok")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def _setup(strategy="full_ft", frozen_all=True):
    model = models.create("cnn", 5)
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    rules = strategies.labels(strategy, variables["params"], model.blocks)
    frozen = model.block_names if frozen_all else strategies.frozen_blocks(rules, model.blocks)
    tx = optim.make(transfer(lr=1e-2, steps=4), rules)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    return model, variables, rules, frozen, tx, x, y


def test_gradient_accumulation_gives_the_large_batch_update():
    model, variables, rules, frozen, tx, x, y = _setup()
    big = train.make_step(model.module, rules, tx, frozen)
    micro = train.make_step(model.module, rules, tx, frozen, accum_steps=4)
    s1, s2 = train.init_state(variables, tx), train.init_state(variables, tx)
    for _ in range(2):
        s1, m1 = big(s1, x, y)
        s2, m2 = micro(s2, x, y)
        np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
        assert float(m2["accuracy"]) == float(m1["accuracy"])  # logits back in row order
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        # Adam divides by sqrt(v): a near-zero gradient summed in another order moves by
        # a few 1e-6 (the step is 1e-2).
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_bf16_compute_keeps_float32_params_and_state():
    model, variables, rules, frozen, tx, x, y = _setup(frozen_all=False)
    f32 = train.make_step(model.module, rules, tx, frozen)
    bf16 = train.make_step(model.module, rules, tx, frozen, compute_dtype=jax.numpy.bfloat16)
    s1, m1 = f32(train.init_state(variables, tx), x, y)
    s2, m2 = bf16(train.init_state(variables, tx), x, y)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(s2.params))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(s2.batch_stats))
    assert all(leaf.dtype in (np.float32, np.int32) for leaf in jax.tree.leaves(s2.opt_state))
    assert abs(float(m2["loss"]) - float(m1["loss"])) < 0.05 * float(m1["loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s1.params),
                                                        jax.tree.leaves(s2.params)))


def test_nan_loss_stops_fit_naming_the_first_bad_step():
    saved = []

    def step(state, x, y):
        return state + 1, {"loss": np.float32(np.nan if state + 1 >= 7 else 1.0),
                           "accuracy": np.float32(0)}

    batches = iter(lambda: (None, None), 0)
    with pytest.raises(FloatingPointError, match="non-finite at step 7"):
        train.fit(step, 0, batches, 30, log_every=10, checkpoint=lambda s, i: saved.append(i),
                  checkpoint_every=5)
    assert saved == [5]  # no checkpoint is written once a step went bad


def test_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path):
    model, variables, rules, frozen, tx, x, y = _setup()
    step = train.make_step(model.module, rules, tx, frozen)
    state = train.init_state(variables, tx)
    ckpts = checkpoint.RunCheckpoints(str(tmp_path / "state"))
    state, _ = step(state, x, y)
    ckpts.save(jax.device_get(state), 1)
    good = jax.device_get(state)
    state, _ = step(state, x, y)
    ckpts.save(jax.device_get(state), 2)
    for root, _, files in os.walk(tmp_path / "state" / "2"):
        for f in files:  # damage every data file of the newest checkpoint
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(max(0, os.path.getsize(os.path.join(root, f)) // 3))
    warnings = []
    found, restored = checkpoint.RunCheckpoints(str(tmp_path / "state")).restore_latest(
        good, warn=warnings.append)
    assert found == 1 and warnings and "step 2" in warnings[0]
    for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, b)


RESUME = ["seeds=[0]", "strategies=[\"full_ft\"]", "steps=300", "checkpoint_every=20",
          "pretrain.dataset=\"\"", "log_every=20"]


def _run(workdir, extra=()):
    return subprocess.Popen([sys.executable, "-m", "tljax.cli", "run", SELF, "--workdir",
                             str(workdir), "--set", *RESUME, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkilled_run_resumes_to_the_same_params_and_metrics(tmp_path):
    reference = _run(tmp_path / "ref")  # uninterrupted, first (it also prepares the data)
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-2000:]
    killed = _run(tmp_path / "killed")
    state = tmp_path / "killed" / "state"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once a mid-run checkpoint exists
        steps = [int(d) for r, ds, _ in os.walk(state) for d in ds if d.isdigit()]
        if steps and max(steps) >= 60:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "results.jsonl").exists()  # it died unfinished

    resumed = _run(tmp_path / "killed")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "resuming from the checkpoint at step" in err

    (a,) = [json.loads(line) for line in open(tmp_path / "ref" / "results.jsonl")]
    (b,) = [json.loads(line) for line in open(tmp_path / "killed" / "results.jsonl")]
    assert b["resumed_from_step"] >= 60 and b["resumed_from_step"] % 20 == 0
    assert a["metrics"] == b["metrics"]
    ra = ocp.StandardCheckpointer().restore(a["checkpoint"])
    rb = ocp.StandardCheckpointer().restore(b["checkpoint"])
    for x, y in zip(jax.tree.leaves(ra), jax.tree.leaves(rb)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()

    again = _run(tmp_path / "killed")  # the same command once more: nothing left to do
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "finished earlier" in err
    assert len(open(tmp_path / "killed" / "results.jsonl").readlines()) == 1


def test_nan_run_records_failed_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = _run(tmp_path / "nan", ["lr=1e30", "optimizer=\"sgd\"", "grad_clip=0", "steps=200"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    (record,) = [json.loads(line) for line in open(tmp_path / "nan" / "results.jsonl")]
    assert record["status"] == "failed" and "non-finite at step" in record["error"]
    assert "non-finite at step" in err
