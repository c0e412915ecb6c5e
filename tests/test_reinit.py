"""The ``reinit`` rule and the transfer_n / transfer_n+ presets (Yosinski et al. 2014)."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from tljax import checkpoint, cli, models, strategies
from tljax.run import identity
from tljax.errors import UserError

CONFIG = '''
from tljax.config import transfer

def get_config():
    c = transfer(experiment="reinit", model="cnn", dataset="digits:5-9", weights="{weights}")
    c.strategies = ["transfer_n:2"]
    c.seeds = [3]
    c.steps = 1
    c.batch_size = 16
    c.lr = 0.0  # no update at all: what the run saves is what it started from
    c.bn_mode = "eval"  # running statistics are read, never updated
    return c
'''


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _source_weights(model, path):
    """Writes a 'pretrained' cnn unlike any fresh init (BatchNorm statistics included)."""
    variables = jax.device_get(model.init(jax.random.key(123)))
    stats = {p: np.full(np.shape(v), 0.5 if p.endswith("mean") else 2.0, np.float32)
             for p, v in _flat(variables["batch_stats"]).items()}
    params = jax.tree.map(lambda v: v + 0.25, variables["params"])  # BatchNorm's 0s and 1s too
    variables = {"params": params,
                 "batch_stats": traverse_util.unflatten_dict(stats, sep="/")}
    return checkpoint.save_variables(path, variables), variables


def test_reinit_params_match_a_fresh_init_at_the_run_seed_and_copied_ones_the_weights(
        tmp_path):
    model = models.create("cnn", 5)
    path, source = _source_weights(model, tmp_path / "source")
    config_file = tmp_path / "reinit.py"
    config_file.write_text(CONFIG.format(weights=path))
    workdir = tmp_path / "w"
    assert cli.main(["run", str(config_file), "--workdir", str(workdir)]) == 0
    record = json.loads((workdir / "results.jsonl").read_text().splitlines()[0])
    assert record["status"] == "ok" and record["strategy"] == "transfer_n:2"
    saved = ocp.StandardCheckpointer().restore(record["checkpoint"])
    fresh = jax.device_get(model.init(jax.random.key(3)))  # the run's seed
    for collection in ("params", "batch_stats"):
        got, want_fresh, loaded = (_flat(t[collection]) for t in (saved, fresh, source))
        for p, value in got.items():
            if p.startswith("head/"):
                continue
            if p.split("/")[1] in ("stem", "block1"):  # copied, frozen: the weights
                np.testing.assert_array_equal(value, loaded[p], err_msg=p)
            else:  # block2: re-initialised exactly as a fresh init at seed 3
                np.testing.assert_array_equal(value, want_fresh[p], err_msg=p)
                assert not np.array_equal(value, loaded[p]), p
    # The record says what was re-initialised and what trained.
    assert record["frozen_blocks"] == list(model.block_names)  # bn_mode=eval
    sizes = {p: int(np.size(v)) for p, v in _flat(fresh["params"]).items()}
    assert record["reinit_params"] == sum(v for p, v in sizes.items()
                                          if p.split("/")[1] == "block2")
    assert record["trainable_params"] == sum(v for p, v in sizes.items()
                                             if p.split("/")[1] not in ("stem", "block1"))


@pytest.mark.parametrize("spec, copied", [("transfer_n:2", "freeze"), ("transfer_n+:2", "train")])
def test_transfer_n_copies_the_first_n_blocks_and_reinitialises_the_rest(spec, copied):
    model = models.create("cnn", 5)
    shapes = jax.eval_shape(model.init, jax.random.key(0))["params"]
    rules = _flat(strategies.labels(spec, shapes, model.blocks))
    for path, rule in rules.items():
        block = strategies.block_of(path, model.blocks)
        if block in ("stem", "block1"):  # the first two backbone blocks: copied
            assert rule == strategies.parse_rule(copied) and not rule.reinit, path
        elif block == "block2":
            assert rule.reinit and rule.trainable, path
        else:
            assert block == "head" and rule.trainable and not rule.reinit, path
    frozen = strategies.frozen_blocks(traverse_util.unflatten_dict(rules, sep="/"),
                                      model.blocks)
    assert frozen == (("stem", "block1") if copied == "freeze" else ())


def test_transfer_n_range_and_listing():
    blocks = models.create("cnn", 5).blocks
    with pytest.raises(UserError, match=r"transfer_n:4 is out of range; valid: 0 <= K <= 3"):
        strategies.expand("transfer_n:4", blocks)
    with pytest.raises(UserError, match="transfer_n\\+ needs an integer"):
        strategies.expand("transfer_n+:x", blocks)
    assert {"transfer_n:N", "transfer_n+:N"} <= set(strategies.describe())
    assert strategies.parse_rule("reinit") == strategies.REINIT


def test_reinit_rules_change_the_run_hash():
    cfg = {"model": "cnn", "rules": {"mine": [["backbone/.*", "train"], ["head/.*", "train"]]}}
    other = {"model": "cnn", "rules": {"mine": [["backbone/.*", "reinit"], ["head/.*", "train"]]}}
    hashes = {identity.run_hash(identity.run_settings(c, "mine", "network", "w"), "mine", 0)
              for c in (cfg, other)}
    settings = identity.run_settings(cfg, "transfer_n:1", "network", "w")
    hashes |= {identity.run_hash(settings, s, 0) for s in ("transfer_n:1", "transfer_n+:1")}
    assert len(hashes) == 4


def test_l2sp_decays_reinit_params_toward_zero_not_toward_their_random_init():
    # L2-SP (Li et al. 2018) pulls toward the *pretrained* values; a re-initialised param
    # has none, so it takes the beta (plain L2) term as the new head does.
    from tljax import optim

    params = {"backbone": {"copied": np.full(2, 3.0), "fresh": np.full(2, 3.0)},
              "head": {"kernel": np.full(2, 3.0)}}
    rules = {"backbone": {"copied": strategies.TRAIN, "fresh": strategies.REINIT},
             "head": {"kernel": strategies.TRAIN}}
    tx = optim.l2sp(alpha=0.5, beta=0.1, rules=rules)
    state = tx.init(params)
    moved = jax.tree.map(lambda p: p + 1.0, params)  # one step away from the start
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, state, moved)
    np.testing.assert_allclose(updates["backbone"]["copied"], 0.5 * 1.0)  # alpha (w - w0)
    np.testing.assert_allclose(updates["backbone"]["fresh"], 0.1 * 4.0)  # beta w
    np.testing.assert_allclose(updates["head"]["kernel"], 0.1 * 4.0)


def test_reinit_without_a_source_model_is_one_line(tmp_path, capsys):
    config_file = tmp_path / "reinit.py"
    config_file.write_text(CONFIG.format(weights=""))
    assert cli.main(["run", str(config_file), "--workdir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.strip() == (
        "tljax: error: strategy 'transfer_n:2' re-initialises params of a source model, but "
        "there is none (weights and pretrain.dataset are both empty: random init); set one")
    assert not (tmp_path / "w" / "results.jsonl").exists()
