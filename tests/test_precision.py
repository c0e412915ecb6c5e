"""``matmul_precision``: every jitted function of a run is traced at it, it is in the
record and in the run's identity (the default, full float32, keeps the identity runs had
before the key existed)."""

import json
import os

import jax
import numpy as np

from tljax import cli, config, probe
from tljax.run import identity

CONFIG = '''
from tljax.config import transfer

def get_config():
    return transfer(experiment="precision", model="cnn", dataset="digits:5-9",
                    strategies=["linear_probe"], seeds=[0], probe_solver="ridge")
'''


def test_list_keys_names_the_precision_and_its_values(capsys):
    assert cli.main(["list", "keys"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "matmul_precision" in l)
    assert "highest | tf32 | default" in line


def test_the_default_keeps_the_identity_and_any_other_value_changes_it():
    cfg = config.transfer(model="cnn", dataset="digits:5-9").to_dict()
    before = {k: v for k, v in cfg.items() if k != "matmul_precision"}  # runs recorded earlier

    def run_hash(d):
        return identity.run_hash(identity.run_settings(d, "full_ft", "network", ""), "full_ft", 0)

    assert cfg["matmul_precision"] == "highest"
    assert run_hash(cfg) == run_hash(before)
    assert len({run_hash(cfg), run_hash({**cfg, "matmul_precision": "tf32"}),
                run_hash({**cfg, "matmul_precision": "default"})}) == 3


def test_a_run_traces_at_its_precision_and_records_it(tmp_path, monkeypatch):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG)
    seen = []
    extract = probe.extract_features

    def spy(*args, **kwargs):  # the probe's features go through a jitted forward pass
        seen.append(jax.config.jax_default_matmul_precision)
        return extract(*args, **kwargs)

    monkeypatch.setattr(probe, "extract_features", spy)
    assert cli.main(["run", str(path), "--workdir", str(tmp_path / "w"), "--set",
                     "matmul_precision=tf32"]) == 0
    assert seen and set(seen) == {"tensorfloat32"}
    [record] = [json.loads(line) for line in open(os.path.join(tmp_path, "w", "results.jsonl"))]
    assert record["matmul_precision"] == "tf32"
    # Outside the run, the process's own setting is back.
    assert jax.config.jax_default_matmul_precision is None


def test_features_cached_at_one_precision_are_not_read_at_another(tmp_path):
    from tljax import models

    model = models.create("cnn", 5)
    variables = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype(np.float32)
    cache = str(tmp_path / "features")

    def hit(precision):
        with jax.default_matmul_precision(precision):
            return probe.extract_features(model.module, variables, x, 8, cache, key="k")[1]

    assert [hit("highest"), hit("highest")] == [False, True]
    assert [hit("tensorfloat32"), hit("tensorfloat32"), hit("highest")] == [False, True, True]


def test_the_source_model_trains_at_the_run_s_precision_and_is_keyed_by_it(tmp_path,
                                                                             monkeypatch):
    # A self-pretrained source is part of the run: it trains at the run's precision, and a
    # source trained at tf32 is never reused by a run at highest (nor the other way).
    from tljax import train
    from tljax.run import source_model

    cfg = config.transfer(model="cnn", dataset="digits:5-9")
    cfg.pretrain.dataset, cfg.pretrain.steps = "digits:0-4", 2
    cfg.matmul_precision = "tf32"
    seen = []
    fit = train.fit

    def spy(*args, **kwargs):
        seen.append(jax.config.jax_default_matmul_precision)
        return fit(*args, **kwargs)

    monkeypatch.setattr(train, "fit", spy)
    path = source_model.source_model(cfg, str(tmp_path), log=lambda message: None)
    assert seen == ["tensorfloat32"] and os.path.isdir(path)
    assert jax.config.jax_default_matmul_precision is None
    highest = config.transfer(model="cnn", dataset="digits:5-9")
    highest.pretrain.dataset, highest.pretrain.steps = "digits:0-4", 2
    assert source_model.source_key(highest) != os.path.basename(path)
