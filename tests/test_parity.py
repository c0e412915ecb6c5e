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


def assert_features_match(ours, theirs, atol: float = 1e-4) -> None:
    """Asserts ``max |ours - theirs| <= max(atol, 1e-5 * max |theirs|)``: float32 rounding
    through a deep network grows with the features' magnitude (ResNet-50's pooled features
    reach 65, where 1e-4 is 25 float32 ulps), and which kernels XLA and PyTorch run (and so
    how they round) depends on the CPU."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    error, scale = np.abs(ours - theirs).max(), np.abs(theirs).max()
    assert error <= max(atol, 1e-5 * scale), (error, scale)


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
    assert_features_match(ours, theirs)

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


def perturb_batch_norm(ref) -> None:
    """Gives every BatchNorm2d of ``ref`` non-trivial statistics and affine params, so
    eval-mode BN is exercised, and puts ``ref`` in eval mode."""
    with torch.no_grad():
        for module in ref.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    ref.eval()


@pytest.mark.parametrize("layer_type,depths,name", [
    ("basic", [2, 2, 2, 2], "resnet18"), ("bottleneck", [3, 4, 6, 3], "resnet50")])
def test_resnet_matches_hugging_face_resnet_model(tmp_path, layer_type, depths, name):
    from transformers import ResNetConfig, ResNetModel

    from tljax import weights

    hidden = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    torch.manual_seed(0)
    ref = ResNetModel(ResNetConfig(layer_type=layer_type, depths=depths, hidden_sizes=hidden))
    perturb_batch_norm(ref)
    torch.save(ref.state_dict(), tmp_path / "resnet.bin")

    model = models.create(name, 10, image_size=64)
    variables = weights.load(str(tmp_path / "resnet.bin"),
                             model.init(jax.random.key(0)), model.torch_names)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    ours = np.asarray(model.module.apply(variables, x, method="features"))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).pooler_output
    assert_features_match(ours, theirs.numpy().reshape(2, -1))


def _torchvision_resnet18():
    """torchvision's ResNet-18 in plain torch: the same module names (so the same
    state-dict keys) and forward; torchvision itself does not install beside torch
    2.13.0 CPU."""
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], 1):
                setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride),
                                                         BasicBlock(cout, cout, 1)))
                cin = cout
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet18()


def test_torchvision_resnet18_layout_matches(tmp_path):
    from tljax import weights

    torch.manual_seed(0)
    ref = _torchvision_resnet18()
    perturb_batch_norm(ref)
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    model = models.create("resnet18", 1000, image_size=64)
    variables = weights.load(str(tmp_path / "resnet18.pth"), model.init(jax.random.key(0)),
                             model.torch_names, keep_head=True)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert_features_match(np.asarray(model.module.apply(variables, x)), theirs)


def test_vit_matches_hugging_face_vit_model(tmp_path):
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTModel

    from tljax import weights
    from tljax.models import registry

    torch.manual_seed(0)
    ref = ViTModel(ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                             intermediate_size=768, image_size=224, patch_size=16,
                             layer_norm_eps=1e-6)).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(tmp_path / "vit.safetensors"))
    model = registry.create("vit_ti16", 10)
    variables = weights.load(str(tmp_path / "vit.safetensors"), model.init(jax.random.key(0)),
                             model.torch_names)
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    ours = np.asarray(model.module.apply(variables, x, method="features"))
    with torch.no_grad():
        theirs = ref(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert_features_match(ours, theirs.last_hidden_state[:, 0].numpy())


def _torchvision_vgg16():
    """torchvision's VGG-16 layout in plain torch (same module indices and forward)."""
    nn = torch.nn
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v

    class VGG16(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(25088, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096),
                nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return VGG16().eval()


def _keras_h5(path, state):
    """Writes ``state`` (torchvision VGG16) as a Keras 2 ``.h5`` (HWIO kernels, HWC flatten)."""
    import h5py

    from tljax.models import vgg

    names = [f"block{b}_conv{c}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3))
             for c in range(1, n + 1)]
    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights")
        for name, index in zip(names, vgg.conv_indices()):
            w = state[f"features.{index}.weight"].numpy().transpose(2, 3, 1, 0)
            g[f"{name}/{name}/kernel:0"] = w
            g[f"{name}/{name}/bias:0"] = state[f"features.{index}.bias"].numpy()
        fc1 = state["classifier.0.weight"].numpy().T.reshape(512, 7, 7, 4096).transpose(1, 2, 0, 3)
        g["fc1/fc1/kernel:0"] = fc1.reshape(25088, 4096)
        g["fc1/fc1/bias:0"] = state["classifier.0.bias"].numpy()
        for keras, torch_name in (("fc2", "classifier.3"), ("predictions", "classifier.6")):
            g[f"{keras}/{keras}/kernel:0"] = state[f"{torch_name}.weight"].numpy().T
            g[f"{keras}/{keras}/bias:0"] = state[f"{torch_name}.bias"].numpy()


def test_vgg16_from_torchvision_and_keras_names_matches_reference(tmp_path):
    from tljax import weights

    torch.manual_seed(0)
    ref = _torchvision_vgg16()
    state = ref.state_dict()
    torch.save(state, tmp_path / "vgg16.pth")
    _keras_h5(tmp_path / "vgg16.h5", state)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    model = models.create("vgg16", 1000, image_size=32)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    empty = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    for source in ("vgg16.pth", "vgg16.h5"):
        variables = weights.load(str(tmp_path / source), empty, model.torch_names, keep_head=True)
        ours = np.asarray(model.module.apply(variables, x))
        assert_features_match(ours, theirs)


def test_bert_base_cls_pooling_matches_hugging_face_pooler(tmp_path):
    from transformers import BertConfig, BertModel

    from tljax import weights
    from tljax.models import bert, registry

    torch.manual_seed(0)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, vocab_size=100)
    ref = BertModel(BertConfig(**small)).eval()
    torch.save(ref.state_dict(), tmp_path / "bert.bin")
    cfg = bert.BertConfig(**small)
    model = registry.create("bert_base", 3)
    model = type(model)(model.name, model.module.clone(backbone=bert.Bert(cfg, "cls")),
                        bert.blocks(cfg, "cls") + (("head", "head/.*"),), model.preprocessing,
                        model.torch_names)
    tokens = np.stack([np.random.default_rng(0).integers(1, 100, (2, 12)),
                       np.array([[1] * 12, [1] * 7 + [0] * 5]), np.zeros((2, 12), int)], 1)
    shapes = jax.eval_shape(model.module.init, jax.random.key(0), tokens)
    variables = weights.load(str(tmp_path / "bert.bin"),
                             jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                             model.torch_names)
    ours = np.asarray(model.module.apply(variables, tokens, method="features"))
    with torch.no_grad():
        theirs = ref(input_ids=torch.from_numpy(tokens[:, 0]).long(),
                     attention_mask=torch.from_numpy(tokens[:, 1]).long()).pooler_output.numpy()
    assert_features_match(ours, theirs)
