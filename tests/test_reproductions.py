"""Paper reproductions' machinery: `tljax run --dry-run`, configs taking an argument, the
sweep's train+val refit (VTAB) and the paper's numbers beside ours in the report."""

import glob
import json
import os

import pytest

from tljax import cli, config, data, report
from tljax.run import sweep
from tljax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))


def _dry(argv, capsys):
    code = cli.main(["run", *argv, "--dry-run"])
    out, err = capsys.readouterr()
    return code, out, err


def _with_args(path):
    """Returns ``path``, or ``path:ARG`` for each argument a config lists (DATASETS, TASKS)."""
    text = open(path).read()
    for table in ("DATASETS", "TASKS"):
        if f"\n{table} = " in text and "def get_config(arg" in text:
            namespace = {}
            exec(compile(text, path, "exec"), namespace)  # the config's own table of names
            return [f"{path}:{name}" for name in namespace[table]]
    return [path]


@pytest.mark.parametrize("path", [p for c in CONFIGS for p in _with_args(c)],
                         ids=lambda p: os.path.basename(p))
def test_every_experiment_config_passes_dry_run_and_writes_nothing(path, capsys, tmp_path):
    workdir = tmp_path / "w"
    code, out, err = _dry([path, "--workdir", str(workdir)], capsys)
    assert code == 0, err
    assert "valid" in out.splitlines()[0] and "runs in all:" in out
    assert any(line.startswith("needs: ") for line in out.splitlines())
    if "resnet50" in out:  # the full-scale configs: the user brings the torchvision weights
        assert "needs: weights 'resnet50-0676ba61.pth'" in out
    assert not workdir.exists() and not os.listdir(tmp_path)


def test_dry_run_lists_missing_paths_and_counts_runs(capsys, tmp_path):
    path = os.path.join(ROOT, "experiments", "vtab1k.py:dtd")
    code, out, _ = _dry([path, "--set", "dataset=/nowhere/pets", f"weights={tmp_path}/r50.pth",
                         "seeds=[0,1]"], capsys)
    assert code == 0
    assert "needs: dataset '/nowhere/pets': the path '/nowhere/pets' does not exist here" in out
    assert f"needs: weights '{tmp_path}/r50.pth'" in out
    # full_ft: 4 grid points on seed 0, the selected one on seed 1, then 2 train+val refits;
    # linear_probe: one point x 2 seeds + 2 refits.
    assert "= 7 runs" in out and "= 4 runs" in out and "runs in all: 11" in out


def test_dry_run_says_a_source_model_is_trained_first_not_random_init(capsys):
    path = os.path.join(ROOT, "experiments", "lp_vs_ft_self_pretrained.py")
    code, out, _ = _dry([path], capsys)
    assert code == 0
    model_line = out.splitlines()[1]
    assert "random init" not in model_line
    assert ("weights (a source model the run trains first: cnn on digits:0-4, 400 steps, "
            "unless the workdir holds it)") in model_line
    code, out, _ = _dry([path, "--set", 'pretrain.dataset=""'], capsys)
    assert "weights (random init)" in out.splitlines()[1]


def test_bitfit_dry_run_selects_a_point_per_training_size(capsys):
    """The BitFit miniature sweeps ``shots``: the sweep selects a learning rate per
    training size, so the dry run counts every grid point on all five seeds, and with
    ``select_seeds=1`` counts the remaining seeds once per size."""
    path = os.path.join(ROOT, "experiments", "benzaken2022_bitfit_mini.py")
    code, out, _ = _dry([path], capsys)
    assert code == 0, out
    assert "weights all_minilm_l6_v2; dataset vader" in out
    assert "select_seeds all" in out
    assert "grid: lr=[0.0001, 0.001, 0.01, 0.1], shots=[8, 64]; 8 point(s) x 5 seed(s)" in out
    assert "runs in all: 80" in out
    code, out, _ = _dry([path, "--set", "select_seeds=1"], capsys)
    assert code == 0, out
    # linear_probe: 2 sizes on seed 0, then seeds 1-4 at each; bitfit: 4 learning rates x 2
    # sizes on seed 0, then the selected lr of each size on seeds 1-4; full_ft: 3 x 2, same.
    assert "grid: lr=[0.0001, 0.001, 0.01, 0.1], shots=[8, 64]; 8 points" in out
    assert "grid: lr=[1e-05, 0.0001, 0.001], shots=[8, 64]; 6 points" in out
    assert "= 10 runs" in out and "= 16 runs" in out and "= 14 runs" in out
    assert "runs in all: 40" in out
    assert "needs: nothing more; ready to run here" in out


