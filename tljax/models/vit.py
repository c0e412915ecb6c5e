"""Vision Transformer (Dosovitskiy et al. 2021) with timm's module names
(``patch_embed/proj``, ``cls_token``, ``pos_embed``, ``blocks/N/attn/qkv``, ``norm``),
so timm weights map one to one; Hugging Face ``ViTModel`` weights map through
``hf_to_timm``. Features are the class token after the final norm.
"""

import dataclasses
import re
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tljax.errors import UserError
from tljax.models import blocktable
from tljax.models.layers import activation, attention
from tljax.weights.torch_names import renamed


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture numbers of a ViT; the defaults are ViT-B/16 at 224 px.

    ``image_size`` fixes the number of patches, hence the shape of ``pos_embed``: a ViT
    runs on the size it was built for (a multiple of ``patch_size``).
    """

    patch_size: int = 16
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    image_size: int = 224
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"  # a layers.ACTIVATIONS name
    qkv_bias: bool = True


VIT_B16 = ViTConfig()
VIT_TINY16 = ViTConfig(hidden_size=192, depth=12, num_heads=3, mlp_dim=768)


class Attention(nn.Module):
    cfg: ViTConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        heads, dim = c.num_heads, c.hidden_size // c.num_heads
        qkv = nn.Dense(3 * c.hidden_size, use_bias=c.qkv_bias, name="qkv")(x)
        qkv = qkv.reshape(x.shape[:2] + (3, heads, dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        # cuDNN's flash attention on a GPU where dtype and shapes allow (no (heads, tokens,
        # tokens) matrix kept for the backward pass), XLA's einsum-softmax-einsum elsewhere;
        # softmax(q k^T / sqrt(dim)) v either way (layers.attention).
        out = attention(q, k, v).reshape(x.shape)
        return nn.Dense(c.hidden_size, name="proj")(out)


class Mlp(nn.Module):
    cfg: ViTConfig

    @nn.compact
    def __call__(self, x):
        x = activation(self.cfg.hidden_act)(nn.Dense(self.cfg.mlp_dim, name="fc1")(x))
        return nn.Dense(self.cfg.hidden_size, name="fc2")(x)


class Block(nn.Module):
    cfg: ViTConfig

    @nn.compact
    def __call__(self, x):
        eps = self.cfg.layer_norm_eps
        x = x + Attention(self.cfg, name="attn")(nn.LayerNorm(eps, name="norm1")(x))
        return x + Mlp(self.cfg, name="mlp")(nn.LayerNorm(eps, name="norm2")(x))


class _PatchEmbed(nn.Module):
    cfg: ViTConfig

    @nn.compact
    def __call__(self, x):
        p = self.cfg.patch_size
        x = nn.Conv(self.cfg.hidden_size, (p, p), (p, p), padding="VALID", name="proj")(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class _Blocks(nn.Module):
    """``blocks``: children named ``0``, ``1``, ... as in timm."""

    cfg: ViTConfig

    @nn.compact
    def __call__(self, x):
        for i in range(self.cfg.depth):
            x = Block(self.cfg, name=str(i))(x)
        return x


class ViT(nn.Module):
    """ViT backbone: patches + class token + position embeddings -> blocks -> norm -> CLS."""

    cfg: ViTConfig = VIT_B16

    @nn.compact
    def __call__(self, x, train: bool = False, frozen_blocks: Sequence[str] = ()):
        """Returns the class token's features, shape (batch, hidden_size)."""
        c = self.cfg
        blocktable.frozen_paths(self, frozen_blocks, table(c))  # checks the names; no BatchNorm
        if x.shape[1:3] != (c.image_size, c.image_size):
            raise UserError(f"ViT built for {c.image_size} px gets {x.shape[1]}x{x.shape[2]} px "
                            f"input; valid: {c.image_size}x{c.image_size}")
        x = _PatchEmbed(c, name="patch_embed")(x)
        n = (c.image_size // c.patch_size) ** 2
        init = nn.initializers.normal(0.02)
        cls = self.param("cls_token", init, (1, 1, c.hidden_size))
        pos = self.param("pos_embed", init, (1, n + 1, c.hidden_size))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, c.hidden_size)), x], 1) + pos
        x = _Blocks(c, name="blocks")(x)
        return nn.LayerNorm(c.layer_norm_eps, name="norm")(x)[:, 0]


def table(cfg: ViTConfig = VIT_B16) -> tuple:
    """Returns the block table ``(name, module path prefixes)``, input to output (blocktable)."""
    return ((("embed", ("patch_embed", "cls_token", "pos_embed")),)
            + tuple((f"blocks.{i}", (f"blocks/{i}",)) for i in range(cfg.depth))
            + (("norm", ("norm",)),))


