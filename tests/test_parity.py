"""Imported weights give the reference PyTorch implementations' outputs.

References come from the package registry (test extra): ``efficientnet-lite-pytorch`` for
EfficientNet-Lite0 on its real ImageNet weights, Hugging Face ``transformers`` for BERT
(the real all-MiniLM-L6-v2 weights) and for ResNet / ViT with random init. tljax itself
never imports torch; only these tests do.
"""

import os

import jax
import numpy as np
import pytest

from tljax import data, models, text
from tljax.models import zoo

torch = pytest.importorskip("torch")


def _photos(size=224):
    """scikit-learn's two real photographs, resized (shorter side 256) and centre-cropped."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    for image in load_sample_images().images:
        im = Image.fromarray(image)
        scale = 256 / min(im.size)
        im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.BICUBIC)
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        out.append(np.asarray(im.crop((left, top, left + size, top + size))))
    return np.stack(out)  # china.jpg (a palace), flower.jpg (a daisy)


def test_efficientnet_lite0_matches_reference_logits_on_real_photos():
    from efficientnet_lite_pytorch import EfficientNet

    module, variables = models.pretrained("efficientnet_lite0")
    x = data.preprocess(_photos(), zoo.create("efficientnet_lite0").preprocessing)
    ours = np.asarray(module.apply(variables, x, train=False))

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(zoo.path("efficientnet_lite0"), weights_only=True))
    with torch.no_grad():
        theirs = ref.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()

    assert ours.shape == (2, 1000)
    assert np.abs(ours - theirs).max() <= 1e-3
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
    # The weights' own preprocessing, (x - 127) / 128, names both photos right:
    # ImageNet class 698 is "palace", 985 "daisy".
    np.testing.assert_array_equal(ours.argmax(-1), [698, 985])


SENTENCES = ["A man is playing a guitar.", "Someone is playing the guitar.",
             "The stock market fell sharply today.", "A cat sleeps on the sofa."]


def test_minilm_matches_reference_hidden_states_and_ranks_paraphrases():
    from transformers import BertModel

    module, variables = models.pretrained("all_minilm_l6_v2")
    folder = os.path.dirname(zoo.path("all_minilm_l6_v2"))
    tokens = text.encode(text.load_tokenizer(folder), SENTENCES, max_tokens=24)
    ids, mask, types = tokens[:, 0], tokens[:, 1], tokens[:, 2]
    ours = np.asarray(module.apply(variables, ids, mask, types, train=False))

    ref = BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = ref(input_ids=torch.from_numpy(ids).long(),
                     attention_mask=torch.from_numpy(mask).long(),
                     token_type_ids=torch.from_numpy(types).long()).last_hidden_state.numpy()
    assert ours.shape == (4, 24, 384)
    assert np.abs(ours - theirs).max() <= 1e-4

    pooled = (ours * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    cosine = pooled @ pooled.T
    assert cosine[0, 1] > 0.6
    assert cosine[0, 1] > max(cosine[0, 2], cosine[0, 3], cosine[1, 2], cosine[1, 3]) + 0.4


def test_minilm_classifier_mean_pools_the_pretrained_encoder():
    model = zoo.create("all_minilm_l6_v2", num_classes=3)
    module, encoder_vars = models.pretrained("all_minilm_l6_v2")
    from tljax import weights

    shapes = jax.eval_shape(model.init, jax.random.key(0))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables = weights.load(zoo.path("all_minilm_l6_v2"), variables, model.torch_names)
    tokens = text.encode(text.load_tokenizer(os.path.dirname(zoo.path("all_minilm_l6_v2"))),
                         SENTENCES[:2], max_tokens=16)
    features = model.module.apply(variables, tokens, method="features")
    hidden = module.apply(encoder_vars, tokens[:, 0], tokens[:, 1], tokens[:, 2])
    m = tokens[:, 1, :, None]
    np.testing.assert_allclose(features, (hidden * m).sum(1) / m.sum(1), rtol=1e-5, atol=1e-6)
