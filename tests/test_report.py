"""Report: selection on validation only, spread over seeds and test examples, tables, plots,
torn result files and the ``tljax report`` command."""

import copy
import json
import math
import os

import numpy as np
import pytest

from tljax import cli, report
from tljax.errors import UserError
from tljax.report import selection, stats, tables

RNG = np.random.default_rng(0)


def _record(strategy="full_ft", seed=0, hparams=None, val=0.5, test=0.5, sweep_hash="cfgA",
            shots=0, shifted=None, correct=None, status="ok", probe=None, experiment="exp",
            dataset="digits:5-9", trainable=100, total=1000, val_loss=None):
    metrics = {"train": {"accuracy": 1.0, "macro_f1": 1.0, "loss": 0.1},
               "val": {"accuracy": val, "macro_f1": val,
                       "loss": 1.0 - val if val_loss is None else val_loss},
               "test": {"accuracy": test, "macro_f1": test, "loss": 1.0 - test}}
    for name, acc in (shifted or {}).items():
        metrics[name] = {"accuracy": acc, "macro_f1": acc, "loss": 1.0 - acc}
    r = {"experiment": experiment, "model": "cnn", "weights": "", "dataset": dataset,
         "strategy": strategy, "seed": seed, "trainable_params": trainable,
         "total_params": total, "shots": shots, "status": status, "train_seconds": 2.0,
         "metrics": metrics if status == "ok" else {}, "config_hash": "c-" + sweep_hash,
         "sweep_hash": sweep_hash, "hparams": hparams or {}, "shifted": list(shifted or {})}
    if correct is not None:
        r["correct"] = {split: stats.encode_correct(bits) for split, bits in correct.items()}
    if probe is not None:
        r["probe"] = probe
    return r


def _grid(vals, tests, seeds=(0, 1), strategy="full_ft"):
    """Records of a learning-rate grid: point i has val ``vals[i]`` and test ``tests[i]``."""
    lrs = [1e-4, 1e-3, 1e-2, 1e-1][:len(vals)]
    return [_record(strategy, s, {"lr": lr}, val=v + 0.01 * s, test=t,
                    shifted={"noise": t - 0.2},
                    correct={"test": RNG.random(50) < t, "noise": RNG.random(50) < t - 0.2})
            for lr, v, t in zip(lrs, vals, tests) for s in seeds]


# -- selection -----------------------------------------------------------------------------

def test_selection_is_unchanged_by_any_perturbation_of_test_or_shifted_results():
    records = _grid([0.70, 0.90, 0.80], [0.95, 0.60, 0.99])
    before = selection.select(records)
    rng = np.random.default_rng(1)
    for _ in range(20):
        perturbed = copy.deepcopy(records)
        for r in perturbed:
            for split in ("test", "noise"):
                r["metrics"][split] = {k: float(rng.choice([rng.random(), math.nan, -5.0]))
                                       for k in ("accuracy", "macro_f1", "loss")}
                r["correct"][split] = stats.encode_correct(rng.random(50) < rng.random())
        after = selection.select(perturbed)
        assert [(s.hparams, s.val_mean, s.grid) for s in after] == \
            [(s.hparams, s.val_mean, s.grid) for s in before]
    assert before[0].hparams == {"lr": 1e-3}


