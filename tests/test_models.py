"""Model input specs: each family takes the image sizes it can run on, and names the valid
range for the ones it cannot."""

import re

import jax
import numpy as np
import pytest

from tljax import models
from tljax.errors import UserError
from tljax.models import vgg


@pytest.mark.parametrize("name,kwargs,message", [
    ("vit_ti16", {"image_size": 40}, "image_size 40 does not fit model 'vit_ti16'; valid: a "
                                     "multiple of 16, >= 16"),
    ("vit_b16", {"image_size": 8}, "valid: a multiple of 16, >= 16"),
    ("vgg16", {"image_size": 31}, "image_size 31 does not fit model 'vgg16'; valid: >= 32"),
    ("cnn", {"image_size": 3}, "image_size 3 does not fit model 'cnn'; valid: >= 4"),
    ("resnet18", {"image_size": 0}, "image_size 0 does not fit model 'resnet18'; valid: >= 1"),
    ("efficientnet_lite0", {"image_size": -8}, "valid: >= 1"),
    ("resnet50", {"channels": 0}, "channels 0 is not a channel count; valid: >= 1"),
    ("bert_minilm_l6", {"image_size": 32}, "model 'bert_minilm_l6' takes text (token ids), not "
                                           "images (image_size=32, channels=None); image models: "),
])
def test_create_names_an_input_size_the_model_cannot_take(name, kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)):
        models.create(name, 3, **kwargs)


def test_pretrained_weights_name_their_channel_count():
    with pytest.raises(UserError, match="weights 'efficientnet_lite0' take 3-channel input; got "
                                        "channels=1; valid: 3"):
        models.zoo.create("efficientnet_lite0", 5, channels=1)
    assert models.zoo.create("efficientnet_lite0", 5, channels=3).preprocessing.channels == 3


def test_vit_is_built_for_its_image_size_and_names_it_for_other_inputs():
    model = models.create("vit_ti16", 3, image_size=32)
    variables = jax.eval_shape(model.init, jax.random.key(0))
    assert variables["params"]["backbone"]["pos_embed"].shape == (1, 2 * 2 + 1, 192)
    out = jax.eval_shape(model.module.apply, variables, model.dummy_input(2))
    assert out.shape == (2, 3)
    with pytest.raises(UserError, match="ViT built for 32 px gets 48x48 px input; valid: 32x32"):
        jax.eval_shape(model.module.apply, variables, np.zeros((2, 48, 48, 3), np.float32))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 9, 14])
def test_vgg_pools_any_feature_map_like_torch_adaptive_avg_pool(size):
    import torch

    x = np.random.default_rng(size).normal(size=(2, size, size + 1, 4)).astype(np.float32)
    ours = np.asarray(vgg._adaptive_avg_pool_7(x))
    theirs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 7)
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


def test_vgg_runs_between_the_sizes_it_used_to_take():
    model = models.create("vgg16", 3, image_size=64)  # a 2x2 last map: once a ValueError
    variables = jax.eval_shape(model.init, jax.random.key(0))
    assert jax.eval_shape(model.module.apply, variables, model.dummy_input(1)).shape == (1, 3)


def test_cnn6s_first_block_is_two_convs_and_six_percent_of_the_params():
    """Surgical fine-tuning's first block must be of realistic size (Lee et al. 2023):
    cnn6s's block1 holds both of its convs, about 6% of the params; the other blocks keep
    cnn6's one-conv names."""
    model = models.create("cnn6s", 10)
    variables = model.init(jax.random.key(0))
    params = variables["params"]["backbone"]
    assert sorted(params["block1"]) == ["bn", "bn1", "conv", "conv1"]
    assert sorted(params["block2"]) == ["bn", "conv"]
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    share = count(params["block1"]) / count(variables["params"])
    assert 0.05 < share < 0.08
