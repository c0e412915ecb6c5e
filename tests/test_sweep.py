"""Sweeps from the command line: grids, validation selection, resume and run identity."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tljax import checkpoint, cli, config, models
from tljax.run import plan, source_model
from tljax.run import records as run_records
from tljax.errors import UserError

CONFIG = '''
from tljax.config import transfer

def get_config():
    c = transfer(experiment="{name}", model="cnn", dataset="digits:5-9")
    c.strategies = ["linear_probe", "last_k:1"]
    c.seeds = [0, 1]
    c.steps = 6
    c.batch_size = 32
    c.log_every = 3
    c.checkpoint_every = 3
    c.sweep = {{"lr": [1e-3, 1e-2, 1e-1]}}
    return c
'''


def _config(tmp_path, name="sweep_test", body=CONFIG):
    path = tmp_path / f"{name}.py"
    path.write_text(body.format(name=name))
    return str(path)


def _records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "results.jsonl"))]


def _run(*argv):
    return cli.main(["run", *argv])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep: linear_probe x 2 seeds (its grid collapses: a cached probe reads
    no learning rate) and last_k:1 x 3 learning rates x 2 seeds."""
    tmp = tmp_path_factory.mktemp("sweep")
    cfg, workdir = _config(tmp), str(tmp / "w")
    assert _run(cfg, "--workdir", workdir) == 0
    return cfg, workdir


def test_grid_records_carry_hparams_and_report_names_the_best_on_val(finished, tmp_path):
    cfg, workdir = finished
    records = _records(workdir)
    keys = sorted((r["strategy"], r["seed"], json.dumps(r["hparams"])) for r in records)
    assert keys == sorted(
        [("linear_probe", s, "{}") for s in (0, 1)]
        + [("last_k:1", s, json.dumps({"lr": lr})) for s in (0, 1) for lr in (1e-3, 1e-2, 1e-1)])
    assert all(r["status"] == "ok" and r["sweep_hash"] and r["run_hash"] for r in records)
    assert len({r["run_hash"] for r in records}) == len(records)
    # The report names, per strategy, the point with the best mean validation accuracy.
    out = tmp_path / "report.json"
    assert cli.main(["report", workdir, "--json", str(out)]) == 0
    selected = {s["strategy"]: s for s in json.loads(out.read_text())["selected"]}
    sweep_runs = [r for r in records if r["strategy"] == "last_k:1"]
    val = {}
    for r in sweep_runs:
        val.setdefault(r["hparams"]["lr"], []).append(r["metrics"]["val"]["accuracy"])
    best = max(val, key=lambda lr: np.mean(val[lr]))  # ties: the first in grid order
    assert selected["last_k:1"]["hparams"] == {"lr": best}
    assert selected["linear_probe"]["hparams"] == {}


def test_rerun_and_non_result_settings_run_nothing_again(finished, capsys):
    cfg, workdir = finished
    before = _records(workdir)
    for extra in ([], ["--set", "log_every=7"], ["--set", "checkpoint_every=5",
                                                  "eval_batch_size=100", "experiment=renamed"]):
        assert _run(cfg, "--workdir", workdir, *extra) == 0
        assert len(_records(workdir)) == len(before), extra
    assert "(0 new runs)" in capsys.readouterr().err


def test_a_changed_result_setting_runs_again(finished, tmp_path):
    cfg, workdir = finished
    work = str(tmp_path / "copy")
    os.makedirs(work)
    with open(os.path.join(work, "results.jsonl"), "w") as f:
        f.writelines(open(os.path.join(workdir, "results.jsonl")))
    # One more swept value: only its two seeds run, nothing finished runs again.
    assert _run(cfg, "--workdir", work, "--set", "sweep.lr=[1e-3,1e-2,1e-1,3e-1]") == 0
    new = _records(work)[len(_records(workdir)):]
    assert sorted((r["hparams"]["lr"], r["seed"]) for r in new) == [(0.3, 0), (0.3, 1)]


