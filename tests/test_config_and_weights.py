"""Config overrides, strict weight loading and orbax checkpoints."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tljax import checkpoint, config, models, weights
from tljax.errors import UserError


def test_set_pairs_parse_as_json_else_string_and_nest():
    cfg = config.transfer()
    config.apply_overrides(cfg, ["steps=7", "lr=0.5", "strategies=[\"bitfit\"]",
                                 "model=resnet18", "pretrain.dataset=digits:0-4"])
    assert cfg.steps == 7 and cfg.lr == 0.5 and list(cfg.strategies) == ["bitfit"]
    assert cfg.model == "resnet18" and cfg.pretrain.dataset == "digits:0-4"


@pytest.mark.parametrize("pair,match", [("stpes=3", "unknown config key 'stpes'; known: .*steps"),
                                        ("pretrain.nope=1", "unknown config key 'pretrain.nope'"),
                                        ("steps=abc", "bad value 'abc' for config key 'steps'"),
                                        ("steps", "expected key=value")])
def test_bad_overrides_are_named(pair, match):
    with pytest.raises(UserError, match=match):
        config.apply_overrides(config.transfer(), [pair])


def test_checkpoint_restores_with_plain_orbax(tmp_path):
    model = models.create("cnn", 3)
    variables = model.init(jax.random.key(0))
    path = checkpoint.save_variables(str(tmp_path / "ckpt"), variables)
    restored = ocp.StandardCheckpointer().restore(path)
    assert set(restored) == {"params", "batch_stats"}
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, b)


def test_load_fills_the_backbone_and_keeps_the_fresh_head(tmp_path):
    source = models.create("cnn", 5).init(jax.random.key(1))
    path = checkpoint.save_variables(str(tmp_path / "src"), source)
    target = models.create("cnn", 3).init(jax.random.key(2))
    loaded = weights.load(path, target)
    np.testing.assert_array_equal(loaded["params"]["backbone"]["stem"]["conv"]["kernel"],
                                  source["params"]["backbone"]["stem"]["conv"]["kernel"])
    np.testing.assert_array_equal(loaded["batch_stats"]["backbone"]["block1"]["bn"]["mean"],
                                  source["batch_stats"]["backbone"]["block1"]["bn"]["mean"])
    assert loaded["params"]["head"]["kernel"].shape == (128, 3)


def test_strict_load_names_every_missing_unexpected_and_misshaped_tensor():
    target = models.create("cnn", 3).init(jax.random.key(0))
    tensors = weights.flatten_variables(target)
    tensors.pop("params/backbone/stem/conv/kernel")
    tensors["params/backbone/extra/kernel"] = np.zeros((2, 2))
    tensors["params/backbone/block2/bn/scale"] = np.zeros((7,))
    with pytest.raises(UserError) as err:
        weights.assign(target, tensors)
    text = str(err.value)
    assert "\n" not in text
    assert "missing: params/backbone/stem/conv/kernel (3, 3, 1, 32)" in text
    assert "unexpected: params/backbone/extra/kernel (2, 2)" in text
    assert "mis-shaped: params/backbone/block2/bn/scale (7,) in weights vs (128,) in model" in text


def test_missing_weights_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="weights not found"):
        weights.read(str(tmp_path / "nope"))


def test_a_source_rewritten_in_place_is_read_again(tmp_path):
    # load keeps recently read sources in memory (a sweep loads one source per run); a
    # source whose files change under the same path must give the new tensors, an orbax
    # directory and a single file alike.
    target = models.create("cnn", 3).init(jax.random.key(2))
    kernel = lambda v: v["params"]["backbone"]["stem"]["conv"]["kernel"]  # noqa: E731
    directory = str(tmp_path / "src")
    for seed in (1, 2):
        source = models.create("cnn", 5).init(jax.random.key(seed))
        if os.path.exists(directory):
            shutil.rmtree(directory)
        checkpoint.save_variables(directory, source)
        np.testing.assert_array_equal(kernel(weights.load(directory, target)), kernel(source))
    file = str(tmp_path / "src.npz")
    for value in (1.0, 2.0):
        tensors = {k: np.full(np.shape(v), value, np.float32)
                   for k, v in weights.flatten_variables(target).items()}
        np.savez(file, **tensors)
        np.testing.assert_array_equal(kernel(weights.load(file, target)), value)


def test_an_unchanged_source_is_read_once_and_shared_read_only(tmp_path, monkeypatch):
    source = models.create("cnn", 5).init(jax.random.key(1))
    path = checkpoint.save_variables(str(tmp_path / "src"), source)
    target = models.create("cnn", 3).init(jax.random.key(2))
    reads = []
    real_read = weights.read
    monkeypatch.setattr(weights, "read", lambda p: reads.append(p) or real_read(p))
    first = weights.load(path, target)
    second = weights.load(path, target)
    assert reads == [path]
    stem = first["params"]["backbone"]["stem"]["conv"]["kernel"]
    np.testing.assert_array_equal(stem, second["params"]["backbone"]["stem"]["conv"]["kernel"])
    with pytest.raises(ValueError, match="read-only"):
        stem += 1  # a caller cannot change what the next run loads
