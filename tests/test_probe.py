"""Linear probes on cached features: solvers agree with references, the cache is real."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from tljax import models, probe
from tljax.data import k_shot_indices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digit_features():
    d = load_digits()
    x = d.data.astype(np.float32)
    mean, std = probe.standardizer(x)
    return (x - mean) / std, d.target


@pytest.mark.parametrize("l2", [1e-1, 1e-2, 1e-3])
def test_lbfgs_agrees_with_sklearn_logistic_regression(digit_features, l2):
    x, y = digit_features
    params, _, converged = probe.fit_logistic(x, y, 10, l2, max_iter=2000, tol=1e-6)
    assert converged
    # sklearn minimises C * sum(CE) + ||W||^2 / 2: the same problem at C = 1 / (l2 * n).
    ref = LogisticRegression(C=1.0 / (l2 * len(x)), solver="lbfgs", tol=1e-10,
                             max_iter=20000).fit(x, y)
    theirs = {"kernel": ref.coef_.T.astype(np.float32), "bias": ref.intercept_.astype(np.float32)}
    ours_obj = float(probe.logistic_objective(params, x, y, l2))
    theirs_obj = float(probe.logistic_objective(theirs, x, y, l2))
    assert abs(ours_obj - theirs_obj) <= 1e-4 * theirs_obj
    np.testing.assert_array_equal((x @ params["kernel"] + params["bias"]).argmax(1),
                                  ref.predict(x))


def test_ridge_sweep_equals_the_direct_solution(digit_features):
    x, y = digit_features
    xt, yt, xv, yv = x[:1000], y[:1000], x[1000:], y[1000:]
    for l2 in (1e-3, 1.0):
        w, b, chosen, sweep = probe.sweep_ridge((xt, yt), (xv, yv), 10, grid=(l2,))
        t = 2.0 * np.eye(10)[yt] - 1.0
        xc, tc = xt - xt.mean(0), t - t.mean(0)
        want = np.linalg.solve(xc.T @ xc + l2 * len(xt) * np.eye(xt.shape[1]), xc.T @ tc)
        np.testing.assert_allclose(w, want, rtol=1e-3, atol=1e-5)
        assert chosen == l2 and len(sweep) == 1


def _raw_digits():
    """Returns raw (unstandardised, shifted and scaled) digit features and labels."""
    d = load_digits()
    return d.data.astype(np.float32) * 3 + 1, d.target


def test_sweep_picks_l2_on_validation():
    x, y = _raw_digits()
    result = probe.fit_probe((x[:1000], y[:1000]), (x[1000:1400], y[1000:1400]), 10)
    best = max(r["val_accuracy"] for r in result.sweep)
    chosen = next(r for r in result.sweep if r["l2"] == result.l2)
    assert chosen["val_accuracy"] == best
    assert [r["l2"] for r in result.sweep] == sorted(probe.L2_GRID)
    assert np.mean(result.logits(x[1400:]).argmax(1) == y[1400:]) > 0.85  # chance: 0.1


@pytest.mark.parametrize("solver", ["ridge", "lbfgs"])
def test_folded_head_on_raw_features_equals_the_unfolded_head_on_standardised_ones(solver):
    """fit_probe fits on standardised features and folds the standardisation into the head;
    that head on raw features gives the logits of the unfolded head on standardised ones."""
    x, y = _raw_digits()
    grid = (1e-4, 1e-2)
    train, val, test = (x[:1000], y[:1000]), (x[1000:1400], y[1000:1400]), x[1400:]
    folded = probe.fit_probe(train, val, 10, solver, grid=grid)
    mean, std = probe.standardizer(train[0])
    assert np.ptp(mean) > 1 and np.ptp(std) > 1  # a fold that drops either one shows
    standardise = lambda a: (a - mean) / std  # noqa: E731
    sweep = {"ridge": probe.sweep_ridge, "lbfgs": probe.sweep_logistic}[solver]
    kernel, bias, l2, _ = sweep((standardise(train[0]), train[1]), (standardise(val[0]), val[1]),
                                10, grid=grid)
    assert l2 == folded.l2
    unfolded = standardise(test).astype(np.float64) @ kernel + bias
    np.testing.assert_allclose(folded.logits(test.astype(np.float64)), unfolded, rtol=1e-5,
                               atol=1e-5)


def test_adam_head_learns(digit_features):
    x, y = digit_features
    result = probe.fit_probe((x[:1000], y[:1000]), (x[1000:1400], y[1000:1400]), 10, "adam")
    assert np.mean(result.logits(x[1400:]).argmax(1) == y[1400:]) > 0.85  # chance: 0.1


def test_features_are_cached_and_invalidated_by_weights_and_preprocessing(tmp_path, monkeypatch):
    model = models.create("cnn", 3)
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    inputs = np.random.default_rng(0).normal(size=(10, 16, 16, 1)).astype(np.float32)
    first, hit = probe.extract_features(model.module, variables, inputs, 4, str(tmp_path), "k")
    assert not hit and first.shape == (10, 128)

    calls = []
    real_forward = probe.forward_features
    monkeypatch.setattr(probe, "forward_features",
                        lambda *a: calls.append(1) or real_forward(*a))
    again, hit = probe.extract_features(model.module, variables, inputs, 4, str(tmp_path), "k")
    assert hit and not calls  # the second run did no forward pass
    np.testing.assert_array_equal(again, first)

    changed = jax.tree.map(np.copy, variables)
    changed["params"]["backbone"]["block2"]["bn"]["bias"] += 0.5
    _, hit = probe.extract_features(model.module, changed, inputs, 4, str(tmp_path), "k")
    assert not hit and len(calls) == 1  # new weights: a new forward pass

    _, hit = probe.extract_features(model.module, variables, inputs * 0.5, 4, str(tmp_path), "k")
    assert not hit and len(calls) == 2  # new preprocessing (other model inputs): again

    changed_head = jax.tree.map(np.copy, variables)
    changed_head["params"]["head"]["bias"] += 1.0
    _, hit = probe.extract_features(model.module, changed_head, inputs, 4, str(tmp_path), "k")
    assert hit and len(calls) == 2  # the head does not change backbone features


def test_k_shot_indices_take_k_per_class_and_depend_on_the_seed():
    labels = np.repeat(np.arange(4), 20)
    a = k_shot_indices(labels, 5, seed=0)
    assert len(a) == 20 and all(np.sum(labels[a] == c) == 5 for c in range(4))
    np.testing.assert_array_equal(a, k_shot_indices(labels, 5, seed=0))
    assert not np.array_equal(a, k_shot_indices(labels, 5, seed=1))
    with pytest.raises(ValueError, match="25-shot needs 25 examples of class 0"):
        k_shot_indices(labels, 25, seed=0)


def _probe_record(workdir, env) -> dict:
    """Runs a one-seed linear probe of a random-init cnn on digits in a fresh process;
    returns its record's probe field."""
    argv = [sys.executable, "-m", "tljax.cli", "run",
            os.path.join(ROOT, "experiments", "lp_vs_ft_self_pretrained.py"),
            "--workdir", str(workdir), "--set", "seeds=[0]", 'strategies=["linear_probe"]',
            'pretrain.dataset=""', "eval_batch_size=128"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(workdir, "results.jsonl")) as f:
        (record,) = [json.loads(line) for line in f]
    return record


