"""Paired comparisons: per-seed differences of two methods at their selected points, their
t interval, sign count and paired bootstrap; the ``compare`` config key (report only) and
``tljax report --compare``."""

import json
import math
import sys

import numpy as np
import pytest

from tljax import cli, config, report
from tljax.errors import UserError
from tljax.report import paired, stats
from tljax.run import identity, settings, sweep

T_975_2DF = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2), as a table gives it
N = 400  # test examples


def _bits(accuracy: float, rng, n: int = N) -> np.ndarray:
    """Returns ``n`` correctness bits with exactly ``round(accuracy * n)`` right, shuffled."""
    right = np.arange(n) < round(accuracy * n)
    return rng.permutation(right)


def _record(strategy, seed, test_bits, val=0.5, shifted=None, experiment="exp",
            dataset="digits:5-9", shots=0, adapt=None, compare=None, bits=True):
    """A status-ok record whose accuracies are its correctness bits' means; ``shifted``:
    split name -> bits (``target`` and ``target_val`` as a domain-adaptation run has)."""
    splits = {"test": np.asarray(test_bits), **{k: np.asarray(v) for k, v in
                                                  (shifted or {}).items()}}
    metrics = {"train": {"accuracy": 1.0}, "val": {"accuracy": val}}
    metrics.update({name: {"accuracy": float(b.mean())} for name, b in splits.items()})
    r = {"experiment": experiment, "model": "cnn", "dataset": dataset, "strategy": strategy,
         "seed": seed, "shots": shots, "status": "ok", "sweep_hash": "cfg-" + strategy,
         "hparams": {}, "trainable_params": 1, "total_params": 2, "metrics": metrics,
         "shifted": [n for n in splits if n not in ("test", "target_val")]}
    if bits:
        r["correct"] = {name: stats.encode_correct(b) for name, b in splits.items()}
    if adapt:
        r["adapt"] = adapt
    if compare is not None:
        r["compare"] = compare
    return r


def _pair(a_tests, b_tests, seeds=None, b_seeds=None, **kwargs):
    """Records of full_ft (test accuracies ``a_tests``) and linear_probe (``b_tests``)."""
    rng = np.random.default_rng(0)
    seeds = list(seeds or range(len(a_tests)))
    b_seeds = list(b_seeds or seeds)
    return ([_record("full_ft", s, _bits(t, rng), **kwargs) for s, t in zip(seeds, a_tests)]
            + [_record("linear_probe", s, _bits(t, rng), **kwargs)
               for s, t in zip(b_seeds, b_tests)])


def _rows(records, a="full_ft", b="linear_probe"):
    return paired.compare(report.select(records), a, b)


# -- the statistics ------------------------------------------------------------------------

def test_per_seed_differences_mean_std_and_t_interval_match_a_hand_computation():
    a = [0.80, 0.85, 0.90, 0.70]  # seed 3 only full_ft has: not compared
    b = [0.75, 0.85, 0.82]
    [row] = _rows(_pair(a, b, seeds=[0, 1, 2, 3], b_seeds=[0, 1, 2]))
    assert (row.a, row.b, row.split, row.seeds) == ("full_ft", "linear_probe", "test", [0, 1, 2])
    diffs = [0.80 - 0.75, 0.85 - 0.85, 0.90 - 0.82]
    assert row.diffs == pytest.approx(diffs, abs=1e-12)
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)  # sample std, ddof=1
    half = T_975_2DF * std / math.sqrt(3)
    assert row.mean == pytest.approx(mean) and row.std == pytest.approx(std)
    assert row.ci95 == pytest.approx((mean - half, mean + half))
    assert row.a_mean == pytest.approx(0.85) and row.b_mean == pytest.approx(2.42 / 3)
    # Sign count: ahead on seeds 0 and 2, tied on seed 1 (the same count of examples).
    assert (row.ahead, row.behind, row.ties, row.n) == (2, 0, 1, 3)


