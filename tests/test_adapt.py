"""Domain adaptation: the objectives against references, the gradient reversal, frozen
params under DANN, a discriminator never exported, and target labels never read."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tljax import adapt, cli, config, data, models
from tljax.report import selection
from tljax.run import inputs as run_inputs
from tljax.run import sweep

TARGET = "digits@photo_blend:5"


def _numpy_coral(source, target) -> float:
    d = source.shape[1]
    cs, ct = np.cov(source, rowvar=False), np.cov(target, rowvar=False)
    return float(np.sum((cs - ct) ** 2) / (4.0 * d * d))


def _numpy_mmd(source, target) -> float:
    x = np.concatenate([source, target]).astype(np.float64)
    n, ns = len(x), len(source)
    dist = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    mean = dist.sum() / (n * n - n)  # the mean over distinct pairs sets the bandwidths
    kernel = sum(np.exp(-dist / (s * mean)) for s in (0.25, 0.5, 1.0, 2.0, 4.0))
    return float(kernel[:ns, :ns].mean() + kernel[ns:, ns:].mean()
                 - 2 * kernel[:ns, ns:].mean())


def test_coral_and_mmd_match_a_float64_numpy_reference():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(12, 5)).astype(np.float32)
    target = (rng.normal(size=(9, 5)) * 1.7 + 0.4).astype(np.float32)
    assert float(adapt.coral_loss(source, target)) == pytest.approx(
        _numpy_coral(source, target), rel=1e-4)
    assert float(adapt.mmd_loss(source, target)) == pytest.approx(
        _numpy_mmd(source, target), rel=1e-4)
    # Both vanish where the domains are the same batch, and grow as the target moves away.
    assert float(adapt.coral_loss(source, source)) == pytest.approx(0, abs=1e-7)
    assert float(adapt.mmd_loss(source, source)) == pytest.approx(0, abs=1e-6)
    assert float(adapt.mmd_loss(source, target + 2)) > float(adapt.mmd_loss(source, target))
    # Features collapsed to one point (dead units) give a finite loss and gradient, not 0/0.
    same = jnp.zeros((4, 5))
    assert float(adapt.mmd_loss(same, same)) == 0.0
    assert np.isfinite(np.asarray(jax.grad(lambda f: adapt.mmd_loss(f, same))(same))).all()


def test_gradient_reversal_flips_and_scales_the_gradient_and_follows_the_paper_schedule():
    x, w = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 1.5, -2.0])
    grad = jax.grad(lambda v: jnp.sum(adapt.reverse_gradient(v, 0.3) * w))(x)
    np.testing.assert_allclose(grad, -0.3 * w, rtol=1e-6)
    assert float(jnp.sum(adapt.reverse_gradient(x, 0.3))) == pytest.approx(2.0)  # identity
    # lambda_p = 2 / (1 + exp(-10 p)) - 1: 0 at the start, rising to ~1 at the end.
    assert float(adapt.dann_lambda(0.0)) == 0.0
    assert float(adapt.dann_lambda(0.5)) == pytest.approx(2 / (1 + np.exp(-5)) - 1)
    assert float(adapt.dann_lambda(1.0)) == pytest.approx(2 / (1 + np.exp(-10)) - 1)


def test_dann_trains_the_discriminator_down_its_loss_and_the_features_up_it():
    rng = np.random.default_rng(1)
    source = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(8, 4)) + 1.0, jnp.float32)
    disc = adapt.Discriminator(6)
    params = disc.init(jax.random.key(0), source)["params"]

    def plain(p, s):  # the domain loss with no reversal
        logits = disc.apply({"params": p}, jnp.concatenate([s, target]))
        labels = jnp.concatenate([jnp.zeros(8), jnp.ones(8)])
        return jnp.mean(jnp.maximum(logits, 0) - logits * labels
                        + jnp.log1p(jnp.exp(-jnp.abs(logits))))

    reversed_p, reversed_s = jax.grad(
        lambda p, s: adapt.dann_loss(disc, p, s, target, 0.7), argnums=(0, 1))(params, source)
    plain_p, plain_s = jax.grad(plain, argnums=(0, 1))(params, source)
    # The discriminator descends the domain loss at full strength; the features get its
    # gradient reversed and scaled by the adaptation factor.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 reversed_p, plain_p)
    np.testing.assert_allclose(reversed_s, -0.7 * plain_s, rtol=1e-5, atol=1e-7)


def _cfg(**overrides):
    cfg = config.transfer(dataset="digits", channels=3, target=TARGET, steps=12, batch_size=16,
                          seeds=[0], strategies=["last_k:1"], log_every=6, lr=1e-3,
                          adapt="dann", adapt_weight=1.0)
    config.apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    return cfg


def _permuting_target_labels(monkeypatch):
    """Makes every load of the target domain give its labels permuted (digit d -> 9 - d)."""
    real = run_inputs.load_dataset

    def load(cfg, spec, *args, **kwargs):
        ds = real(cfg, spec, *args, **kwargs)
        if spec != TARGET:
            return ds
        return data.Dataset(ds.spec, ds.num_classes, ds.class_names,
                            {name: data.Split(s.images, 9 - s.labels)
                             for name, s in ds.splits.items()})

    monkeypatch.setattr(run_inputs, "load_dataset", load)


def test_target_labels_change_nothing_but_the_target_evaluation(tmp_path, monkeypatch):
    (plain,) = sweep.run(_cfg(), str(tmp_path / "plain"), log=lambda msg: None)
    _permuting_target_labels(monkeypatch)
    (permuted,) = sweep.run(_cfg(), str(tmp_path / "permuted"), log=lambda msg: None)
    for r in (plain, permuted):
        assert r["status"] == "ok" and r["adapt"] == "dann" and r["path"] == "adapt"
    # Training and selection read no target label: the same params, bit for bit, and the
    # same source metrics; only the target's own evaluation changes.
    a, b = (ocp.StandardCheckpointer().restore(r["checkpoint"]) for r in (plain, permuted))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert plain["history"] == permuted["history"]
    for split in ("train", "val", "test"):
        assert plain["metrics"][split] == permuted["metrics"][split]
    assert plain["domain_gap"] == permuted["domain_gap"]
    assert plain["metrics"]["target"] != permuted["metrics"]["target"]


def test_dann_keeps_frozen_params_bit_identical_and_never_exports_its_discriminator(tmp_path):
    (record,) = sweep.run(_cfg(), str(tmp_path / "w"), log=lambda msg: None)
    assert record["status"] == "ok" and record["history"][-1]["adapt_loss"] > 0
    saved = ocp.StandardCheckpointer().restore(record["checkpoint"])
    assert set(saved["params"]) == {"backbone", "head"}  # no domain discriminator
    start = models.create("cnn", 10, channels=3).init(jax.random.key(0))  # random init, seed 0
    for name in ("stem", "block1"):  # last_k:1 trains block2 and the head only
        jax.tree.map(np.testing.assert_array_equal, saved["params"]["backbone"][name],
                     start["params"]["backbone"][name])
    assert not np.array_equal(saved["params"]["backbone"]["block2"]["conv"]["kernel"],
                              start["params"]["backbone"]["block2"]["conv"]["kernel"])
    gap = record["domain_gap"]
    assert 0.5 <= gap["before"]["domain_accuracy"] <= 1 and "after" in gap
    # Its curves carry the adaptation term beside the classification loss.
    from tensorboard.backend.event_processing import event_accumulator

    (run_dir,) = [d for d, _, files in os.walk(tmp_path / "w" / "curves") if files]
    acc = event_accumulator.EventAccumulator(run_dir)
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/adapt_loss")] == [6, 12]


def test_selection_reads_the_source_validation_split_and_the_oracle_the_target_s():
    def record(lr, val, target_val):
        return {"strategy": "full_ft", "adapt": "dann", "dataset": "digits", "seed": 0,
                "status": "ok", "sweep_hash": "s", "hparams": {"lr": lr},
                "metrics": {"val": {"accuracy": val}, "target_val": {"accuracy": target_val},
                            "target": {"accuracy": target_val}}}
    records = [record(1e-3, 0.9, 0.2), record(1e-2, 0.8, 0.6)]
    (honest,) = selection.select(records)
    (oracle,) = selection.select(records, split="target_val")
    assert honest.hparams == {"lr": 1e-3} and oracle.hparams == {"lr": 1e-2}
    assert honest.name == "full_ft+dann"
    # The honest choice does not move whatever the target's labels say.
    records[0]["metrics"]["target_val"]["accuracy"] = 0.0
    assert selection.select(records)[0].hparams == {"lr": 1e-3}


@pytest.mark.parametrize("sets, message", [
    (["adapt=dann"], "adapt='dann' needs an unlabelled target domain; set target"),
    (["adapt=coral", f"target={TARGET}", 'strategies=["linear_probe"]'],
     "strategy 'linear_probe' fits a probe on cached features, which adapt='coral' cannot"),
    (["adapt=mmd", f"target={TARGET}", 'strategies=["linear_probe_sgd"]'],
     "strategy 'linear_probe_sgd' trains no backbone param"),
    (["adapt=dnn", f"target={TARGET}"], "unknown adapt 'dnn'; known: none, dann, coral, mmd"),
    (["adapt=dann", "target=digits@nope:3"], "unknown corruption 'nope'"),
    (["adapt=dann", f"target={TARGET}", "accum_steps=2"], "runs with accum_steps=1"),
    ([f"target={TARGET}", 'shifted={"target": "digits"}'], "shifted split name 'target'"),
    (["adapt=coral", f"target={TARGET}", "batch_size=1"], "needs batch_size >= 2; got 1"),
])
def test_bad_adaptation_settings_exit_2_with_one_line(sets, message, capsys, tmp_path):
    config_file = tmp_path / "adapt.py"
    config_file.write_text("from tljax.config import transfer\n\ndef get_config():\n    return "
                           "transfer(dataset='digits', channels=3, strategies=['full_ft'])\n")
    assert cli.main(["run", str(config_file), "--dry-run", "--set", *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_list_describes_every_adaptation_objective(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in adapt.OBJECTIVES:
        assert any(line.split()[:1] == [name] and len(line.split()) > 3
                   for line in out.splitlines()), name


def test_the_report_puts_the_oracle_choice_beside_the_honest_one_never_in_its_place(tmp_path):
    from tljax import report

    def record(lr, seed, val, target_val, target):
        return {"experiment": "x", "strategy": "full_ft", "adapt": "dann", "target": TARGET,
                "dataset": "digits", "seed": seed, "status": "ok", "sweep_hash": "s",
                "hparams": {"lr": lr}, "shifted": ["target"], "trainable_params": 1,
                "total_params": 1,
                "domain_gap": {"before": {"domain_accuracy": 0.9, "proxy_a_distance": 1.6},
                               "after": {"domain_accuracy": 0.7, "proxy_a_distance": 0.8}},
                "metrics": {"val": {"accuracy": val}, "test": {"accuracy": 0.95},
                            "target_val": {"accuracy": target_val},
                            "target": {"accuracy": target}}}
    records = [record(1e-3, 0, 0.9, 0.2, 0.25), record(1e-3, 1, 0.9, 0.2, 0.35),
               record(1e-2, 0, 0.8, 0.6, 0.65)]
    text = report.markdown(records)
    section = text.split("## Domain adaptation")[1].split("##")[0]
    row = next(line for line in section.splitlines() if line.startswith("| full_ft+dann"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Honest: lr=0.001 (source val), target 0.300 over its 2 seeds; the oracle's lr=0.01.
    assert cells[3] == "lr=0.001" and cells[6] == "0.300 ± 0.071" and cells[8] == "lr=0.01"
    assert cells[9] == "1" and cells[10].startswith("0.650")  # the oracle's point: 1 seed
    assert cells[-3:] == ["0.900", "0.700", "0.800"]
    # The summary's target column is the honest choice's.
    summary = text.split("## Summary")[1].split("##")[0]
    assert "0.300 ± 0.071" in summary and "0.650" not in summary
    paths = report.write_plots(records, str(tmp_path))
    assert str(tmp_path / "target_vs_source.png") in paths


def test_lp_ft_adapts_after_its_probe_and_bitfit_adapts_its_biases(tmp_path):
    cfg = _cfg(strategies=["lp_ft", "bitfit"], adapt="coral")
    lp_ft, bitfit = sweep.run(cfg, str(tmp_path / "w"), log=lambda msg: None)
    assert lp_ft["path"] == "probe+adapt" and lp_ft["probe"]["l2"] > 0  # the probe came first
    assert bitfit["path"] == "adapt" and bitfit["trainable_params"] < bitfit["total_params"]
    for r in (lp_ft, bitfit):
        assert r["status"] == "ok" and r["adapt"] == "coral"
        assert all("adapt_loss" in h for h in r["history"])


def test_a_target_smaller_than_a_batch_is_a_user_error_before_anything_trains(tmp_path):
    from tljax.errors import UserError

    with pytest.raises(UserError, match="target 'digits:0-1@photo_blend:5' has 252 training "
                                        "examples, fewer than batch_size 256"):
        sweep.run(_cfg(dataset="digits:0-1", target="digits:0-1@photo_blend:5",
                       batch_size=256), str(tmp_path / "w"), log=lambda msg: None)
    assert not (tmp_path / "w" / "results.jsonl").exists()


def test_a_sweep_over_adapt_alone_is_one_sweep():
    from tljax.run import identity, plan

    cfg = _cfg(sweep={"adapt": ["none", "dann", "coral"]})
    points = plan.grid_points(cfg)
    hashes = set()
    for p in points:
        settings = identity.run_settings(p.cfg.to_dict(), p.strategy, p.path, "w")
        hashes.add(identity.sweep_hash(settings, p.strategy, p.hparams))
    assert len(points) == 3 and len(hashes) == 1
