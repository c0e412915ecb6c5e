"""The fit loop's guards: a divergence in the last step is caught before a checkpoint or a
result records it."""

import json

import jax
import numpy as np
import pytest

from tljax import config, models, optim, strategies, train
from tljax.run import sweep


def _one_sgd_step(scale: float, lr: float = 1e38):
    """Returns ``(model, step, state, batches)`` for SGD at ``lr`` on the cnn, BatchNorm on
    running statistics (so inputs scaled by ``scale`` reach the head scaled too)."""
    model = models.create("cnn", 5)
    variables = jax.tree.map(np.asarray, model.init(jax.random.key(0)))
    rules = strategies.labels("full_ft", variables["params"], model.blocks)
    tx = optim.make(config.transfer(optimizer="sgd", lr=lr, grad_clip=0.0, steps=1), rules)
    step = train.make_step(model.module, rules, tx, model.block_names)
    rng = np.random.default_rng(0)
    x = (scale * rng.normal(size=(16, 16, 16, 1))).astype(np.float32)
    y = rng.integers(0, 5, 16)
    return model, step, train.init_state(variables, tx), iter(lambda: (x, y), 0)


def test_params_that_overflow_in_the_last_step_are_never_checkpointed():
    # The step's loss is computed before its update (finite here: the head starts at zero);
    # the update itself overflows the head.
    _, step, state, batches = _one_sgd_step(scale=100.0)
    saved = []
    with pytest.raises(FloatingPointError, match="params became non-finite at step 1"):
        train.fit(step, state, batches, 1, checkpoint=lambda s, i: saved.append(i))
    assert saved == []


def test_finite_params_that_overflow_the_logits_are_never_checkpointed():
    # A 1e37 head is finite, but its logits are not: only the post-update loss sees it.
    model, step, state, batches = _one_sgd_step(scale=1.0)
    saved = []
    with pytest.raises(FloatingPointError, match="loss after the update became non-finite "
                                                 "at step 1"):
        train.fit(step, state, batches, 1, checkpoint=lambda s, i: saved.append(i),
                  post_update_loss=train.make_eval_loss(model.module))
    assert saved == []


def test_post_update_check_passes_a_healthy_run():
    model, step, state, batches = _one_sgd_step(scale=1.0, lr=1e-2)
    saved = []
    train.fit(step, state, batches, 4, checkpoint=lambda s, i: saved.append(i),
              checkpoint_every=2, post_update_loss=train.make_eval_loss(model.module))
    assert saved == [2, 4]


def test_evaluate_refuses_non_finite_logits():
    logits = np.zeros((6, 3), np.float32)
    logits[4, 1] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite logits for 1 of 6 examples"):
        train.evaluate(lambda variables, x: x, None, logits, np.zeros(6, int), 4)
    assert train.evaluate(lambda variables, x: x, None, logits[:4], np.arange(4) % 3,
                          4)["accuracy"] == 0.5


def test_run_whose_last_step_diverged_is_recorded_failed(tmp_path):
    """SGD at lr=1e38 for one step: the loss seen before the update is finite, the model
    after it is not; the record says failed and no final checkpoint is written."""
    cfg = config.transfer(dataset="digits", strategies=["full_ft"], steps=1, batch_size=16,
                          optimizer="sgd", lr=1e38, log_every=1)
    (record,) = sweep.run(cfg, str(tmp_path), log=lambda *a: None)
    assert record["status"] == "failed", record.get("metrics")
    assert "non-finite" in record["error"]
    assert "checkpoint" not in record
    # Nor was the diverged state saved for a resume (the loss check alone saves it).
    assert not [d for d in (tmp_path / "state").glob("*/*") if d.name.isdigit()]
    (written,) = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert written["status"] == "failed"


def test_a_learning_rate_sweep_compiles_the_step_once():
    """The LR lives in the optimizer state, so steps for different LRs (warmup included)
    lower to the same program, and the compilation cache serves the second."""
    import jax.numpy as jnp

    from tljax import models, optim, strategies, train
    from tljax.config import transfer

    model = models.create("cnn", 5, 16, 1)
    variables = model.init(jax.random.key(0))
    rules = strategies.labels("full_ft", variables["params"], model.blocks)
    x, y = jnp.zeros((8, 16, 16, 1)), jnp.zeros((8,), jnp.int32)
    texts = []
    for lr in (1e-3, 3e-1):
        tx = optim.make(transfer(lr=lr, warmup_steps=3, steps=10), rules)
        step = train.make_step(model.module, rules, tx)
        texts.append(step.lower(train.init_state(variables, tx), x, y).as_text())
    assert texts[0] == texts[1]
