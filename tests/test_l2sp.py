"""L2-SP (Li et al. 2018): trainable backbone params pulled toward their starting values,
the head toward zero, frozen params untouched."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from tljax import models, optim, strategies, train
from tljax.config import transfer
from tljax.errors import UserError

ALPHA, BETA = 0.7, 0.3


def _model(strategy="last_k:1"):
    """Returns ``(model, variables, rules)`` for the cnn: with ``last_k:1``, stem and block1
    frozen, block2 and the head trained."""
    model = models.create("cnn", 5)
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    return model, variables, strategies.labels(strategy, variables["params"], model.blocks)


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(tree)


def _penalty(params, start, rules):
    """The paper's eq. 3, written out: alpha/2 ||w - w0||^2 over trainable backbone params
    plus beta/2 ||w||^2 over the head's."""
    total = 0.0
    for path, rule in _flat(rules).items():
        w, w0 = _flat(params)[path], _flat(start)[path]
        if rule.trainable and path[0] == "head":
            total += BETA / 2 * jnp.sum(w ** 2)
        elif rule.trainable:
            total += ALPHA / 2 * jnp.sum((w - w0) ** 2)
    return total


def _perturbed(params, rules, seed):
    """Returns ``params`` with every trainable leaf moved by noise; frozen ones as they are."""
    rng = np.random.default_rng(seed)
    flat_rules = _flat(rules)
    return traverse_util.unflatten_dict({
        k: v + (rng.normal(size=v.shape).astype(v.dtype) if flat_rules[k].trainable else 0)
        for k, v in _flat(params).items()})


def _data_grads(params, rules, seed):
    rng = np.random.default_rng(seed)
    flat_rules = _flat(rules)
    return traverse_util.unflatten_dict({
        k: (rng.normal(size=v.shape).astype(v.dtype) if flat_rules[k].trainable
            else np.zeros_like(v)) for k, v in _flat(params).items()})


def test_added_gradient_is_the_gradient_of_the_explicit_penalty():
    _, variables, rules = _model()
    w0 = variables["params"]
    w = _perturbed(w0, rules, seed=1)
    penalty_grad = jax.grad(_penalty)(w, w0, rules)
    # With no data gradient, plain SGD's update is -lr times the penalty's gradient.
    cfg = transfer(optimizer="sgd", momentum=0.0, lr=0.1, grad_clip=0.0, steps=10,
                   l2sp_alpha=ALPHA, l2sp_beta=BETA)
    tx = optim.make(cfg, rules)
    zeros = jax.tree.map(np.zeros_like, w)
    updates, _ = tx.update(zeros, tx.init(w0), w)
    for path, u in _flat(updates).items():
        np.testing.assert_allclose(u, -0.1 * _flat(penalty_grad)[path], rtol=1e-6, atol=1e-7)
    assert any(np.abs(u).max() > 0 for u in jax.tree.leaves(updates))


def test_penalty_is_clipped_with_the_data_gradient_as_if_it_were_in_the_loss():
    # The paper adds the penalty to the loss, so clipping sees the sum; with momentum SGD
    # the clipped step shows where the penalty entered.
    _, variables, rules = _model()
    w0 = variables["params"]
    w = _perturbed(w0, rules, seed=2)
    grads = _data_grads(w0, rules, seed=3)
    total = jax.tree.map(jnp.add, grads, jax.grad(_penalty)(w, w0, rules))
    base = dict(optimizer="sgd", lr=0.1, grad_clip=1.0, steps=10)
    assert float(optax.global_norm(total)) > 10  # clipping is active
    with_l2sp = optim.make(transfer(**base, l2sp_alpha=ALPHA, l2sp_beta=BETA), rules)
    in_loss = optim.make(transfer(**base), rules)
    s1, s2 = with_l2sp.init(w0), in_loss.init(w0)
    for _ in range(2):  # twice: the momentum carries the penalty too
        u1, s1 = with_l2sp.update(grads, s1, w)
        u2, s2 = in_loss.update(total, s2, w)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def _pull_state(opt_state) -> optim.PullState:
    """Returns the one ``PullState`` (L2-SP's w0) inside ``opt_state``."""
    is_pull = lambda s: isinstance(s, optim.PullState)  # noqa: E731
    (pull,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_pull) if is_pull(s)]
    return pull


def _train(rules, model, variables, steps, lr=0.1, **cfg):
    """Returns the train state after ``steps`` plain SGD steps on one fixed batch."""
    tx = optim.make(transfer(optimizer="sgd", momentum=0.0, lr=lr, grad_clip=0.0,
                             steps=100_000, **cfg), rules)
    step = train.make_step(model.module, rules, tx, model.block_names)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    state = train.init_state(variables, tx)
    for _ in range(steps):
        state, _ = step(state, x, y)
    return jax.device_get(state)


