"""Config overrides, strict weight loading and orbax checkpoints."""

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