class _NoTestDict(dict):
    """A metrics dict that fails the test as soon as a test or shifted split is read."""

    def _check(self, key):
        assert key in ("train", "val"), f"selection read {key!r}"

    def __getitem__(self, key):
        self._check(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._check(key)
        return super().get(key, default)


def test_selection_never_reads_test_shifted_or_correctness_fields():
    records = _grid([0.70, 0.90], [0.95, 0.60])
    for r in records:
        r["metrics"] = _NoTestDict(r["metrics"])
        del r["correct"]  # a read would raise KeyError
    for metric in ("accuracy", "macro_f1", "loss"):
        assert selection.select(records, metric)[0].hparams == {"lr": 1e-3}


def test_best_validation_point_wins_over_best_test_point():
    records = _grid([0.90, 0.80], [0.50, 0.99])
    [chosen] = selection.select(records)
    assert chosen.hparams == {"lr": 1e-4}
    assert chosen.seeds == [0, 1]
    assert chosen.val_mean == pytest.approx(0.905)
    assert [g["hparams"] for g in chosen.grid] == [{"lr": 1e-4}, {"lr": 1e-3}]
    assert report.summary(records)["selected"][0]["test"] == pytest.approx(0.50)


def test_extra_seeds_at_the_selected_point_cannot_flip_the_choice():
    # Seed 0 everywhere: lr=1e-3 wins (0.80 > 0.70). Seeds 1, 2 then run only there and
    # are worse; a mean over each point's own seeds would flip the choice to lr=1e-4.
    records = [_record(seed=0, hparams={"lr": 1e-4}, val=0.70),
               _record(seed=0, hparams={"lr": 1e-3}, val=0.80),
               _record(seed=1, hparams={"lr": 1e-3}, val=0.50),
               _record(seed=2, hparams={"lr": 1e-3}, val=0.50)]
    [chosen] = selection.select(records)
    assert chosen.hparams == {"lr": 1e-3}
    assert chosen.compared_seeds == [0] and chosen.val_mean == pytest.approx(0.80)
    assert chosen.seeds == [0, 1, 2]  # the report averages test over all of them
    assert [g["seeds"] for g in chosen.grid] == [[0], [0, 1, 2]]


def test_points_with_no_common_seed_are_compared_on_their_own_seeds():
    records = [_record(seed=0, hparams={"lr": 1e-4}, val=0.70),
               _record(seed=1, hparams={"lr": 1e-3}, val=0.60),
               _record(seed=2, hparams={"lr": 1e-3}, val=0.90)]
    [chosen] = selection.select(records)
    assert chosen.hparams == {"lr": 1e-3} and chosen.val_mean == pytest.approx(0.75)


def test_a_tie_on_validation_accuracy_goes_to_the_lower_validation_loss_not_grid_order():
    records = [_record(hparams={"lr": 1e-2}, val=0.8, val_loss=0.3),
               _record(hparams={"lr": 1e-3}, val=0.8, val_loss=0.2),
               _record(hparams={"lr": 1e-4}, val=0.7, val_loss=0.1)]
    [chosen] = selection.select(records)
    assert chosen.hparams == {"lr": 1e-3}
    assert chosen.tie_broken_by_loss and chosen.margin == 0.0
    assert selection.select(records, "loss")[0].hparams == {"lr": 1e-4}
    # Means equal up to summation order are a tie too: (0.1 + 0.7) and (0.7 + 0.1) over seeds.
    seeds = [_record(seed=s, hparams={"lr": 1e-2}, val=v, val_loss=0.3)
             for s, v in enumerate((0.1, 0.2, 0.7))]
    seeds += [_record(seed=s, hparams={"lr": 1e-3}, val=v, val_loss=0.2)
              for s, v in enumerate((0.7, 0.2, 0.1))]
    assert selection.select(seeds)[0].hparams == {"lr": 1e-3}


def test_a_tie_the_loss_did_not_break_is_not_said_to_be_broken_by_it():
    equal = [_record(hparams={"lr": lr}, val=0.8, val_loss=0.2) for lr in (1e-2, 1e-3)]
    [chosen] = selection.select(equal)
    assert chosen.hparams == {"lr": 1e-2} and chosen.margin == 0.0  # grid order decided
    assert not chosen.tie_broken_by_loss
    assert "0 (tie; grid order)" in tables.summary_table(tables.summary_rows([chosen]))
    [by_loss] = selection.select(equal, "loss")
    assert not by_loss.tie_broken_by_loss


def test_the_grid_end_counts_points_that_failed_on_every_seed():
    records = [_record(hparams={"lr": 1e-3}, val=0.7), _record(hparams={"lr": 1e-2}, val=0.9),
               _record(hparams={"lr": 1e-1}, status="failed")]
    assert selection.select(records)[0].edge == []  # 1e-1 was tried: 1e-2 is inside the grid


def test_the_json_summary_carries_the_selection_margin_and_grid_end():
    records = [_record(hparams={"lr": 1e-3}, val=0.8), _record(hparams={"lr": 1e-2}, val=0.9)]
    [row] = report.summary(records)["selected"]
    assert row["select_margin"] == pytest.approx(0.1)
    assert row["grid_edge"] == ["lr"] and row["tie_broken_by_loss"] is False


def test_selection_margin_is_the_lead_over_the_runner_up_in_validation_examples():
    val_bits = {"val": np.ones(200, bool)}  # the validation split has 200 examples
    records = [_record(seed=s, hparams={"lr": lr}, val=v, correct=val_bits)
               for s in (0, 1) for lr, v in ((1e-4, 0.80), (1e-3, 0.815), (1e-2, 0.75))]
    [chosen] = selection.select(records)
    assert chosen.hparams == {"lr": 1e-3} and not chosen.tie_broken_by_loss
    assert chosen.margin == pytest.approx(0.015)
    assert chosen.margin_examples == pytest.approx(3.0)  # 1.5 points of 200 images
    assert chosen.edge == []
    row = tables.summary_rows([chosen])[0]
    assert "+3.0" in tables.summary_table([row])


def test_a_point_chosen_at_the_end_of_its_grid_is_flagged():
    records = [_record(hparams={"lr": lr, "alpha": a}, val=v)
               for lr, a, v in ((1e-3, 0.1, 0.7), (1e-2, 0.1, 0.9), (1e-3, 1.0, 0.6))]
    [chosen] = selection.select(records)
    assert chosen.edge == ["lr", "alpha"]
    assert selection.select([records[0]])[0].edge == []  # one point: no grid, no edge
    md = report.markdown(records)
    assert "grid end" in md and "lr" in md


def test_non_finite_and_failed_points_are_never_selected():
    records = [_record(hparams={"lr": 1.0}, val=math.nan),
               _record(hparams={"lr": 0.5}, val=0.99, status="failed"),
               _record(hparams={"lr": 1e-3}, val=0.30)]
    [chosen] = selection.select(records)
    assert chosen.hparams == {"lr": 1e-3}
    assert [g["hparams"] for g in chosen.grid] == [{"lr": 1.0}, {"lr": 1e-3}]
    assert selection.select([_record(val=math.inf)]) == []
    only_nan = [_record(hparams={"lr": 1.0}, val=math.nan)]
    assert selection.select(only_nan) == []
    assert "no grid point has a finite validation metric" in report.markdown(only_nan)


def test_unknown_selection_metric_names_the_valid_ones():
    with pytest.raises(UserError, match="unknown selection metric 'top5'; known: "
                                        "accuracy, loss, macro_f1"):
        selection.select([_record()], "top5")


def test_configs_with_different_hashes_are_never_averaged():
    # Two configs in one workdir, same strategy and seed: two groups, seed 0 counted once
    # in each (the old report averaged them into one row of two "seeds").
    records = [_record(seed=0, sweep_hash="cfgA", test=0.9),
               _record(seed=0, sweep_hash="cfgB", test=0.5)]
    chosen = selection.select(records)
    assert [(s.sweep_hash, s.seeds) for s in chosen] == [("cfgA", [0]), ("cfgB", [0])]
    text = report.markdown(records)
    assert text.count("| full_ft | 1 | 0 |") == 2 and "| full_ft | 2 |" not in text
    # Older records carry only config_hash; it separates them the same way.
    for r in records:
        del r["sweep_hash"]
    assert len(selection.select(records)) == 2


def test_records_without_hparams_are_one_point_per_strategy():
    records = [_record("linear_probe", s, val=0.6) for s in (0, 1)] + \
              [_record("full_ft", s, val=0.9) for s in (0, 1)]
    chosen = selection.select(records)
    assert [(s.strategy, s.hparams, s.seeds, len(s.grid)) for s in chosen] == \
        [("linear_probe", {}, [0, 1], 1), ("full_ft", {}, [0, 1], 1)]
    assert "## Grid" not in report.markdown(records)


def test_a_seed_repeated_in_merged_workdirs_counts_once():
    records = [_record(seed=0, test=0.2), _record(seed=0, test=0.8), _record(seed=1, test=0.6)]
    [chosen] = selection.select(records)
    assert chosen.seeds == [0, 1]
    assert report.summary(records)["selected"][0]["test"] == pytest.approx(0.7)
    assert "1 repeated run(s)" in report.markdown(records)


# -- statistics ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_correctness_bits_round_trip(n):
    bits = np.random.default_rng(n).random(n) < 0.5
    field = stats.encode_correct(bits)
    assert field["n"] == n and len(field["bits"]) == 2 * ((n + 7) // 8)
    json.dumps(field)
    np.testing.assert_array_equal(stats.decode_correct(field), bits)


def test_truncated_correctness_bits_are_an_error():
    with pytest.raises(ValueError, match="hold 8 examples, not 9"):
        stats.decode_correct({"n": 9, "bits": "ff"})


def test_t_interval_over_seeds_uses_the_sample_std():
    lo, hi = stats.t_ci95([0.8, 0.9, 1.0])
    # mean 0.9, sample std 0.1, t(0.975, 2 dof) = 4.302653
    assert (lo, hi) == pytest.approx((0.9 - 0.248414, 0.9 + 0.248414), abs=1e-5)
    assert stats.t_ci95([0.9]) is None
    assert stats.mean_std([0.8, 0.9, 1.0])[1] == pytest.approx(0.1)


def test_bootstrap_interval_over_test_examples():
    correct = np.arange(1000) % 5 != 0  # accuracy 0.8
    lo, hi = stats.bootstrap_ci95([correct])
    # Normal approximation: 0.8 ± 1.96 * sqrt(0.8 * 0.2 / 1000) = ± 0.0248.
    assert lo < 0.8 < hi and (hi - lo) / 2 == pytest.approx(0.0248, rel=0.15)
    assert stats.bootstrap_ci95([correct]) == (lo, hi)  # fixed seed
    # Averaged over seeds: two seeds at 0.8 and 0.6 give an interval around 0.7.
    other = np.arange(1000) % 5 >= 2
    lo2, hi2 = stats.bootstrap_ci95([correct, other])
    assert lo2 < 0.7 < hi2 and hi2 - lo2 < 0.06
    assert stats.bootstrap_ci95([correct, correct[:10]]) is None
    assert stats.bootstrap_ci95([]) is None


# -- tables and JSON -----------------------------------------------------------------------

def test_summary_reports_seeds_sample_std_intervals_and_the_experiment_title():
    tests = [0.80, 0.90, 1.00]
    records = [_record(seed=s, test=t, shifted={"noise": t - 0.3},
                       correct={"test": np.arange(200) < 200 * t})
               for s, t in zip((3, 5, 7), tests)]
    records.append(_record("linear_probe", 0, test=0.7))
    text = report.markdown(records)
    assert text.startswith("# exp\n")
    assert "test acc (mean ± sample std)" in text and "noise acc" in text
    assert "| full_ft | 3 | 3, 5, 7 |" in text
    assert "0.900 ± 0.100" in text and "[0.652, 1.148]" in text
    assert "| linear_probe | 1 | 0 |" in text and "0.700 ± n/a | n/a | - |" in text
    [full, probe] = report.summary(records)["selected"]
    assert full["seeds"] == [3, 5, 7] and full["test_std"] == pytest.approx(0.1)
    assert full["shifted"] == {"noise": pytest.approx(0.6)}
    # Shifted accuracy has its spread over seeds too (as the test column does).
    assert full["shifted_std"] == {"noise": pytest.approx(0.1)}
    assert "noise acc (mean ± sample std)" in text and "| 0.600 ± 0.100 |" in text
    assert full["trainable_fraction"] == pytest.approx(0.1)
    lo, hi = full["test_bootstrap_ci95"]
    assert lo < 0.9 < hi
    assert probe["test_std"] is None and probe["test_bootstrap_ci95"] is None


def test_json_summary_has_the_documented_fields_and_is_strict_json():
    records = _grid([0.7, 0.9], [0.8, 0.6]) + [_record("bitfit", 0, val=math.nan)]
    out = report.summary(records)
    text = json.dumps(out)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert out["runs"] == 5
    [entry] = out["selected"]
    for key in ("strategy", "dataset", "shots", "hparams", "val", "test", "test_std", "seeds",
                "shifted", "test_ci95", "test_bootstrap_ci95", "trainable_fraction"):
        assert key in entry, key
    assert entry["hparams"] == {"lr": 1e-3} and entry["shifted"].keys() == {"noise"}


def test_grid_table_marks_the_selected_point():
    text = report.markdown(_grid([0.7, 0.9, 0.8], [0.9, 0.6, 0.99]))
    grid = text.split("## Grid")[1].split("## Runs")[0]
    rows = [line for line in grid.splitlines() if line.startswith("| full_ft")]
    assert len(rows) == 3
    assert rows[1].startswith("| full_ft | digits:5-9 | all | lr=0.001 | 0, 1 | 0.905 (0, 1) |")
    assert rows[1].endswith("| yes |") and not rows[0].endswith("| yes |")


def test_probe_runs_say_whether_features_came_from_the_cache():
    probe = lambda hit: {"extract_seconds": 4.0, "solve_seconds": 0.5, "feature_cache_hit": hit}
    records = [_record("linear_probe", 0, probe=probe(False)),
               _record("linear_probe", 1, probe=probe(True)), _record("full_ft", 0)]
    text = report.markdown(records)
    assert "| features |" in text and "cached 1/2 |" in text
    runs = text.split("## Runs")[1]
    assert "| 4.0 | 0.5 | extracted |" in runs and "| 4.0 | 0.5 | cached |" in runs
    assert "| full_ft | 0 |" in runs and "| - | - | - | ok |" in runs


# -- reading results -----------------------------------------------------------------------

def _write_lines(workdir, lines):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.jsonl"), "w") as f:
        f.write("".join(lines))
    return os.path.join(workdir, "results.jsonl")


def test_torn_lines_are_skipped_with_a_warning_naming_file_and_line(tmp_path, capsys):
    first, second, third = (json.dumps(_record(seed=s)) for s in (0, 1, 2))
    # Line 2: a run killed mid-write; line 3: the next run appended right after the torn
    # text, so its whole record shares the line; line 4: garbage.
    path = _write_lines(tmp_path / "w", [first + "\n", second[:40] + "\n",
                                         third[:25] + second + "\n", "not json\n", "\n"])
    records = report.read_results(path)
    assert [r["seed"] for r in records] == [0, 1]
    err = capsys.readouterr().err
    assert f"{path}:2: not a JSON record" in err and f"{path}:4: not a JSON record" in err
    assert f"{path}:3: torn record before a whole one" in err
    assert cli.main(["report", str(tmp_path / "w")]) == 0
    assert "| full_ft | 2 | 0, 1 |" in capsys.readouterr().out


# -- the command and the files it writes ---------------------------------------------------

def _bad_report(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        import sys

        sys.exit(cli.main(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_report_of_a_missing_or_empty_workdir_exits_2_with_one_line(tmp_path, capsys):
    assert "no such workdir" in _bad_report(["report", str(tmp_path / "nope")], capsys)
    (tmp_path / "empty").mkdir()
    assert "no results.jsonl in" in _bad_report(["report", str(tmp_path / "empty")], capsys)
    _write_lines(tmp_path / "blank", ["\n"])
    assert "no result records" in _bad_report(["report", str(tmp_path / "blank")], capsys)
    _write_lines(tmp_path / "ok", [json.dumps(_record()) + "\n"])
    err = _bad_report(["report", str(tmp_path / "ok"), "--select-metric", "top5"], capsys)
    assert "unknown selection metric 'top5'; known: accuracy, loss, macro_f1" in err


def _png_ok(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, image.shape
    assert image[..., :3].std() > 0.05  # something is drawn


def test_report_merges_workdirs_and_writes_json_and_plots(tmp_path, capsys):
    a = [r | {"experiment": "sweep"} for r in _grid([0.7, 0.9, 0.8], [0.9, 0.6, 0.99])]
    b = [_record("linear_probe", s, val=0.6, test=0.7, trainable=10, shots=k,
                 shifted={"noise": 0.4}, experiment="sweep") for s in (0, 1) for k in (0, 5)]
    _write_lines(tmp_path / "a", [json.dumps(r) + "\n" for r in a])
    _write_lines(tmp_path / "b", [json.dumps(r) + "\n" for r in b])
    out = tmp_path / "summary.json"
    assert cli.main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(out),
                     "--plots", str(tmp_path / "plots")]) == 0
    assert capsys.readouterr().out.startswith("# sweep\n")
    summary = json.loads(out.read_text())
    assert summary["runs"] == 10
    assert [(s["strategy"], s["shots"]) for s in summary["selected"]] == \
        [("full_ft", 0), ("linear_probe", 0), ("linear_probe", 5)]
    names = sorted(os.listdir(tmp_path / "plots"))
    assert names == ["accuracy_vs_shots.png", "accuracy_vs_trainable.png",
                     "shifted_accuracy.png", "val_vs_lr.png"]
    for name in names:
        _png_ok(tmp_path / "plots" / name)


def test_write_puts_tables_json_and_only_plots_with_data_in_the_workdir(tmp_path):
    records = [_record(s_name, s, test=0.8, trainable=t)
               for s_name, t in (("linear_probe", 10), ("full_ft", 1000)) for s in (0, 1)]
    records.append(_record("bitfit", 0, status="failed"))
    text = report.write(records, str(tmp_path))
    assert (tmp_path / "results.md").read_text() == text and text.startswith("# exp\n")
    assert "1 run(s) failed" in text
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[0].startswith("experiment,config,strategy")
    assert json.loads((tmp_path / "report.json").read_text())["runs"] == 5
    assert os.listdir(tmp_path / "plots") == ["accuracy_vs_trainable.png"]  # no shifts, lr, shots
    _png_ok(tmp_path / "plots" / "accuracy_vs_trainable.png")
    assert report.write(records, str(tmp_path), title="named").startswith("# named\n")


def test_a_point_that_diverged_on_a_seed_is_passed_over_for_a_stable_one():
    def rec(lr, seed, val, status="ok"):
        return {"strategy": "full_ft", "dataset": "d", "shots": 0, "sweep_hash": "s",
                "seed": seed, "hparams": {"lr": lr}, "status": status,
                "metrics": {"val": {"accuracy": val}} if status == "ok" else {}}

    records = [rec(0.1, 0, 0.95), rec(0.1, 1, 0, "failed"), rec(0.01, 0, 0.90),
               rec(0.01, 1, 0.89)]
    (chosen,) = selection.select(records)
    assert chosen.hparams == {"lr": 0.01}
    # When every point failed somewhere, the best surviving mean still wins.
    (chosen,) = selection.select(records + [rec(0.01, 2, 0, "failed")])
    assert chosen.hparams == {"lr": 0.1}


def test_by_dataset_table_puts_strategies_side_by_side_and_names_the_best():
    from tljax.report import tables

    def row(strategy, dataset, val, test):
        return {"strategy": strategy, "dataset": dataset, "shots": 10, "val": val,
                "test": test, "test_std": 0.01}

    rows = [row("first", "noise", 0.8, 0.7), row("last", "noise", 0.6, 0.75),
            row("first", "perm", 0.2, 0.1), row("last", "perm", 0.9, 0.95)]
    lines = tables.by_dataset_table(rows).splitlines()
    assert lines[0] == "| dataset | shots | first | last | best on val | best on test |"
    assert lines[2] == "| noise | 10 | 0.700 ± 0.010 | 0.750 ± 0.010 | first | last |"
    assert lines[3] == "| perm | 10 | 0.100 ± 0.010 | 0.950 ± 0.010 | last | last |"
    assert tables.by_dataset_table(rows[:2]) is None  # one dataset: the summary says it all
    assert tables.by_dataset_table(rows + [row("first", "perm", 0.3, 0.2)]) is None


def test_transfer_curves_of_two_configs_under_one_experiment_name_stay_apart():
    """Two configs named AnB in one workdir (say, two learning rates): each is a curve of
    its own, told apart by its settings hash, never one curve zigzagging between them."""
    from tljax.report import tables, transfer

    records = []
    for config, accuracy in (("aaaaaa11", 0.9), ("bbbbbb22", 0.5)):
        for n in (1, 2):
            r = _record(strategy=f"transfer_n:{n}", sweep_hash=f"{config}-{n}",
                        test=accuracy - n / 100, experiment="AnB")
            r["settings_hash"] = config
            records.append(r)
    rows = tables.summary_rows(selection.select(records))
    lines = transfer.transfer_lines(rows)
    assert sorted(lines) == [("digits:5-9", "AnB [aaaaaa]"), ("digits:5-9", "AnB [bbbbbb]")]
    assert [(n, r["test"]) for n, r in lines[("digits:5-9", "AnB [aaaaaa]")]] == [
        (1, 0.89), (2, 0.88)]
    assert [(n, r["test"]) for n, r in lines[("digits:5-9", "AnB [bbbbbb]")]] == [
        (1, 0.49), (2, 0.48)]
    table = transfer.transfer_table(rows)
    assert "| N | AnB [aaaaaa] | AnB [bbbbbb] |" in table
    # One config per experiment name keeps the plain label.
    one = [r for r in records if r["settings_hash"] == "aaaaaa11"]
    assert sorted(transfer.transfer_lines(tables.summary_rows(selection.select(one)))) == [
        ("digits:5-9", "AnB")]