def _distance(params, start, keep):
    flat, flat0 = _flat(params), _flat(start)
    return float(np.sqrt(sum(np.sum((flat[k] - flat0[k]) ** 2) for k in flat if keep(k))))


def test_huge_alpha_holds_the_backbone_at_its_start_while_the_head_moves():
    model, variables, rules = _model("full_ft")
    w0 = variables["params"]
    # lr * alpha = 1: each step first returns the backbone to w0, so it is never more than
    # one data-gradient step away, while the head trains freely.
    free = _train(rules, model, variables, 40, lr=0.01).params
    held = _train(rules, model, variables, 40, lr=0.01, l2sp_alpha=100.0).params
    backbone, head = (lambda k: k[0] == "backbone"), (lambda k: k[0] == "head")
    assert _distance(held, w0, backbone) < 0.1 * _distance(free, w0, backbone)
    assert _distance(held, w0, head) > 0.5 * _distance(free, w0, head) > 0


def test_frozen_params_stay_bit_identical_and_hold_no_l2sp_state():
    model, variables, rules = _model("last_k:1")
    state = _train(rules, model, variables, 3, l2sp_alpha=ALPHA, l2sp_beta=BETA)
    flat_rules = _flat(rules)
    frozen = {k for k, r in flat_rules.items() if not r.trainable}
    assert frozen and any(k[0] == "backbone" for k in set(flat_rules) - frozen)
    for k in frozen:
        assert _flat(state.params)[k].tobytes() == _flat(variables["params"])[k].tobytes()
    # Every optimizer-state leaf sits under some param's path: collect which.
    held, starts = set(), set()
    for path, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
        tail = []
        for key in reversed(path):
            if not isinstance(key, jax.tree_util.DictKey):
                break
            tail.insert(0, key.key)
        held.add(tuple(tail))
        if any(getattr(key, "name", None) == "start" for key in path):
            starts.add(tuple(tail))
    assert not held & frozen
    # w0 is kept exactly for the trainable backbone leaves, equal to where they started.
    assert starts == {k for k, r in flat_rules.items() if r.trainable and k[0] == "backbone"}
    for k, v in _flat(_pull_state(state.opt_state).start).items():
        if isinstance(v, optax.MaskedNode):  # a leaf outside the pulled group: no state
            continue
        assert k in starts
        assert v.tobytes() == _flat(variables["params"])[k].tobytes()


def test_zero_alpha_and_beta_give_the_updates_of_a_config_without_l2sp():
    model, variables, rules = _model("last_k:1")
    without = transfer(steps=1000).to_dict()
    del without["l2sp_alpha"], without["l2sp_beta"]
    tx_without = optim.make(ml_collections.ConfigDict(without), rules)
    tx_zero = optim.make(transfer(steps=1000, l2sp_alpha=0.0, l2sp_beta=0.0), rules)
    w0 = variables["params"]
    w = _perturbed(w0, rules, seed=4)
    grads = _data_grads(w0, rules, seed=5)
    s1, s2 = tx_without.init(w0), tx_zero.init(w0)
    for _ in range(2):
        u1, s1 = tx_without.update(grads, s1, w)
        u2, s2 = tx_zero.update(grads, s2, w)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_negative_l2sp_weight_is_a_user_error():
    _, _, rules = _model()
    with pytest.raises(UserError, match="l2sp_beta must be >= 0; got -1"):
        optim.make(transfer(l2sp_beta=-1.0), rules)


def test_resumed_run_pulls_toward_the_original_start(tmp_path):
    # w0 lives in the optimizer state, so a run restored from a checkpoint keeps pulling
    # toward the pretrained values, not toward where it resumed.
    from tljax import checkpoint

    model, variables, rules = _model("last_k:1")
    state = _train(rules, model, variables, 2, l2sp_alpha=ALPHA)
    ckpts = checkpoint.RunCheckpoints(str(tmp_path / "state"))
    ckpts.save(state, 2)
    tx = optim.make(transfer(optimizer="sgd", momentum=0.0, lr=0.1, grad_clip=0.0,
                             steps=100_000, l2sp_alpha=ALPHA), rules)
    # The resuming run's own init starts elsewhere; the checkpoint's w0 must win.
    like = train.init_state({"params": _perturbed(variables["params"], rules, 6),
                             "batch_stats": variables["batch_stats"]}, tx)
    step, restored = ckpts.restore_latest(like)
    ckpts.close()
    assert step == 2
    for k, v in _flat(_pull_state(restored.opt_state).start).items():
        if not isinstance(v, optax.MaskedNode):
            assert np.asarray(v).tobytes() == _flat(variables["params"])[k].tobytes()
