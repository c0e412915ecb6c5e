"""Freezing, checked on every registered model: frozen leaves stay bit-identical, trainable
ones move, frozen blocks' BatchNorm statistics stay put, frozen params hold no optimizer
state, the frozen compute is really skipped, and the block tables that name blocks cover
every param. Every preset runs on ResNet-18 and the CNN; one mixed strategy on every model."""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from tljax import models, optim, strategies, train
from tljax.config import transfer
from tljax.errors import UserError

PRESETS = ["linear_probe", "full_ft", "last_k:1", "last_k:3", "first_k:1", "bitfit",
           "norm_only", "llrd:0.5"]
SURGICAL = {"cnn": "surgical:block1", "resnet18": "surgical:layer2.0+layer3.1"}
# Small inputs keep a real step on every model cheap (32 px unless named here).
IMAGE_SIZE = {"cnn": 16}
TOKENS = 8


def _small(name) -> models.Model:
    """Returns ``name`` with 5 classes at a small input size (32 px, 16 for the CNN, or
    8 tokens for text)."""
    model = models.create(name, 5)
    if model.preprocessing.kind == "text":
        prep = dataclasses.replace(model.preprocessing, max_tokens=TOKENS)
        return dataclasses.replace(model, preprocessing=prep)
    return models.create(name, 5, image_size=IMAGE_SIZE.get(name, 32))


@functools.lru_cache(maxsize=None)
def _shapes(name) -> dict:
    """Returns the variable shapes of ``_small(name)`` (traced once per model)."""
    model = _small(name)
    return dict(jax.eval_shape(model.init, jax.random.key(0)))


