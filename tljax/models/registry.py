"""Models by name: module factory, block order, input spec and preprocessing."""

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from tljax.errors import UserError, unknown
from tljax.models import bert, cnn, efficientnet, resnet, vgg, vit
from tljax.models.classifier import Classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How raw data becomes model input.

    Images (``kind="image"``): resize to ``image_size``, ``channels``, ``(x/255 - mean) / std``.
    Text (``kind="text"``): token ids packed as (n, 3, ``max_tokens``) by ``tljax.text``.
    """

    image_size: int
    channels: int
    mean: tuple
    std: tuple
    kind: str = "image"
    max_tokens: int = 128


@dataclasses.dataclass(frozen=True)
class Model:
    """A classifier with everything the rest of tljax needs to know about it.

    ``blocks`` is the block order, input to output, as ``(name, param-path regex)``; the
    last block is always ``head``.
    """

    name: str
    module: Classifier
    blocks: tuple
    preprocessing: Preprocessing
    torch_names: dict = dataclasses.field(default_factory=dict)

    @property
    def block_names(self) -> tuple:
        """Returns the block names, input to output."""
        return tuple(name for name, _ in self.blocks)

    def dummy_input(self, batch: int = 1):
        """Returns a zero batch shaped like this model's input."""
        p = self.preprocessing
        if p.kind == "text":
            return jnp.zeros((batch, 3, p.max_tokens), jnp.int32)
        return jnp.zeros((batch, p.image_size, p.image_size, p.channels), jnp.float32)

    def init(self, key) -> dict:
        """Returns freshly initialised variables ``{"params": ..., "batch_stats": ...}``."""
        variables = _jit_init(self.module, self.dummy_input().shape,
                              str(self.dummy_input().dtype))(key)
        return jax.tree.map(lambda x: x, dict(variables))


@functools.lru_cache(maxsize=32)
def _jit_init(module: nn.Module, shape: tuple, dtype: str):
    """Returns ``key -> module.init(...)`` compiled once per module and input: run op by op,
    init takes tens of CPU seconds for EfficientNet; compiled, the compilation cache then
    serves every later run and process."""
    return jax.jit(lambda key: module.init(key, jnp.zeros(shape, dtype), train=False))


@dataclasses.dataclass(frozen=True)
class _Family:
    backbone: Callable[[int], nn.Module]  # image size -> backbone module
    blocks: tuple
    preprocessing: Preprocessing
    description: str
    torch_names: dict = dataclasses.field(default_factory=dict)  # see weights.torch_names
    # Image sizes it runs on: the smallest with a non-empty last feature map, and a step
    # (ViT: whole patches).
    min_image_size: int = 1
    image_step: int = 1


def _resnet(name: str) -> _Family:
    block, depths = resnet.DEPTHS[name]
    return _Family(lambda size: resnet.ResNet(block, depths), resnet.blocks(depths),
                   Preprocessing(224, 3, IMAGENET_MEAN, IMAGENET_STD),
                   f"ResNet v1 {name[6:]} (torchvision/timm names), 224 px RGB, ImageNet "
                   "normalisation", {"head": ("fc",), "rename": resnet.hf_to_torchvision})