def test_the_probe_head_is_bit_identical_with_a_cold_and_a_warm_compilation_cache(tmp_path):
    """The same features give the same head whatever the compilation cache holds: the
    first process compiles everything into an empty cache, the second reads it back (and
    extracts the features again through the cached program: no feature cache)."""
    env = dict(os.environ, TLJAX_COMPILATION_CACHE=str(tmp_path / "xla"),
               TLJAX_CACHE_MIN_COMPILE_SECS="0", TLJAX_FEATURE_CACHE="")
    cold = _probe_record(tmp_path / "cold", env)
    assert os.listdir(tmp_path / "xla"), "the first run cached no program: nothing is warm"
    warm = _probe_record(tmp_path / "warm", env)
    assert cold["probe"]["solver"] == "lbfgs"
    assert warm["probe"]["head_sha256"] == cold["probe"]["head_sha256"]
    assert warm["probe"]["sweep"] == cold["probe"]["sweep"]
    assert warm["metrics"] == cold["metrics"]
    assert cold["probe"]["converged"]


def test_non_finite_training_features_fail_instead_of_giving_a_zero_head():
    """scipy returns its start point when the objective is NaN: that zero head must not be
    recorded as a fitted probe."""
    x, y = _raw_digits()
    bad = x[:200].copy()
    bad[3, 5] = np.nan
    with pytest.raises(FloatingPointError, match="not all finite"):
        probe.fit_probe((bad, y[:200]), (x[200:300], y[200:300]), 10, standardize=False)