def test_every_shifted_and_target_split_both_have_is_compared_never_a_validation_split():
    rng = np.random.default_rng(1)
    records = []
    for strategy, acc in (("full_ft", 0.9), ("linear_probe", 0.8)):
        for s in (0, 1):
            shifted = {"noise": _bits(acc - 0.2, rng), "target": _bits(acc - 0.3, rng),
                       "target_val": _bits(acc - 0.3, rng)}
            if strategy == "full_ft":
                shifted["blur"] = _bits(0.5, rng)  # linear_probe lacks it: not compared
            records.append(_record(strategy, s, _bits(acc, rng), shifted=shifted))
    rows = _rows(records)
    assert [r.split for r in rows] == ["test", "noise", "target"]
    assert all(r.mean == pytest.approx(0.1) and r.n == 2 for r in rows)


def test_paired_bootstrap_is_deterministic_contains_the_mean_and_narrows_with_agreement():
    rng = np.random.default_rng(2)
    seeds = 3
    a = [_bits(0.8, rng) for _ in range(seeds)]
    unrelated = [_bits(0.7, rng) for _ in range(seeds)]  # B right on other examples
    agreeing = []  # B = A but wrong on 40 of A's right examples: the same 0.1 behind
    for bits in a:
        b = bits.copy()
        b[rng.choice(np.flatnonzero(bits), 40, replace=False)] = False
        agreeing.append(b)
    wide = paired.paired_bootstrap_ci95(a, unrelated)
    narrow = paired.paired_bootstrap_ci95(a, agreeing)
    assert paired.paired_bootstrap_ci95(a, unrelated) == wide  # seeded: same every call
    for ci, b in ((wide, unrelated), (narrow, agreeing)):
        observed = np.mean([x.mean() - y.mean() for x, y in zip(a, b)])
        assert ci[0] < observed < ci[1]
    assert narrow[1] - narrow[0] < 0.6 * (wide[1] - wide[0])
    # By hand: agreeing, each example's difference averaged over seeds is 0, 1/3, 2/3 or 1;
    # its spread over 400 examples bounds the interval's width.
    d = np.mean(np.array(a, float) - np.array(agreeing, float), axis=0)
    assert narrow[1] - narrow[0] == pytest.approx(2 * 1.96 * d.std() / math.sqrt(N), rel=0.2)
    assert paired.paired_bootstrap_ci95(a, agreeing[:2]) is None  # seed counts differ
    assert paired.paired_bootstrap_ci95(a, [b[:10] for b in agreeing]) is None  # sizes differ
    assert paired.paired_bootstrap_ci95([], []) is None


def test_the_rows_bootstrap_is_none_when_a_seed_lacks_its_bits():
    records = _pair([0.8, 0.9], [0.7, 0.8])
    [row] = _rows(records)
    assert row.bootstrap_ci95 is not None
    assert row.bootstrap_ci95[0] < row.mean < row.bootstrap_ci95[1]
    del records[-1]["correct"]
    assert _rows(records)[0].bootstrap_ci95 is None
    assert _rows(records)[0].ci95 == row.ci95  # the t interval needs no bits


# -- verdicts and tables -------------------------------------------------------------------

def test_verdict_names_the_leader_only_when_the_interval_excludes_zero():
    [ahead] = _rows(_pair([0.80, 0.85, 0.90], [0.70, 0.76, 0.79]))
    lo, hi = ahead.ci95
    assert lo > 0
    assert paired.verdict(ahead) == (f"full_ft ahead of linear_probe on test: "
                                     f"{ahead.mean:+.3f} [{lo:.3f}, {hi:.3f}], 3/3 seeds")
    [behind] = _rows(_pair([0.80, 0.85, 0.90], [0.70, 0.76, 0.79]), "linear_probe", "full_ft")
    assert paired.verdict(behind).startswith(f"full_ft ahead of linear_probe on test: "
                                             f"{ahead.mean:+.3f} [{lo:.3f}, {hi:.3f}]")
    [mixed] = _rows(_pair([0.80, 0.70, 0.90], [0.75, 0.80, 0.85]))
    assert mixed.ci95[0] < 0 < mixed.ci95[1]
    assert "no difference shown (interval includes 0)" in paired.verdict(mixed)
    assert "ahead of" not in paired.verdict(mixed)
    [single] = _rows(_pair([0.9], [0.7]))
    assert single.ci95 is None and "interval is undefined" in paired.verdict(single)
    text = paired.table([ahead, mixed, single])
    assert "| full_ft | linear_probe | digits:5-9 | all | test | 0, 1, 2 |" in text
    assert "| full_ft ahead |" in text and "| no difference shown |" in text
    assert "| 1/1 | undefined (< 2 seeds) |" in text


