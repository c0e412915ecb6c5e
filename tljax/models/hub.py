"""Models from a Hugging Face model directory: the family and its sizes from ``config.json``.

A directory downloaded from the hub (``bert-base-uncased``, ``google/vit-base-patch16-224``,
``microsoft/resnet-50``) or written by ``save_pretrained`` says what it is: ``config.json``
gives the ``model_type`` and every size, ``preprocessor_config.json`` (images) the input
size and normalisation, and ``tokenizer.json`` (text) the tokenizer. ``create`` builds
the tljax model they describe with a fresh head; ``weights.load(directory, ...)`` then
fills its backbone, strictly.
"""

import dataclasses
import os

from tljax.errors import UserError
from tljax.models import bert, resnet, vit
from tljax.models.classifier import Classifier
from tljax.models import registry
from tljax.models.registry import IMAGENET_MEAN, IMAGENET_STD, Model, Preprocessing
from tljax.weights import hub as files

PREPROCESSOR = "preprocessor_config.json"
MODULES = "modules.json"  # sentence-transformers: the modules after the encoder
# model_type -> what tljax builds for it (a registered model of the same family agrees).
MODEL_TYPES = {"bert": "BERT encoder (token ids; CLS through the pooler, or mean pooling "
                       "for a sentence-transformers directory)",
               "vit": "Vision Transformer (class token after the final norm)",
               "resnet": "ResNet v1.5, Hugging Face ResNetModel layout"}
_BACKBONES = {"bert": bert.Bert, "vit": vit.ViT, "resnet": resnet.ResNet}


def is_model_dir(path: str) -> bool:
    """Returns True where ``path`` is a directory with a ``config.json``."""
    return files.is_model_dir(path)


def model_type(directory: str) -> str:
    """Returns the directory's ``model_type``; raises ``UserError`` (one line, naming the
    supported ones) when it is missing or not supported."""
    kind = files.read_json(directory, files.CONFIG).get("model_type")
    if not isinstance(kind, str) or kind not in MODEL_TYPES:
        raise UserError(f"model directory {directory!r} holds model_type {kind!r}, which tljax "
                        f"does not build; supported: {', '.join(MODEL_TYPES)}")
    return kind


def create(directory: str, num_classes: int, image_size: int | None = None,
           channels: int | None = None, model: str = "") -> Model:
    """Returns the model ``directory`` describes, with a fresh ``num_classes``-way head.

    ``model``, if given, must agree: the directory's ``model_type`` itself, or a registered
    model of the same family and sizes (its name is then the model's name); else one
    ``UserError`` names both. ``image_size``/``channels`` override the input spec where the
    weights allow it (a ViT runs only at its ``config.json`` image size).
    """
    kind = model_type(directory)
    files.weights_file(directory)  # no weights is an error now, not after the data loads
    config = files.read_json(directory, files.CONFIG)
    _check_types(directory, config)
    build = {"bert": _bert, "vit": _vit, "resnet": _resnet}[kind]
    backbone, blocks, prep, torch_names = build(directory, config, image_size, channels)
    if model and model != kind:
        _check_agrees(directory, kind, backbone, model)
    return Model(model or kind, Classifier(backbone, num_classes),
                 blocks + (("head", r"head/.*"),), prep, torch_names)


# config.json keys by the type the families read them as (a key left out takes the
# family's default): checked first, so a hand-edited file is one named error, not a crash.
_POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "vocab_size", "max_position_embeddings", "type_vocab_size", "embedding_size",
                  "num_channels")
_INTS_OR_PAIRS = ("image_size", "patch_size")  # a ViT's: one number, or [h, w]
_INT_LISTS = ("depths", "hidden_sizes")
_NAMES = ("hidden_act", "layer_type", "position_embedding_type")