def blocks(cfg: ViTConfig = VIT_B16) -> tuple:
    """Returns the block order ``(name, param-path regex)``, input to output, without the head."""
    return blocktable.regexes(table(cfg))


# Hugging Face's ViTConfig defaults, for keys an older config.json leaves out.
_HF_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                "image_size": 224, "patch_size": 16, "qkv_bias": True}


def from_hf_config(config: dict) -> ViTConfig:
    """Returns the ``ViTConfig`` of a Hugging Face ViT ``config.json`` (as a dict).

    Raises ``UserError`` for numbers this ViT cannot be built with (an image size that is
    not whole patches, heads that do not divide the width, an unknown activation).
    """
    c = {k: config.get(k, v) for k, v in _HF_DEFAULTS.items()}
    for key in ("image_size", "patch_size"):  # HF allows [h, w]; tljax ViTs are square
        if isinstance(c[key], (list, tuple)):
            if len(set(c[key])) != 1:
                raise UserError(f"ViT {key} {c[key]} is not square; supported: one number")
            c[key] = c[key][0]
    cfg = ViTConfig(patch_size=int(c["patch_size"]), hidden_size=c["hidden_size"],
                    depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                    mlp_dim=c["intermediate_size"], image_size=int(c["image_size"]),
                    layer_norm_eps=c["layer_norm_eps"], hidden_act=c["hidden_act"],
                    qkv_bias=bool(c["qkv_bias"]))
    if cfg.image_size % cfg.patch_size:
        raise UserError(f"ViT image_size {cfg.image_size} is not a multiple of patch_size "
                        f"{cfg.patch_size}")
    if cfg.hidden_size % cfg.num_heads:
        raise UserError(f"ViT hidden_size {cfg.hidden_size} does not divide into "
                        f"num_attention_heads {cfg.num_heads}")
    activation(cfg.hidden_act)  # names the known activations
    return cfg


_HF_RENAMES = [
    (r"^(vit\.)?embeddings\.cls_token$", "cls_token"),
    (r"^(vit\.)?embeddings\.position_embeddings$", "pos_embed"),
    (r"^(vit\.)?embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(vit\.)?(encoder\.layer|layers)\.(\d+)\.(attention\.output\.dense|attention\.o_proj)\.",
     r"blocks.\3.attn.proj."),
    (r"^(vit\.)?(encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"blocks.\3.norm1."),
    (r"^(vit\.)?(encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"blocks.\3.norm2."),
    (r"^(vit\.)?(encoder\.layer|layers)\.(\d+)\.(intermediate\.dense|mlp\.fc1)\.",
     r"blocks.\3.mlp.fc1."),
    (r"^(vit\.)?(encoder\.layer|layers)\.(\d+)\.(output\.dense|mlp\.fc2)\.", r"blocks.\3.mlp.fc2."),
    (r"^(vit\.)?layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
_HF_QKV = re.compile(r"^(vit\.)?(encoder\.layer|layers)\.(\d+)\.attention\.(attention\.)?"
                     r"(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")


def hf_to_timm(tensors: dict) -> dict:
    """Returns Hugging Face ViT tensors under timm's names (q, k, v fused into ``qkv``).

    Names already in timm's layout pass through unchanged. HF's pooler becomes
    ``pooler.*`` (a ViT family ignores it, and the loader reports it: the features are
    the class token after the final norm, which is what ``ViTForImageClassification``
    classifies). A layer missing one of q, k, v keeps its parts under their own names, so
    the strict loader names them.
    """
    out, qkv = {}, {}
    for name, array in tensors.items():
        m = _HF_QKV.match(name)
        if m:
            part = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}[m[5]]
            qkv.setdefault((m[3], m[6]), {})[part] = (name, array)
            continue
        name = re.sub(r"^(vit\.)?pooler\.", "pooler.", name)
        out[renamed(name, _HF_RENAMES)] = array
    for (layer, leaf), parts in qkv.items():
        if len(parts) == 3:
            out[f"blocks.{layer}.attn.qkv.{leaf}"] = np.concatenate(
                [parts[0][1], parts[1][1], parts[2][1]])
        else:
            out.update(parts.values())
    return out


# How stored tensors map to this ViT (weights.torch_names.to_tljax): timm's names as they
# are, Hugging Face's through hf_to_timm.
TORCH_NAMES = {"head": ("head",), "rename": hf_to_timm, "ignore": r"pooler\..*",
               "ignore_why": "Hugging Face's pooler: the features are the class token after "
                             "the final norm, which ViTForImageClassification classifies"}