def test_unknown_methods_and_pairs_without_common_ground_are_user_errors():
    selections = report.select(_pair([0.8, 0.9], [0.7, 0.8]))
    with pytest.raises(UserError, match=r"unknown method to compare 'full_fx'; "
                                        r"known: full_ft, linear_probe"):
        paired.compare(selections, "full_fx", "linear_probe")
    with pytest.raises(UserError, match="two different methods"):
        paired.compare(selections, "full_ft", "full_ft")
    elsewhere = report.select(_pair([0.8], [0.7], dataset="digits:0-4")[:1]
                              + _pair([0.8], [0.7])[1:])
    with pytest.raises(UserError, match=r"share no dataset and shots .*known methods: "
                                        r"full_ft, linear_probe"):
        paired.compare(elsewhere, "full_ft", "linear_probe")
    # Adapted methods are named as the summary names them.
    adapted = _pair([0.8, 0.9], [0.7, 0.8])
    for r in adapted[:2]:
        r["adapt"] = "dann"
    assert _rows(adapted, "full_ft+dann", "linear_probe")[0].a == "full_ft+dann"


# -- the report, the config key and the command --------------------------------------------

def test_the_records_compare_pairs_reach_the_markdown_and_report_json(tmp_path):
    records = _pair([0.80, 0.85, 0.90], [0.70, 0.76, 0.79],
                    compare=[["full_ft", "linear_probe"], ["full_ft", "bitfit"]])
    text = report.write(records, str(tmp_path))
    head = "## Paired comparisons (per-seed differences, selected points)"
    assert head in text and text.index("## Summary") < text.index(head) < text.index("## Runs")
    assert "- full_ft ahead of linear_probe on test: +0.100" in text
    # A pair the records name but no run matches is a note: the runs are done already.
    assert "- full_ft vs bitfit: not compared: unknown method to compare 'bitfit'" in text
    [entry] = json.loads((tmp_path / "report.json").read_text())["paired"]
    assert entry["a"] == "full_ft" and entry["seeds"] == [0, 1, 2] and entry["n"] == 3
    assert entry["mean"] == pytest.approx(0.1) and len(entry["ci95"]) == 2
    assert entry["verdict"].startswith("full_ft ahead of linear_probe")
    assert "Paired comparisons" not in report.markdown(_pair([0.8], [0.7]))


def test_compare_is_report_only_and_its_shape_is_checked():
    cfg = config.transfer(model="cnn", dataset="digits:5-9")

    def hashes(cfg):
        s = identity.run_settings(cfg.to_dict(), "full_ft", "network", "")
        return (identity.run_hash(s, "full_ft", 0), identity.sweep_hash(s, "full_ft", []),
                identity.settings_hash(s, []))

    before = hashes(cfg)
    config.apply_overrides(cfg, ['compare=[["full_ft", "linear_probe"]]'])
    assert cfg.compare == [["full_ft", "linear_probe"]] and hashes(cfg) == before
    assert settings.compare_pairs(cfg) == {"compare": [["full_ft", "linear_probe"]]}
    assert settings.compare_pairs(config.transfer()) == {}
    settings.check_compare(cfg)
    for bad in ([["full_ft"]], ["full_ft"], [["full_ft", "full_ft"]], [["full_ft", 3]]):
        cfg.compare = bad
        with pytest.raises(UserError, match="not a pair of two different method names"):
            settings.check_compare(cfg)
    [row] = [r for r in config.describe_keys(config.transfer()) if r[0] == "compare"]
    assert row[2] == "[]" and "report only" in row[3]