def _check_types(directory: str, config: dict) -> None:
    """Raises ``UserError`` naming the first ``config.json`` value of the wrong type."""
    def positive(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    where = f"{directory}/{files.CONFIG}:"
    for key in _POSITIVE_INTS + _INTS_OR_PAIRS:
        v = config.get(key, 1)
        if not (positive(v) or key in _INTS_OR_PAIRS and isinstance(v, list)
                and v and all(map(positive, v))):
            raise UserError(f"{where} {key} {v!r} is not a positive integer")
    for key in _INT_LISTS:
        v = config.get(key, [1])
        if not isinstance(v, list) or not v or not all(map(positive, v)):
            raise UserError(f"{where} {key} {v!r} is not a list of positive integers")
    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise UserError(f"{where} layer_norm_eps {eps!r} is not a number in (0, 1)")
    for key in _NAMES:
        if not isinstance(config.get(key, ""), str):
            raise UserError(f"{where} {key} {config[key]!r} is not a name (a string)")


def describe() -> dict:
    """Returns ``{model_type: what tljax builds for it}`` for ``tljax list``."""
    return dict(MODEL_TYPES)


def _bert(directory, config, image_size, channels):
    if image_size is not None or channels is not None:
        raise UserError(f"model directory {directory!r} holds a text model (token ids), not "
                        f"images (image_size={image_size}, channels={channels}); leave them unset")
    cfg = bert.from_hf_config(config)
    pooling = _bert_pooling(directory)
    prep = Preprocessing(0, 0, (), (), kind="text",
                         max_tokens=min(128, cfg.max_position_embeddings))
    return bert.Bert(cfg, pooling), bert.blocks(cfg, pooling), prep, bert.torch_names(pooling)


def _bert_pooling(directory: str) -> str:
    """Returns ``"mean"`` for a sentence-transformers directory that mean-pools (its
    ``modules.json`` names a Pooling module), else ``"cls"``: the first token through the
    pooler, as ``BertForSequenceClassification`` classifies."""
    for module in files.read_json(directory, MODULES, required=False, expect=list):
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
            folder = files.inside(directory, module.get("path", ""),
                                  f"{os.path.join(directory, MODULES)!r}")
            pooling = files.read_json(folder, files.CONFIG)
            modes = sorted(k[len("pooling_mode_"):] for k, v in pooling.items()
                           if k.startswith("pooling_mode_") and v)
            if modes != ["mean_tokens"]:
                raise UserError(f"sentence-transformers pooling {modes} in {directory!r} is not "
                                "supported; supported: mean_tokens")
            return "mean"
    return "cls"


def _vit(directory, config, image_size, channels):
    cfg = vit.from_hf_config(config)
    if image_size is not None and int(image_size) != cfg.image_size:
        raise UserError(f"image_size {image_size} does not fit the ViT in {directory!r}: its "
                        f"position embeddings are for {cfg.image_size} px (config.json "
                        f"image_size); valid: {cfg.image_size}")
    prep = _image_preprocessing(directory, config, channels, (0.5,) * 3, (0.5,) * 3,
                                cfg.image_size)
    return vit.ViT(cfg), vit.blocks(cfg), prep, vit.TORCH_NAMES


def _resnet(directory, config, image_size, channels):
    backbone = resnet.from_hf_config(config)
    prep = _image_preprocessing(directory, config, channels, IMAGENET_MEAN, IMAGENET_STD,
                                image_size)
    return backbone, resnet.blocks(backbone.depths), prep, resnet.TORCH_NAMES


def _image_preprocessing(directory, config, channels, mean, std, image_size) -> Preprocessing:
    """Returns the image preprocessing of the directory: ``preprocessor_config.json``'s
    size and normalisation where it has them, else the family's defaults (``mean``,
    ``std``, 224 px). tljax feeds ``(x / 255 - mean) / std``; an image processor's own
    rescale factor is folded into the mean and std, so the result is the same."""
    num_channels = int(config.get("num_channels", 3))
    if channels is not None and int(channels) != num_channels:
        raise UserError(f"the weights in {directory!r} take {num_channels}-channel input; got "
                        f"channels={channels}; valid: {num_channels} (or unset: grey images "
                        "are repeated to RGB)")
    p = files.read_json(directory, PREPROCESSOR, required=False)
    if image_size is None:
        image_size = _processor_size(directory, p) or 224
    if p.get("do_normalize", True) is False:
        mean, std = (0.0,), (1.0,)
    else:
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    rescale = p.get("rescale_factor", 1 / 255)
    mean, std = ([mean] if isinstance(mean, (int, float)) else mean,
                 [std] if isinstance(std, (int, float)) else std)
    try:
        scale = 255 * (float(rescale) if p.get("do_rescale", True) else 1)
        mean = tuple(float(mean[i % len(mean)]) / scale for i in range(num_channels))
        std = tuple(float(std[i % len(std)]) / scale for i in range(num_channels))
    except (TypeError, ValueError, ZeroDivisionError):
        raise UserError(f"{directory}/{PREPROCESSOR}: image_mean {mean!r} / image_std {std!r} "
                        f"/ rescale_factor {rescale!r} are not numbers (rescale_factor > 0)"
                        ) from None
    return Preprocessing(int(image_size), num_channels, mean, std)


def _processor_size(directory: str, p: dict) -> int | None:
    """Returns the square input size an image processor gives the model (its crop if it
    crops), or None if it says none; raises ``UserError`` for a non-square one."""
    size = p.get("crop_size") if p.get("do_center_crop") and p.get("crop_size") else p.get("size")
    if isinstance(size, dict):
        if "shortest_edge" in size:
            size = size["shortest_edge"]
        elif size.get("height") == size.get("width"):
            size = size.get("height")
        else:
            raise UserError(f"{directory}/{PREPROCESSOR}: size {size} is not square; tljax "
                            "resizes to a square image_size (set image_size)")
    return int(size) if isinstance(size, (int, float)) and size > 0 else None


# Sizes that decide the shape of some param (or, for BERT, the pooling): a registered model
# agrees with a directory when these are equal. Not compared: layer_norm_eps and
# hidden_act (numbers, not shapes), and a ViT's image_size (a registered ViT is built for
# whatever size it is given).
_NOT_COMPARED = {"layer_norm_eps", "hidden_act", "image_size"}


def _architecture(backbone) -> dict:
    """Returns the shape-deciding numbers of a bert, vit or resnet backbone."""
    if isinstance(backbone, resnet.ResNet):
        widths = backbone.widths or tuple(
            w * backbone.block.expansion for w in (64, 128, 256, 512))
        return {"layer_type": "basic" if backbone.block is resnet.BasicBlock else "bottleneck",
                "depths": list(backbone.depths), "hidden_sizes": list(widths),
                "embedding_size": backbone.stem_width}
    out = {k: v for k, v in dataclasses.asdict(backbone.cfg).items() if k not in _NOT_COMPARED}
    if isinstance(backbone, bert.Bert):
        out["pooling"] = backbone.pooling
    return out


def _check_agrees(directory: str, kind: str, backbone, model: str) -> None:
    """Raises ``UserError`` naming both unless registered ``model`` is of the directory's
    family with the same sizes."""
    if model not in registry.names():
        raise UserError(f"unknown model {model!r}; known: {', '.join(registry.names())}, or "
                        f"leave it unset to take the model of weights {directory!r} ({kind})")
    theirs = registry.create(model, 2).module.backbone
    if not isinstance(theirs, _BACKBONES[kind]):
        raise UserError(f"weights {directory!r} hold a {kind} (config.json model_type), not "
                        f"model {model!r}; leave model unset (or set model={kind}) to build it "
                        "from config.json")
    ours, reg = _architecture(backbone), _architecture(theirs)
    diff = [k for k in ours if ours[k] != reg.get(k)]
    if diff:
        raise UserError(f"weights {directory!r} are a {kind} with "
                        + ", ".join(f"{k}={ours[k]}" for k in diff) + f"; model {model!r} has "
                        + ", ".join(f"{k}={reg.get(k)}" for k in diff)
                        + f"; leave model unset (or set model={kind}) to build it from config.json")
