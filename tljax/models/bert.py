"""BERT encoders with Hugging Face's module names (``embeddings/word_embeddings``,
``encoder/layer/N/attention/self/query``, ...), so ``BertModel`` weights map one to one.

Text input for classification is packed into one int array ``(batch, 3, tokens)``:
input ids, attention mask, token type ids (``tljax.text.encode`` makes it), so text runs
through the same data pipeline, train step and strategies as images. Dropout is not
applied (training is deterministic given the data order).
"""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from tljax.errors import UserError
from tljax.models import blocktable
from tljax.models.layers import activation, attention
from tljax.weights.torch_names import renamed


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture numbers of a BERT encoder (Hugging Face ``config.json`` names)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # a layers.ACTIVATIONS name


MINILM_L6 = BertConfig()
BERT_BASE = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072)


def _layer_norm(cfg, name):
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name=name)


class Embeddings(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids):
        c = self.cfg
        positions = jnp.arange(input_ids.shape[1])[None]
        x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size,
                        name="position_embeddings")(positions)
             + nn.Embed(c.type_vocab_size, c.hidden_size,
                        name="token_type_embeddings")(token_type_ids))
        return _layer_norm(c, "LayerNorm")(x)


class SelfAttention(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        c = self.cfg
        heads, dim = c.num_attention_heads, c.hidden_size // c.num_attention_heads

        def split(name):
            y = nn.Dense(c.hidden_size, name=name)(x)
            return y.reshape(y.shape[:2] + (heads, dim))

        q, k, v = split("query"), split("key"), split("value")
        # Fused attention as in tljax.models.vit (layers.attention); the padding mask is the
        # additive bias it was before, 0 on tokens and the dtype's lowest value on padding.
        return attention(q, k, v, bias=mask_bias).reshape(x.shape)


class _DenseNorm(nn.Module):
    """``dense`` then ``LayerNorm(x + residual)``: HF's ``*Output`` modules."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, x, residual):
        return _layer_norm(self.cfg, "LayerNorm")(
            nn.Dense(self.cfg.hidden_size, name="dense")(x) + residual)


class Attention(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        return _DenseNorm(self.cfg, name="output")(
            SelfAttention(self.cfg, name="self")(x, mask_bias), x)


class Intermediate(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x):
        return activation(self.cfg.hidden_act)(
            nn.Dense(self.cfg.intermediate_size, name="dense")(x))


class Layer(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        x = Attention(self.cfg, name="attention")(x, mask_bias)
        return _DenseNorm(self.cfg, name="output")(Intermediate(self.cfg, name="intermediate")(x), x)


class Encoder(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        return _Layers(self.cfg, name="layer")(x, mask_bias)


class _Layers(nn.Module):
    """``encoder/layer``: children named ``0``, ``1``, ... as in Hugging Face."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        for i in range(self.cfg.num_hidden_layers):
            x = Layer(self.cfg, name=str(i))(x, mask_bias)
        return x


class Bert(nn.Module):
    """A BERT encoder; ``pooling`` None returns the last hidden states (batch, tokens, hidden),
    ``"mean"`` the masked mean over tokens (sentence-transformers), ``"cls"`` the first
    token through ``pooler`` (dense + tanh, as ``BertForSequenceClassification``).
    """

    cfg: BertConfig = MINILM_L6
    pooling: str | None = None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, train: bool = False,
                 frozen_blocks: Sequence[str] = ()):
        """Returns hidden states or pooled features, as ``pooling`` says.

        ``input_ids`` may be the packed ``(batch, 3, tokens)`` array of ``tljax.text``.
        """
        blocktable.frozen_paths(self, frozen_blocks, table(self.cfg, self.pooling))  # no BatchNorm
        if input_ids.ndim == 3:
            input_ids, attention_mask, token_type_ids = (input_ids[:, 0], input_ids[:, 1],
                                                         input_ids[:, 2])
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = Embeddings(self.cfg, name="embeddings")(input_ids, token_type_ids)
        mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0,
                              jnp.finfo(x.dtype).min).astype(x.dtype)
        x = Encoder(self.cfg, name="encoder")(x, mask_bias)
        if self.pooling is None:
            return x
        if self.pooling == "mean":
            m = attention_mask[..., None].astype(x.dtype)
            return (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
        return _Pooler(self.cfg, name="pooler")(x[:, 0])


class _Pooler(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.cfg.hidden_size, name="dense")(x))


def table(cfg: BertConfig = MINILM_L6, pooling: str | None = "mean") -> tuple:
    """Returns the block table ``(name, module path prefixes)``, input to output (blocktable)."""
    order = (("embeddings", ("embeddings",)),) + tuple(
        (f"layer.{i}", (f"encoder/layer/{i}",)) for i in range(cfg.num_hidden_layers))
    return order + ((("pooler", ("pooler",)),) if pooling == "cls" else ())


def blocks(cfg: BertConfig = MINILM_L6, pooling: str = "mean") -> tuple:
    """Returns the block order ``(name, param-path regex)``, input to output, without the head."""
    return blocktable.regexes(table(cfg, pooling))


# Hugging Face's BertConfig defaults, for keys an older config.json leaves out.
_HF_DEFAULTS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
                "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12}


def from_hf_config(config: dict) -> BertConfig:
    """Returns the ``BertConfig`` of a Hugging Face BERT ``config.json`` (as a dict).

    Raises ``UserError`` for what this encoder does not implement (relative position
    embeddings, heads that do not divide the hidden size, an unknown activation).
    """
    position = config.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise UserError(f"BERT position_embedding_type {position!r} is not supported; "
                        "supported: absolute")
    cfg = BertConfig(**{k: config.get(k, v) for k, v in _HF_DEFAULTS.items()})
    if cfg.hidden_size % cfg.num_attention_heads:
        raise UserError(f"BERT hidden_size {cfg.hidden_size} does not divide into "
                        f"num_attention_heads {cfg.num_attention_heads}")
    activation(cfg.hidden_act)  # names the known activations
    return cfg


_HF_LEGACY = [(r"\.LayerNorm\.gamma$", ".LayerNorm.weight"),
              (r"\.LayerNorm\.beta$", ".LayerNorm.bias")]


def hf_legacy_names(tensors: dict) -> dict:
    """Returns ``tensors`` with the TF-era ``LayerNorm.gamma/beta`` names of old BERT
    checkpoints (``bert-base-uncased``'s ``pytorch_model.bin``) as ``weight/bias``."""
    return {renamed(name, _HF_LEGACY): array for name, array in tensors.items()}


def torch_names(pooling: str | None) -> dict:
    """Returns how stored BERT tensors map to ``Bert(cfg, pooling)`` (see
    ``weights.torch_names.to_tljax``): Hugging Face's names, ``bert.`` stripped, the
    ``classifier`` as head; the pretraining heads (``cls.*``: masked LM, next sentence) and,
    without ``"cls"`` pooling, the pooler are ignored and reported."""
    ignore = r"cls\..*" + ("" if pooling == "cls" else r"|pooler\..*")
    why = ("BERT's pretraining heads (cls.*: masked LM, next sentence)"
           + (" and pooler are unused: the features are mean-pooled tokens"
              if pooling != "cls" else " are unused by a classifier"))
    return {"head": ("classifier",), "strip": "bert.", "ignore": ignore, "ignore_why": why,
            "embeddings": r"embeddings\.\w+_embeddings", "rename": hf_legacy_names}