def _config_file(tmp_path, strategies="['linear_probe']") -> str:
    path = tmp_path / "later.py"
    path.write_text("from tljax.config import transfer\n\ndef get_config():\n    return "
                    f"transfer(experiment='exp', model='cnn', dataset='digits:5-9', "
                    f"strategies={strategies})\n")
    return str(path)


def test_a_bad_compare_shape_stops_the_plan_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(["run", _config_file(tmp_path), "--dry-run",
                           "--set", 'compare=[["full_ft"]]']))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "tljax: error: compare entry ['full_ft'] is not a pair of two different method names; "
        "give [[A, B], ...], e.g. [['full_ft', 'linear_probe']]"]


def test_pairs_named_after_the_runs_finished_show_in_the_rerun_report(
        tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "w"
    workdir.mkdir()
    records = _pair([0.80, 0.85, 0.90], [0.70, 0.76, 0.79], compare=[["full_ft", "bitfit"]])
    (workdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr(sweep, "run_plan", lambda *args: [])  # every run finished
    assert cli.main(["run", _config_file(tmp_path), "--workdir", str(workdir), "--set",
                     'compare=[["full_ft", "linear_probe"]]']) == 0
    out = capsys.readouterr().out
    assert "- full_ft ahead of linear_probe on test" in out and "bitfit" not in out


def _workdir(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    records = _pair([0.80, 0.85, 0.90], [0.70, 0.76, 0.79])
    (workdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(workdir)


def test_report_compare_prints_the_paired_table(tmp_path, capsys):
    workdir, out = _workdir(tmp_path), tmp_path / "summary.json"
    assert cli.main(["report", workdir, "--compare", "linear_probe", "full_ft",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# exp\n") and "## Paired comparisons" in text
    assert "| linear_probe | full_ft | digits:5-9 | all | test | 0, 1, 2 |" in text
    assert "| full_ft ahead |" in text
    assert [e["a"] for e in json.loads(out.read_text())["paired"]] == ["linear_probe"]


def test_report_compare_with_a_bad_name_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.main(["report", _workdir(tmp_path), "--compare", "full_ft", "lp"]))
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and "Traceback" not in captured.err
    assert captured.err.strip().splitlines() == [
        "tljax: error: unknown method to compare 'lp'; known: full_ft, linear_probe"]
    assert captured.out == ""  # nothing printed that looks like a report


def test_verdicts_name_the_dataset_when_the_report_covers_several():
    """Over several datasets a bare 'A ahead of B on test' would not say where."""
    rng = np.random.default_rng(0)
    records = [_record(strategy, seed, _bits(acc + 0.01 * seed, rng), dataset=dataset)
               for dataset, first in (("digits@invert:5", 0.9), ("digits@gaussian_blur:5", 0.5))
               for seed in range(3) for strategy, acc in (("first", first), ("middle", 0.7))]
    text = paired.section(*paired.compare_all(report.select(records), [("first", "middle")]))
    assert "first ahead of middle on test of digits@invert:5" in text
    assert "middle ahead of first on test of digits@gaussian_blur:5" in text


def test_a_baseline_run_in_one_experiment_serves_the_others_and_verdicts_name_them():
    """Yosinski's base (N = 0) runs once, in :AnB; :BnB's curves are compared with it too,
    and a verdict says which experiment's transfer_n:1 it speaks of."""
    rng = np.random.default_rng(0)
    records = [_record("transfer_n:0", s, _bits(0.80, rng), experiment="AnB") for s in range(3)]
    for experiment, acc in (("AnB", 0.90), ("BnB", 0.60)):
        records += [_record("transfer_n:1", s, _bits(acc + 0.01 * s, rng), experiment=experiment)
                    for s in range(3)]
    for r in records:
        r["sweep_hash"] = "cfg-" + r["experiment"]
    rows = paired.compare(report.select(records), "transfer_n:1", "transfer_n:0")
    assert sorted(row.a_experiment for row in rows) == ["AnB", "BnB"]
    text = paired.section(rows, [])
    assert "transfer_n:1 (AnB) ahead of transfer_n:0 (AnB)" in text
    assert "transfer_n:0 (AnB) ahead of transfer_n:1 (BnB)" in text