_FAMILIES = {
    "cnn": _Family(lambda size: cnn.SmallCNN(), cnn.BLOCKS, Preprocessing(16, 1, (0.5,), (0.5,)),
                   "small 3-block CNN for tests and miniature experiments, 16 px grey",
                   min_image_size=4),  # two 2x2 max-pools
    "cnn6": _Family(lambda size: cnn.SmallCNN(cnn.DEEP_WIDTHS, cnn.DEEP_POOLS, cnn.DEEP_TABLE),
                    cnn.DEEP_BLOCKS, Preprocessing(16, 1, (0.5,), (0.5,)),
                    "small 6-block CNN for layer-by-layer transfer miniatures, 16 px grey",
                    min_image_size=4),  # two 2x2 max-pools
    "cnn6s": _Family(lambda size: cnn.SmallCNN(cnn.SURGICAL_WIDTHS, cnn.DEEP_POOLS,
                                               cnn.DEEP_TABLE, cnn.SURGICAL_CONVS),
                     cnn.DEEP_BLOCKS, Preprocessing(16, 1, (0.5,), (0.5,)),
                     "cnn6 with a first block of two 32-wide convs (6% of its params), "
                     "for surgical fine-tuning miniatures, 16 px grey", min_image_size=4),
    **{name: _resnet(name) for name in resnet.DEPTHS},
    "efficientnet_lite0": _Family(
        lambda size: efficientnet.EfficientNetLite(), efficientnet.blocks(),
        Preprocessing(224, 3, (127 / 255,) * 3, (128 / 255,) * 3),
        "EfficientNet-Lite0 (PyTorch-port names), 224 px RGB, (x - 127) / 128",
        {"head": ("_fc",)}),
    "vit_b16": _Family(
        lambda size: vit.ViT(dataclasses.replace(vit.VIT_B16, image_size=size)),
        vit.blocks(vit.VIT_B16), Preprocessing(224, 3, (0.5,) * 3, (0.5,) * 3),
        "ViT-B/16 (timm names; Hugging Face ViTModel converts), 224 px, (x - 0.5) / 0.5",
        vit.TORCH_NAMES, 16, 16),
    "vit_ti16": _Family(
        lambda size: vit.ViT(dataclasses.replace(vit.VIT_TINY16, image_size=size)),
        vit.blocks(vit.VIT_TINY16), Preprocessing(224, 3, (0.5,) * 3, (0.5,) * 3),
        "ViT-Ti/16 (timm names; Hugging Face ViTModel converts), 224 px, (x - 0.5) / 0.5",
        vit.TORCH_NAMES, 16, 16),
    "vgg16": _Family(
        lambda size: vgg.VGG(), vgg.blocks(), Preprocessing(224, 3, IMAGENET_MEAN, IMAGENET_STD),
        "VGG-16 (torchvision names; Keras .h5 converts), 224 px, ImageNet normalisation",
        {"head": ("classifier.6",), "rename": vgg.keras_to_torchvision}, vgg.MIN_IMAGE_SIZE),
    "bert_minilm_l6": _Family(
        lambda size: bert.Bert(bert.MINILM_L6, "mean"), bert.blocks(bert.MINILM_L6, "mean"),
        Preprocessing(0, 0, (), (), kind="text", max_tokens=128),
        "BERT encoder, 6 layers x 384 (all-MiniLM-L6-v2 shape), mean pooling; token ids",
        bert.torch_names("mean")),
    "bert_base": _Family(
        lambda size: bert.Bert(bert.BERT_BASE, "cls"), bert.blocks(bert.BERT_BASE, "cls"),
        Preprocessing(0, 0, (), (), kind="text", max_tokens=128),
        "BERT-base encoder (Hugging Face names), CLS token through the pooler; token ids",
        bert.torch_names("cls")),
}


def names(kind: str | None = None) -> list:
    """Returns the registered model names, sorted; only those taking ``kind`` input
    (``"image"`` or ``"text"``) if given."""
    return sorted(n for n, f in _FAMILIES.items() if kind in (None, f.preprocessing.kind))


def describe() -> dict:
    """Returns ``{model name: one-line description}``."""
    return {name: _FAMILIES[name].description for name in names()}


def create(name: str, num_classes: int, image_size: int | None = None,
           channels: int | None = None) -> Model:
    """Returns the named model with a fresh ``num_classes``-way head.

    ``image_size``/``channels`` override the family's input spec (e.g. ResNet on 64 px; a
    ViT is built for its size). Raises ``UserError`` for values the model cannot take.
    """
    if name not in _FAMILIES:
        raise unknown("model", name, names())
    family = _FAMILIES[name]
    prep = family.preprocessing
    _check_input(name, family, image_size, channels)
    if channels is not None and channels != prep.channels:
        mean = tuple(prep.mean[i % len(prep.mean)] for i in range(channels))
        std = tuple(prep.std[i % len(prep.std)] for i in range(channels))
        prep = dataclasses.replace(prep, channels=channels, mean=mean, std=std)
    if image_size is not None:
        prep = dataclasses.replace(prep, image_size=int(image_size))
    module = Classifier(family.backbone(prep.image_size), num_classes)
    return Model(name, module, family.blocks + (("head", r"head/.*"),), prep, family.torch_names)


def _check_input(name: str, family: _Family, image_size, channels) -> None:
    """Raises ``UserError`` naming an ``image_size`` or ``channels`` the model cannot take."""
    if family.preprocessing.kind != "image":
        if image_size is not None or channels is not None:
            raise UserError(f"model {name!r} takes {family.preprocessing.kind} (token ids), not "
                            f"images (image_size={image_size}, channels={channels}); image models: "
                            f"{', '.join(names('image'))}")
        return
    lo, step = family.min_image_size, family.image_step
    if image_size is not None and (int(image_size) < lo or int(image_size) % step):
        valid = f"a multiple of {step}, >= {lo}" if step > 1 else f">= {lo}"
        raise UserError(f"image_size {image_size} does not fit model {name!r}; valid: {valid}")
    if channels is not None and int(channels) < 1:
        raise UserError(f"channels {channels} is not a channel count; valid: >= 1")