def _random_variables(model, seed=0) -> dict:
    """Returns variables shaped like ``model.init``'s, drawn with numpy: kernels with std
    1/sqrt(fan-in), small biases, unit scales and BatchNorm variances, zero means.

    ``model.init`` runs op by op (or compiles the forward pass) and costs seconds per
    model; nothing checked here depends on how the values were drawn.
    """
    rng = np.random.default_rng(seed)

    def draw(path, s):
        leaf = path[-1].key
        if leaf in ("scale", "var"):
            return np.ones(s.shape, s.dtype)
        if leaf == "mean":
            return np.zeros(s.shape, s.dtype)
        std = 0.01 if len(s.shape) < 2 else 1.0 / np.sqrt(np.prod(s.shape[:-1]))
        return (std * rng.standard_normal(s.shape, np.float32)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(draw, _shapes(model.name))


def _setup(name, strategy, seed=0):
    model = _small(name)
    variables = _random_variables(model, seed)
    rules = strategies.labels(strategy, variables["params"], model.blocks)
    cfg = transfer(lr=1e-2, weight_decay=1e-2, steps=10)
    tx = optim.make(cfg, rules)
    step = train.make_step(model.module, rules, tx, strategies.frozen_blocks(rules, model.blocks))
    return model, variables, rules, tx, step


def _batch(model, n=8, seed=0):
    rng = np.random.default_rng(seed)
    if model.preprocessing.kind == "text":  # packed (ids, mask, token types)
        ids = rng.integers(1, 30000, (n, TOKENS))
        tokens = np.stack([ids, np.ones_like(ids), np.zeros_like(ids)], 1).astype(np.int32)
        return tokens, rng.integers(0, 5, n)
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
    _check_freezing(name, SURGICAL[name] if strategy == "surgical" else strategy, steps=3)


def _middle_block(name) -> str:
    body = [b for b in _small(name).block_names if b != "head"]
    return body[len(body) // 2]


@pytest.mark.parametrize("name", models.names())
def test_every_model_freezes_blocks_before_and_after_a_trained_one(name):
    """One middle block and the head train; the blocks on both sides are frozen, so
    gradients pass through frozen blocks (and their BatchNorm) in the backward pass."""
    _check_freezing(name, f"surgical:{_middle_block(name)}", steps=2, batch=4, mixed=True)


def _check_freezing(name, strategy, steps, batch=8, mixed=False):
    """Runs ``steps`` train steps and checks params, running statistics and optimizer state."""
    model, variables, rules, tx, step = _setup(name, strategy)
    before = jax.tree.map(np.array, variables)
    state = train.init_state(jax.tree.map(np.array, variables), tx)
    for i in range(steps):
        state, metrics = step(state, *_batch(model, batch, seed=i))
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
        strategies.batch_stats_rules(rules, before.get("batch_stats", {}), model.blocks))
    if bs_rules and mixed:  # BatchNorm in frozen and in trained blocks: both checks bite
        assert {r.trainable for r in bs_rules.values()} == {True, False}, bs_rules
    before_bs = traverse_util.flatten_dict(before.get("batch_stats", {}))
    after_bs = traverse_util.flatten_dict(jax.device_get(state.batch_stats) or {})
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


def _bn_modes(model, frozen_blocks) -> dict:
    """Returns ``{BatchNorm module path: trains?}`` as a train step builds the model with
    ``frozen_blocks``; traced with ``jax.eval_shape`` only, so it costs no compute."""
    modes = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            modes["/".join(context.module.path)] = not context.module.use_running_average
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _apply_shapes(model, frozen_blocks)
    return modes


def _apply_shapes(model, frozen_blocks):
    """Returns the shapes of a train-mode forward pass with ``frozen_blocks`` (traced only)."""
    return jax.eval_shape(
        lambda v, x: model.module.apply(v, x, train=True, frozen_blocks=frozen_blocks,
                                        mutable=["batch_stats"]),
        _shapes(model.name), model.dummy_input(2))


@pytest.mark.parametrize("name", models.names())
def test_batchnorm_freezing_follows_the_block_table(name):
    """The BatchNorm layers a model runs on running statistics are exactly those whose
    statistics the strategies assign to frozen blocks (every other block frozen, then the
    others), so the modules and the block regexes agree on what a block holds."""
    model = _small(name)
    shapes = _shapes(name)
    stats = traverse_util.flatten_dict(shapes.get("batch_stats", {}), sep="/")
    body = [b for b in model.block_names if b != "head"]
    for frozen in (body[::2], body[1::2]):
        train_patterns = [(pattern, "train") for b, pattern in model.blocks if b not in frozen]
        rules = strategies.labels(train_patterns + [(r".*", "freeze")], shapes["params"],
                                  model.blocks)
        assert strategies.frozen_blocks(rules, model.blocks) == tuple(frozen)
        bs_rules = traverse_util.flatten_dict(
            strategies.batch_stats_rules(rules, shapes.get("batch_stats", {}), model.blocks),
            sep="/")
        modes = _bn_modes(model, frozen)
        assert set(modes) == {p.rsplit("/", 1)[0] for p in stats}
        for path, rule in bs_rules.items():
            assert modes[path.rsplit("/", 1)[0]] == rule.trainable, (frozen, path)
    # bn_mode "eval" passes every block name, the head's included: no BatchNorm trains.
    assert not any(_bn_modes(model, model.block_names).values())


@pytest.mark.parametrize("name", models.names())
def test_block_tables_name_blocks_that_own_params(name):
    """Every block's regex matches a param, every param and running statistic lies in
    exactly one block, and a model rejects a block name its table does not declare."""
    model = _small(name)
    names = model.block_names
    assert len(set(names)) == len(names) and names[-1] == "head"
    shapes = _shapes(name)
    params = traverse_util.flatten_dict(shapes["params"], sep="/")
    for block, pattern in model.blocks:
        assert any(re.fullmatch(pattern, p) for p in params), f"block {block} owns no param"
    leaves = list(params) + list(traverse_util.flatten_dict(shapes.get("batch_stats", {}), sep="/"))
    for p in leaves:
        owners = [b for b, pattern in model.blocks if re.fullmatch(pattern, p)]
        assert len(owners) == 1, (p, owners)
    with pytest.raises(UserError, match=f"unknown block 'nope'; known: .*{re.escape(names[0])}"):
        _apply_shapes(model, ("nope",))


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
    model, variables, rules, tx, step = _setup("bert_minilm_l6", strategy)
    state = train.init_state(jax.tree.map(np.array, variables), tx)
    for i in range(2):
        state, _ = step(state, *_batch(model, 4, seed=i))
    flat_rules = traverse_util.flatten_dict(rules)
    before = traverse_util.flatten_dict(variables["params"])
    after = traverse_util.flatten_dict(jax.device_get(state.params))
    for p, r in flat_rules.items():
        changed = not np.array_equal(before[p], after[p])
        assert changed == r.trainable, (p, r)
