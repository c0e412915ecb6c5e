"""Training curves: TensorBoard event files per run, read back by TensorBoard's own reader,
and the report's learning-curve figure."""

import json
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator, event_multiplexer

from tljax import optim
from tljax.run import curves, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "experiments", "lp_vs_ft.py")


def _scalars(directory: str) -> dict:
    acc = event_accumulator.EventAccumulator(directory)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_crc32c_matches_the_standard_check_value():
    assert curves.crc32c(b"123456789") == 0xE3069283  # RFC 3720's CRC-32C check value


def test_a_run_s_curves_read_back_as_tensorboard_reads_them(tmp_path):
    point = plan.Point("full_ft", {"lr": 0.01, "weight_decay": 0.0},
                       ml_collections.FrozenConfigDict({}), "network")
    spec = plan.RunSpec(point, 3, "grid", "0123456789abcdef")
    run_cfg = ml_collections.ConfigDict({"lr": 0.01, "warmup_steps": 2, "steps": 6})
    record = {"steps": 6,
              "history": [{"step": s, "loss": 2.0 / s, "accuracy": s / 10} for s in (2, 4, 6)],
              "val_history": [{"step": 3, "loss": 0.9, "accuracy": 0.5}],
              "metrics": {"train": {"accuracy": 0.75, "loss": 0.3},
                          "val": {"accuracy": 0.625, "loss": 0.4},
                          "test": {"accuracy": 0.5, "loss": 0.5}}}
    path = curves.write(str(tmp_path), spec, record, run_cfg)
    assert os.path.dirname(path) == str(tmp_path / "curves" / "full_ft" / "lr=0.01,weight_decay=0"
                                        / "seed3-01234567")
    got = _scalars(os.path.dirname(path))
    assert got["train/loss"] == [(2, 1.0), (4, 0.5), (6, pytest.approx(2 / 6))]
    assert got["train/accuracy"] == [(s, pytest.approx(s / 10)) for s in (2, 4, 6)]
    unit = optim.schedule(1.0, 2, 6)  # the step's update used the schedule at step - 1
    assert got["train/learning_rate"] == [(s, pytest.approx(0.01 * float(unit(s - 1))))
                                          for s in (2, 4, 6)]
    # The measured validation points, then the end's.
    assert got["val/loss"] == [(3, pytest.approx(0.9)), (6, pytest.approx(0.4))]
    assert got["val/accuracy"] == [(3, 0.5), (6, 0.625)]
    assert got["final/test_accuracy"] == [(6, 0.5)]
    assert got["final/train_accuracy"] == [(6, 0.75)]


def test_the_main_job_s_runs_are_listed_by_tensorboard_with_readable_names(tmp_path):
    workdir = tmp_path / "main"
    proc = subprocess.run(
        [sys.executable, "-m", "tljax.cli", "run", MAIN, "--workdir", str(workdir), "--set",
         "steps=10", "seeds=[0,1]", "image_size=32", "log_every=5", "val_every=5",
         "warmup_steps=2", 'strategies=["linear_probe","bitfit"]', "sweep.lr=[1e-3,1e-2]"],
        capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in open(workdir / "results.jsonl")]
    mux = event_multiplexer.EventMultiplexer().AddRunsFromDirectory(str(workdir))
    mux.Reload()
    # One TensorBoard run per record, named by strategy, swept values and seed.
    want = {f"curves/{r['strategy']}/"
            + (f"lr={r['hparams']['lr']:g}" if r["hparams"] else "no_sweep")
            + f"/seed{r['seed']}-{r['run_hash'][:8]}" for r in records}
    assert set(mux.Runs()) == want and len(want) == len(records) == 5
    assert any(re.fullmatch(r"curves/bitfit/lr=0\.01/seed1-[0-9a-f]{8}", run) for run in want)
    for r in records:
        name = next(run for run in want if run.endswith(r["run_hash"][:8]))
        got = {tag: [(e.step, e.value) for e in mux.Scalars(name, tag)]
               for tag in mux.Runs()[name]["scalars"]}
        assert got["final/test_accuracy"] == [
            (r["steps"], pytest.approx(r["metrics"]["test"]["accuracy"]))]
        if r["strategy"] == "bitfit":
            assert got["train/loss"] == [(h["step"], pytest.approx(h["loss"]))
                                         for h in r["history"]]
            assert [s for s, _ in got["val/accuracy"]] == [5, 10]
            assert got["val/accuracy"][-1][1] == pytest.approx(
                r["metrics"]["val"]["accuracy"])
            assert np.isclose(got["train/learning_rate"][0][1],
                              r["hparams"]["lr"] * float(optim.schedule(1.0, 2, 10)(4)))
    assert (workdir / "plots" / "learning_curves.png").stat().st_size > 0
