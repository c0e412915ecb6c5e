"""Every preset, on ResNet-18 and the CNN: frozen leaves stay bit-identical, trainable ones
move, frozen params hold no optimizer state, and the frozen compute is really skipped."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from tljax import models, optim, strategies, train
from tljax.config import transfer

PRESETS = ["linear_probe", "full_ft", "last_k:1", "last_k:3", "first_k:1", "bitfit",
           "norm_only", "llrd:0.5"]
SURGICAL = {"cnn": "surgical:block1", "resnet18": "surgical:layer2.0+layer3.1"}
IMAGE_SIZE = {"cnn": 16, "resnet18": 32}


def _setup(name, strategy, seed=0):
    model = models.create(name, 5, image_size=IMAGE_SIZE[name])
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(seed)))
    rules = strategies.labels(strategy, variables["params"], model.blocks)
    cfg = transfer(lr=1e-2, weight_decay=1e-2, steps=10)
    tx = optim.make(cfg, rules)
    step = train.make_step(model.module, rules, tx, strategies.frozen_blocks(rules, model.blocks))
    return model, variables, rules, tx, step


def _batch(model, n=8, seed=0):
    rng = np.random.default_rng(seed)
    shape = model.dummy_input(n).shape
    return rng.normal(size=shape).astype(np.float32), rng.integers(0, 5, n)


def _opt_state_param_paths(opt_state, param_paths):
    """Returns the param paths that own an array leaf anywhere in ``opt_state``."""
    owners = set()
    for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for p in param_paths:
            if len(keys) >= len(p) and keys[-len(p):] == p and np.ndim(leaf) >= 0:
                owners.add(p)
    return owners


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
@pytest.mark.parametrize("strategy", PRESETS + ["surgical"])
def test_frozen_leaves_bit_identical_and_trainable_leaves_move(name, strategy):
    strategy = SURGICAL[name] if strategy == "surgical" else strategy
    model, variables, rules, tx, step = _setup(name, strategy)
    before = jax.tree.map(np.array, variables)
    state = train.init_state(jax.tree.map(np.array, variables), tx)
    for i in range(3):
        state, metrics = step(state, *_batch(model, seed=i))
        assert np.isfinite(float(metrics["loss"]))

    flat_rules = traverse_util.flatten_dict(rules)
    before_params = traverse_util.flatten_dict(before["params"])
    after_params = traverse_util.flatten_dict(jax.device_get(state.params))
    frozen = [p for p, r in flat_rules.items() if not r.trainable]
    trained = [p for p, r in flat_rules.items() if r.trainable]
    assert trained, "every preset trains something"
    for p in frozen:
        assert before_params[p].tobytes() == after_params[p].tobytes(), f"frozen {p} moved"
    for p in trained:
        assert not np.array_equal(before_params[p], after_params[p]), f"trainable {p} did not move"

    bs_rules = traverse_util.flatten_dict(
        strategies.batch_stats_rules(rules, before["batch_stats"], model.blocks))
    before_bs = traverse_util.flatten_dict(before["batch_stats"])
    after_bs = traverse_util.flatten_dict(jax.device_get(state.batch_stats))
    for p, r in bs_rules.items():
        if r.trainable:
            assert not np.array_equal(before_bs[p], after_bs[p]), f"running stat {p} not updated"
        else:
            assert before_bs[p].tobytes() == after_bs[p].tobytes(), f"frozen running stat {p} moved"

    owners = _opt_state_param_paths(state.opt_state, list(flat_rules))
    assert owners.isdisjoint(frozen), f"optimizer state for frozen {sorted(owners & set(frozen))[:3]}"
    # Adam keeps exactly two moments per trainable element, plus scalar step counts.
    n_trainable = sum(before_params[p].size for p in trained)
    n_state = sum(int(np.size(x)) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
    assert n_state == 2 * n_trainable


def _step_flops(name, strategy):
    model, variables, rules, tx, step = _setup(name, strategy)
    state = train.init_state(variables, tx)
    cost = step.lower(state, *_batch(model)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"]


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_linear_probe_step_skips_the_backward_pass(name):
    probe, full = _step_flops(name, "linear_probe"), _step_flops(name, "full_ft")
    # The probe's step is a forward pass plus the head's gradient: about a third of the
    # flops of a full fine-tuning step (forward + two backward convolutions per layer).
    assert probe < 0.5 * full, (probe, full)


def test_last_k_costs_between_probe_and_full():
    probe, last, full = (_step_flops("resnet18", s) for s in ("linear_probe", "last_k:2", "full_ft"))
    assert probe < last < full


def test_unmatched_params_are_named():
    model = models.create("cnn", 5)
    params = jax.eval_shape(model.init, jax.random.key(0))["params"]
    with pytest.raises(ValueError, match="unmatched: .*backbone/stem/conv/kernel"):
        strategies.labels([(r"head/.*", "train"), (r"backbone/block.*", "freeze")], params,
                          model.blocks)


def test_unknown_preset_is_named_with_the_known_ones():
    model = models.create("cnn", 5)
    params = jax.eval_shape(model.init, jax.random.key(0))["params"]
    with pytest.raises(ValueError, match="unknown strategy 'bitfti'; known: bitfit, .*full_ft"):
        strategies.labels("bitfti", params, model.blocks)


def test_bad_regex_and_bad_arguments_are_user_errors():
    model = models.create("resnet18", 5)
    params = jax.eval_shape(model.init, jax.random.key(0))["params"]
    with pytest.raises(ValueError, match=r"bad regex '\(head'"):
        strategies.labels([("(head", "train")], params, model.blocks)
    with pytest.raises(ValueError, match="last_k:99 is out of range"):
        strategies.labels("last_k:99", params, model.blocks)
    with pytest.raises(ValueError, match="unknown block 'layer9.0'; known: .*layer1.0"):
        strategies.labels("surgical:layer9.0", params, model.blocks)
    with pytest.raises(ValueError, match="needs an argument: llrd:D"):
        strategies.labels("llrd", params, model.blocks)


def test_llrd_multipliers_decay_from_head_to_stem():
    model = models.create("resnet18", 5)
    params = jax.eval_shape(model.init, jax.random.key(0))["params"]
    rules = traverse_util.flatten_dict(strategies.labels("llrd:0.5", params, model.blocks), sep="/")
    assert rules["head/kernel"].lr_mult == 1.0
    assert rules["backbone/layer4/1/conv2/kernel"].lr_mult == 0.5
    assert rules["backbone/conv1/kernel"].lr_mult == 0.5 ** 9  # stem + 8 blocks below the head


@pytest.mark.parametrize("strategy", ["linear_probe", "bitfit", "norm_only", "last_k:2", "full_ft"])
def test_strategies_run_on_text_token_ids(strategy):
    """The BERT classifier trains on packed token ids with the same presets."""
    model = models.create("bert_minilm_l6", 3)
    model = type(model)(model.name, model.module, model.blocks,
                        type(model.preprocessing)(0, 0, (), (), "text", 16), model.torch_names)
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    rules = strategies.labels(strategy, variables["params"], model.blocks)
    tx = optim.make(transfer(lr=1e-3, steps=5), rules)
    step = train.make_step(model.module, rules, tx, strategies.frozen_blocks(rules, model.blocks))
    rng = np.random.default_rng(0)
    tokens = np.stack([rng.integers(1, 30000, (4, 16)), np.ones((4, 16), int),
                       np.zeros((4, 16), int)], 1).astype(np.int32)
    state = train.init_state(jax.tree.map(np.array, variables), tx)
    for _ in range(2):
        state, _ = step(state, tokens, np.array([0, 1, 2, 0]))
    flat_rules = traverse_util.flatten_dict(rules)
    before = traverse_util.flatten_dict(variables["params"])
    after = traverse_util.flatten_dict(jax.device_get(state.params))
    for p, r in flat_rules.items():
        changed = not np.array_equal(before[p], after[p])
        assert changed == r.trainable, (p, r)