def test_overwritten_weights_at_the_same_path_are_not_skipped(tmp_path):
    net = models.create("cnn", 5)
    path = str(tmp_path / "source")
    body = CONFIG.replace('c.sweep = {{"lr": [1e-3, 1e-2, 1e-1]}}',
                          f'c.weights = {path!r}; c.strategies = ["linear_probe"]; '
                          'c.seeds = [0]')
    cfg, workdir = _config(tmp_path, body=body), str(tmp_path / "w")
    import jax

    checkpoint.save_variables(path, net.init(jax.random.key(0)))
    assert _run(cfg, "--workdir", workdir) == 0
    checkpoint.save_variables(path, net.init(jax.random.key(1)))  # same path, new weights
    assert _run(cfg, "--workdir", workdir) == 0
    first, second = _records(workdir)
    assert first["run_hash"] != second["run_hash"]
    assert first["checkpoint"] != second["checkpoint"] and os.path.isdir(first["checkpoint"])


def test_two_configs_in_one_workdir_keep_their_own_checkpoints(finished, tmp_path):
    cfg, workdir = finished
    work = str(tmp_path / "two")
    assert _run(cfg, "--workdir", work, "--set", "seeds=[0]", "sweep.lr=[1e-2]",
                "strategies=[\"last_k:1\"]") == 0
    assert _run(cfg, "--workdir", work, "--set", "seeds=[0]", "sweep.lr=[1e-2]",
                "strategies=[\"last_k:1\"]", "weight_decay=0.1") == 0
    a, b = _records(work)
    assert a["checkpoint"] != b["checkpoint"] and a["sweep_hash"] != b["sweep_hash"]
    for r in (a, b):  # each record still points at its own weights
        restored = checkpoint.restore_variables(r["checkpoint"])
        assert restored["params"]["head"]["kernel"].shape == (128, 5)
    assert not np.array_equal(checkpoint.restore_variables(a["checkpoint"])["params"]["head"]
                              ["kernel"], checkpoint.restore_variables(b["checkpoint"])
                              ["params"]["head"]["kernel"])


def test_select_seeds_runs_the_grid_once_then_the_selected_point(tmp_path):
    cfg = _config(tmp_path)
    workdir = str(tmp_path / "w")
    assert _run(cfg, "--workdir", workdir, "--set", "seeds=[0,1,2]", "select_seeds=1",
                "strategies=[\"last_k:1\"]") == 0
    records = _records(workdir)
    assert len(records) == 3 + 2  # grid on seed 0, then the selected point on seeds 1, 2
    first = [r for r in records if r["seed"] == 0]
    best = max(first, key=lambda r: r["metrics"]["val"]["accuracy"])  # ties: grid order
    rest = [r for r in records if r["seed"] != 0]
    assert {json.dumps(r["hparams"]) for r in rest} == {json.dumps(best["hparams"])}


