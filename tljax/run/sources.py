"""Where a run's model and weights come from: a pretrained name, a file or checkpoint, a
Hugging Face model directory, or random init; and the content digest of those weights.

A self-pretrained source (``pretrain.dataset``) is ``tljax.run.source_model``'s.
"""

import json
import os

import jax

from tljax import models
from tljax.models import zoo
from tljax.run import identity

DEFAULT_MODEL = "cnn"  # what an empty ``model`` runs when the weights name no model


def model_name(cfg) -> str:
    """Returns the model ``cfg`` runs: ``cfg.model`` if set, else the weights' own (a
    pretrained name's model, a model directory's config.json ``model_type``), else ``cnn``."""
    if cfg.model:
        return cfg.model
    if cfg.weights in zoo.names():
        return zoo.entry(cfg.weights).model
    if models.hub.is_model_dir(cfg.weights):
        return models.hub.model_type(cfg.weights)
    return DEFAULT_MODEL


def create_model(cfg, num_classes: int) -> models.Model:
    """Returns the config's model; pretrained weights by name bring their own preprocessing,
    and a Hugging Face model directory its own architecture (config.json) and preprocessing."""
    if cfg.weights in zoo.names():
        return zoo.create(cfg.weights, num_classes, cfg.image_size, cfg.channels)
    if models.hub.is_model_dir(cfg.weights):
        return models.hub.create(cfg.weights, num_classes, cfg.image_size, cfg.channels,
                                 model=cfg.model)
    return models.create(model_name(cfg), num_classes, cfg.image_size, cfg.channels)


def resolve_weights(cfg) -> str:
    """Returns the weights file or checkpoint path of ``cfg.weights`` ('' for random init)."""
    return zoo.resolve(cfg.weights)


class WeightsDigests:
    """Content digests of weights, kept beside the results in ``workdir``: a large
    checkpoint is hashed once, and again only when its files change (``tljax.files.stamp``)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".weights_digests.json")
        try:
            with open(self.path) as f:
                self.known = dict(json.load(f))
        except (OSError, ValueError, TypeError):
            self.known = {}

    def __call__(self, weights_path: str) -> str:
        """Returns the digest of ``weights_path``'s bytes ('' for random init)."""
        before = len(self.known)
        digest = identity.weights_digest(weights_path, self.known)
        if len(self.known) != before and jax.process_index() == 0:  # one writer
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.known, f)
            os.replace(tmp, self.path)
        return digest