@pytest.mark.parametrize("setting, message", [
    ("strategies=[\"transfer_n:99\"]", "transfer_n:99 is out of range"),
    ("sweep.bogus=[1,2]", "unknown sweep key 'bogus'"),
    ("per_strategy.full_ft.lrr=0.1", "unknown per_strategy key 'lrr'"),
    ("shifted.stl=stl10:0-4@fog:3", "fog"),
    ("dataset=not_a_dataset_name", "unknown dataset 'not_a_dataset_name'"),
    ("final_fit=train", "unknown final_fit 'train'"),
    ("published.full_ft.test=91.8", "give an accuracy in [0, 1]"),
    ("splits.train=train[:800]", "splits needs exactly the keys train, val, test"),
    ("weights=resnet50_imagenet", "weights not found: 'resnet50_imagenet'; known pretrained"),
])
def test_dry_run_rejects_a_bad_name_or_setting_in_one_line(setting, message, capsys):
    path = os.path.join(ROOT, "experiments", "kumar2022_lpft_cifar10_stl10.py")
    code, out, err = _dry([path, "--set", setting], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_dry_run_lists_the_data_a_swept_dataset_needs(tmp_path, monkeypatch, capsys):
    from tljax.run import dryrun

    # Only cifar10 is unprepared here (and no TFDS builder is constructed by this test).
    monkeypatch.setattr(dryrun, "_prepared", lambda name, data_dir: name != "cifar10")
    path = tmp_path / "swept.py"
    path.write_text("from tljax.config import transfer\n\ndef get_config():\n    return "
                    "transfer(dataset='digits', strategies=['linear_probe'], "
                    "sweep={'dataset': ['digits', 'cifar10:0-4']})\n")
    code, out, _ = _dry([str(path)], capsys)
    assert code == 0
    assert "needs: prepared data: TFDS 'cifar10'" in out
    assert "ready to run here" not in out


def test_config_argument_picks_the_dataset_and_is_checked(tmp_path):
    path = os.path.join(ROOT, "experiments", "kornblith2019_resnet50.py")
    assert config.load(path).dataset == "cifar10"  # the default argument
    assert config.load(path + ":flowers").dataset == "oxford_flowers102"
    with pytest.raises(UserError, match="unknown dataset 'imagenet'; known: cifar10, pets"):
        config.load(path + ":imagenet")
    plain = os.path.join(ROOT, "experiments", "lp_vs_ft.py")
    with pytest.raises(UserError, match="takes no argument"):
        config.load(plain + ":x")
    needy = tmp_path / "needy.py"
    needy.write_text("def get_config(task):\n    raise AssertionError\n")
    with pytest.raises(UserError, match="needs an argument"):
        config.load(str(needy))


FINAL_FIT = '''
from tljax.config import transfer

def get_config():
    c = transfer(experiment="final_fit", model="cnn", dataset="digits:5-9")
    c.strategies = ["linear_probe", "last_k:1"]
    c.seeds = [0, 1]
    c.steps = 3
    c.batch_size = 16
    c.sweep = {"lr": [1e-4, 3e-2]}
    c.select_seeds = 1
    c.probe_l2_grid = [1e-2, 1.0, 100.0]
    c.final_fit = "train+val"
    c.published = {"last_k:1": 0.5, "linear_probe": {"test": 0.25}}
    c.published_source = "Nobody et al. 2099, Table 9"
    return c
'''


def test_final_fit_refits_the_point_selected_on_val_on_train_plus_val(tmp_path,
                                                                     stubbed_training):
    path = tmp_path / "final_fit.py"
    path.write_text(FINAL_FIT)
    cfg, workdir = config.load(str(path)), str(tmp_path / "w")
    sweep.run(cfg, workdir, log=lambda msg: None)
    records = report.read_results(os.path.join(workdir, "results.jsonl"))
    final = [r for r in records if "final_fit" in r["hparams"]]
    grid = [r for r in records if "final_fit" not in r["hparams"]]
    # The grid on seed 0, the point selected on val on seed 1, then the refit on both seeds.
    assert [(r["strategy"], r["seed"], r["hparams"].get("lr")) for r in grid] == [
        ("linear_probe", 0, None), ("linear_probe", 1, None), ("last_k:1", 0, 1e-4),
        ("last_k:1", 0, 3e-2), ("last_k:1", 1, 3e-2)]
    assert [(r["strategy"], r["seed"], r["hparams"]) for r in final] == [
        ("linear_probe", s, {"final_fit": "train+val"}) for s in (0, 1)] + [
        ("last_k:1", s, {"lr": 3e-2, "final_fit": "train+val"}) for s in (0, 1)]
    splits = data.load("digits:5-9").splits
    n_train, n_val = len(splits["train"].labels), len(splits["val"].labels)
    assert {r["n_train"] for r in grid if "n_train" in r} == {n_train}
    assert {r["n_train"] for r in final if "n_train" in r} == {n_train + n_val}
    # The probe's refit keeps the L2 chosen on val: val is inside its training data now.
    assert [r["probe"]["train_examples"] for r in final[:2]] == [n_train + n_val] * 2
    assert [[s["l2"] for s in r["probe"]["sweep"]] for r in final[:2]] == [[1.0], [1.0]]
    assert len({r["sweep_hash"] for r in final} & {r["sweep_hash"] for r in grid}) == 0
    # The paper's numbers ride on every record and stand beside ours in the report.
    assert {json.dumps(r["published"]) for r in records if r["strategy"] == "last_k:1"} == {
        json.dumps({"test": 0.5})}
    table = report.markdown(records)
    assert "final_fit=train+val, lr=0.03" in table
    assert "paper test acc" in table and "Nobody et al. 2099, Table 9" in table
    # A rerun finds every run, the refits included, finished.
    assert sweep.run(config.load(str(path)), workdir, log=lambda msg: None) == []


def test_report_puts_the_papers_numbers_beside_ours():
    def record(strategy, test, stl, published=None):
        r = {"experiment": "x", "strategy": strategy, "seed": 0, "dataset": "cifar10",
             "shots": 0, "status": "ok", "sweep_hash": strategy, "hparams": {},
             "trainable_params": 1, "total_params": 2, "shifted": ["stl10"],
             "metrics": {"train": {"accuracy": 1.0}, "val": {"accuracy": 0.9},
                         "test": {"accuracy": test}, "stl10": {"accuracy": stl}}}
        if published:
            r.update(published=published, published_source="Kumar et al. 2022, Table 1")
        return r

    records = [record("linear_probe", 0.81, 0.71, {"test": 0.8, "stl10": 0.7}),
               record("full_ft", 0.91, 0.61)]
    text = report.markdown(records)
    head, _, first, second = text.split("## Summary")[1].strip().splitlines()[:4]
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols.index("paper test acc") == cols.index("test acc (mean ± sample std)") + 1
    assert cols.index("paper stl10 acc") == cols.index("stl10 acc (mean ± sample std)") + 1
    cells = [c.strip() for c in first.strip("|").split("|")]
    assert cells[cols.index("paper test acc")] == "0.800"
    assert cells[cols.index("paper stl10 acc")] == "0.700"
    assert [c.strip() for c in second.strip("|").split("|")][cols.index("paper test acc")] == "-"
    assert "Kumar et al. 2022, Table 1" in text
    selected = report.summary(records)["selected"]
    assert selected[0]["published"] == {"test": 0.8, "stl10": 0.7}
    assert selected[1]["published"] == {}
    # Without published numbers the table has no paper columns at all.
    assert "paper" not in report.markdown([record("full_ft", 0.9, 0.6)])


def test_published_numbers_filled_in_after_the_runs_show_in_the_rerun_report(
        tmp_path, monkeypatch, capsys):
    # The configs say "fill in before comparing": a rerun that finds every run finished
    # (nothing new recorded) must still put the paper's numbers, the config's now, beside
    # ours; a record's own (stale) numbers give way to them.
    path = tmp_path / "later.py"
    path.write_text("from tljax.config import transfer\n\ndef get_config():\n    return "
                    "transfer(experiment='later', dataset='digits:5-9', "
                    "strategies=['linear_probe'])\n")
    workdir = tmp_path / "w"
    workdir.mkdir()
    done = {"experiment": "later", "strategy": "linear_probe", "seed": 0, "shots": 0,
            "dataset": "digits:5-9", "status": "ok", "sweep_hash": "s", "run_hash": "r",
            "hparams": {}, "trainable_params": 1, "total_params": 2, "shifted": [],
            "published": {"test": 0.99}, "published_source": "stale",
            "metrics": {s: {"accuracy": 0.9} for s in ("train", "val", "test")}}
    (workdir / "results.jsonl").write_text(json.dumps(done) + "\n")
    monkeypatch.setattr(sweep, "run_plan", lambda *args: [])  # every run finished
    assert cli.main(["run", str(path), "--workdir", str(workdir), "--set",
                     "published.linear_probe=0.25", "--set",
                     'published_source="Nobody et al. 2099, Table 9"']) == 0
    out = capsys.readouterr().out
    assert "paper test acc" in out and "Nobody et al. 2099, Table 9" in out
    assert "0.250" in out and "0.990" not in out and "stale" not in out