def test_a_sweep_killed_midway_completes_on_rerun_without_repeats(tmp_path):
    cfg = _config(tmp_path)
    workdir = tmp_path / "w"
    argv = [sys.executable, "-m", "tljax.cli", "run", cfg, "--workdir", str(workdir),
            "--set", "strategies=[\"last_k:1\"]", "steps=40"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = workdir / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(_records(workdir))
    assert 2 <= partial < 6, partial
    assert subprocess.run(argv, capture_output=True).returncode == 0
    records = _records(workdir)
    keys = [(r["seed"], r["hparams"]["lr"]) for r in records]
    assert len(keys) == len(set(keys)) == 6


def test_a_torn_last_line_is_closed_and_later_records_survive(finished, tmp_path):
    cfg, workdir = finished
    work = tmp_path / "torn"
    work.mkdir()
    lines = open(os.path.join(workdir, "results.jsonl")).read().splitlines()
    (work / "results.jsonl").write_text("\n".join(lines[:1]) + "\n" + lines[1][:40])
    assert _run(cfg, "--workdir", str(work), "--set", "strategies=[\"linear_probe\"]") == 0
    text = (work / "results.jsonl").read_text().splitlines()
    assert text[1] == lines[1][:40]  # the torn line is left alone, on its own line
    good = [json.loads(t) for t in text if t != lines[1][:40]]
    assert sorted(r["seed"] for r in good) == [0, 1]


def test_append_record_is_one_complete_line(tmp_path):
    path = str(tmp_path / "r.jsonl")
    with open(path, "w") as f:
        f.write('{"torn": ')
    run_records.append_record(path, {"a": np.float32(1.5), "b": np.int64(2)})
    assert open(path).read().splitlines()[1] == '{"a": 1.5, "b": 2}'


def test_kshot_batch_that_cannot_split_exits_2_before_training(tmp_path, capsys):
    cfg, workdir = _config(tmp_path), tmp_path / "w"
    code = _run(cfg, "--workdir", str(workdir), "--set", "shots=1", "accum_steps=2",
                "strategies=[\"last_k:1\"]")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "shots=1 x 5 classes gives a batch of 5" in err.splitlines()[-1]
    assert not (workdir / "results.jsonl").exists()


@pytest.mark.parametrize("setting,message", [
    (["sweep.lrr=[1]"], "unknown sweep key 'lrr'; known:"),
    (["sweep.steps=[1.5]"], "bad sweep value 1.5 for 'steps'; expected int"),
    (["sweep.lr=[]"], "sweep key 'lr' has no values"),
    (["select_metric=top5"], "unknown select_metric 'top5'; known: accuracy, macro_f1, loss"),
    (["shifted.test=digits:5-9@contrast:2"], "shifted split name 'test' is taken"),
    (["sweep.fsdp_regex=head"], "sweep key 'fsdp_regex' needs a list of values; got 'head'"),
    (["per_strategy.last_k:1.steps=1e3"], "bad value 1000.0 for per_strategy.last_k:1.steps"),
    (["shifted.noise=digits:5-9@noise:2"], "unknown corruption 'noise'"),
])
def test_bad_sweeps_exit_2_with_one_line(tmp_path, capsys, setting, message):
    code = _run(_config(tmp_path), "--workdir", str(tmp_path / "w"), "--set", *setting)
    err = capsys.readouterr().err
    assert code == 2 and message in err.splitlines()[-1], err


def test_per_strategy_grids_replace_the_global_list():
    c = config.transfer(strategies=["linear_probe", "bitfit", "full_ft"])
    c.sweep = {"lr": [1e-4, 1e-3], "weight_decay": [0.0, 0.1]}
    c.per_strategy = {"bitfit": {"sweep": {"lr": [1e-2, 1e-1]}}, "full_ft": {"lr": 3e-4}}
    assert plan.strategy_grid(c, "linear_probe") == {}  # reads neither
    assert plan.strategy_grid(c, "bitfit") == {"lr": [1e-2, 1e-1], "weight_decay": [0.0, 0.1]}
    assert plan.strategy_grid(c, "full_ft") == {"weight_decay": [0.0, 0.1]}
    eff = plan.effective_config(c, "full_ft", {"weight_decay": 0.1})
    assert (eff.lr, eff.weight_decay, dict(eff.per_strategy)) == (3e-4, 0.1, {})
    c.per_strategy = {"bitfit": {"lr": 1e-2, "sweep": {"lr": [1e-2]}}}
    with pytest.raises(UserError, match="both fixes and sweeps 'lr'"):
        plan.strategy_grid(c, "bitfit")


def test_the_source_model_key_covers_every_setting_its_training_reads():
    base = config.transfer(model="cnn")
    base.pretrain.dataset = "digits:0-4"
    key = source_model.source_key(base)
    for setting in (["optimizer=sgd"], ["momentum=0.5"], ["weight_decay=0.1"],
                    ["grad_clip=0.5"], ["warmup_steps=3"], ["pretrain.lr=0.1"],
                    ["pretrain.seed=1"], ["image_size=16"]):
        changed = config.apply_overrides(config.transfer(model="cnn"),
                                         ["pretrain.dataset=digits:0-4", *setting])
        assert source_model.source_key(changed) != key, setting
    # What the source's training never reads leaves it alone.
    same = config.apply_overrides(config.transfer(model="cnn"),
                                  ["pretrain.dataset=digits:0-4", "l2sp_alpha=0.5",
                                   "log_every=3", "shots=5"])
    assert source_model.source_key(same) == key



def test_a_probe_on_a_retrained_source_model_runs_again(tmp_path):
    """The probe reads no optimiser setting, but the self-pretrained source it probes does:
    a new source (here: another pretraining optimiser) must not be mistaken for the old."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = os.path.join(root, "experiments", "lp_vs_ft_self_pretrained.py")
    workdir = str(tmp_path / "w")
    fast = ["--set", "pretrain.steps=10", "seeds=[0]", "strategies=[\"linear_probe\"]"]
    assert _run(cfg, "--workdir", workdir, *fast) == 0
    assert _run(cfg, "--workdir", workdir, *fast) == 0  # same source: skipped
    assert len(_records(workdir)) == 1
    assert _run(cfg, "--workdir", workdir, *fast, "optimizer=sgd") == 0
    first, second = _records(workdir)
    assert first["run_hash"] != second["run_hash"]
    sources = [d for d in os.listdir(os.path.join(workdir, "pretrained"))
               if not d.startswith(".")]  # .tljax-locks: who trains it (tljax.locks)
    assert len(sources) == 2


def test_per_strategy_settings_for_a_strategy_not_run_are_named(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert _run(cfg, "--workdir", str(tmp_path / "w"), "--set", "seeds=[0]",
                "strategies=[\"linear_probe\"]", "per_strategy.full-ft.lr=0.1") == 0
    assert ("warning: per_strategy names 'full-ft', which is not in strategies"
            in capsys.readouterr().err)


def test_a_source_model_trained_before_new_pretrain_keys_existed_is_still_reused():
    # The key the default source had when it was first recorded: a workdir holding that
    # source reuses it rather than training (and digesting) another.
    for model in ("", "cnn"):  # '' = the default: no weights to take a model from, so cnn
        cfg = config.transfer(model=model)
        cfg.pretrain.dataset = "digits:0-4"
        assert source_model.source_key(cfg) == "cnn-digits_0-4-500-907da004b298"


def test_a_k_shot_run_scores_train_on_the_examples_it_trained_on(tmp_path, monkeypatch):
    """With ``shots``, a run's train metrics are over its k-shot examples, not the whole
    train split (which a text encoder would spend most of a few-shot run predicting)."""
    from tljax import data, train

    scored = []
    real = train.classification_metrics

    def noting(logits, labels):
        scored.append(np.array(labels))
        return real(logits, labels)

    monkeypatch.setattr(train, "classification_metrics", noting)
    cfg = _config(tmp_path)
    assert _run(cfg, "--workdir", str(tmp_path / "w"), "--set", "seeds=[1]", "shots=2",
                "steps=2", "batch_size=10", "sweep={}",
                "strategies=[\"linear_probe\", \"full_ft\"]") == 0
    y = data.load("digits:5-9").splits["train"].labels
    trained_on = y[data.k_shot_indices(y, 2, 1)]
    # One train scoring per run, each over the 10 examples trained on; none over the split.
    trains = [labels for labels in scored if len(labels) == len(trained_on)]
    assert len(trains) == 2 and not [labels for labels in scored if len(labels) == len(y)]
    for labels in trains:
        np.testing.assert_array_equal(labels, trained_on)
    records = _records(str(tmp_path / "w"))
    assert [r["metrics"]["train"]["accuracy"] * 10 % 1 for r in records] == [0.0, 0.0]
