"""A source model the experiment trains itself, saved with orbax and loaded back as weights.

Used when ``weights`` is empty and ``pretrain.dataset`` is set: the self-pretrained
route of the miniature experiments (train on digits 0-4, transfer to 5-9).
"""

import hashlib
import json
import os

import jax
import ml_collections
import numpy as np

from tljax import checkpoint, data, models, optim, strategies, train
from tljax.errors import UserError
from tljax.run_keys import OPTIM_KEYS

# L2-SP pulls toward pretrained values; a source trained from random init has none.
_SOURCE_OPTIM_KEYS = tuple(k for k in OPTIM_KEYS if not k.startswith("l2sp"))


def source_key(cfg) -> str:
    """Returns the directory name of ``cfg``'s source model: readable, then a hash of every
    setting its training reads (the model, its input size, ``pretrain.*`` and the
    optimiser settings it shares with the config), so any change trains a new one."""
    p, name = cfg.pretrain, cfg.model or "cnn"  # '': no weights to take a model from
    # An empty ``mix`` (a key added later) is left out: a source trained before it existed
    # keeps its key, so a finished workdir reuses it.
    settings = {"model": name, "image_size": cfg.image_size, "channels": cfg.channels,
                "pretrain": {k: v for k, v in p.to_dict().items() if k != "mix" or v},
                **{k: cfg[k] for k in _SOURCE_OPTIM_KEYS}}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    readable = f"{name}-{p.dataset}-{p.steps}".replace(":", "_").replace(",", "_")
    return f"{readable}-{digest.hexdigest()[:12]}"


def _train_split(cfg, ds, prep) -> tuple:
    """Returns the source's training inputs and labels: ``pretrain.dataset``'s train split,
    then each ``pretrain.mix`` spec's (e.g. a corrupted view, so the source has seen that
    variation), in that order."""
    xs, ys = [data.preprocess(ds.splits["train"].images, prep)], [ds.splits["train"].labels]
    for spec in cfg.pretrain.mix:
        extra = data.load(spec, data_dir=cfg.data_dir or None, download=cfg.download)
        if extra.num_classes != ds.num_classes:
            raise UserError(f"pretrain.mix dataset {spec!r} has {extra.num_classes} classes; "
                            f"pretrain.dataset {cfg.pretrain.dataset!r} has {ds.num_classes}")
        xs.append(data.preprocess(extra.splits["train"].images, prep))
        ys.append(extra.splits["train"].labels)
    return np.concatenate(xs), np.concatenate(ys)


def source_model(cfg, workdir: str, log=print) -> str:
    """Trains the source model on ``cfg.pretrain.dataset`` (full fine-tuning from random init)
    unless a checkpoint of the same settings exists; returns its orbax checkpoint path.
    """
    p = cfg.pretrain
    path = os.path.join(os.path.abspath(workdir), "pretrained", source_key(cfg))
    if os.path.isdir(path):
        log(f"source model: reusing {path}")
        return path
    ds = data.load(p.dataset, data_dir=cfg.data_dir or None, download=cfg.download)
    model = models.create(cfg.model or "cnn", ds.num_classes, cfg.image_size, cfg.channels)
    x, y = _train_split(cfg, ds, model.preprocessing)
    variables = model.init(jax.random.key(p.seed))
    rules = strategies.labels("full_ft", variables["params"], model.blocks)
    run_cfg = ml_collections.ConfigDict({k: cfg[k] for k in _SOURCE_OPTIM_KEYS})
    run_cfg.update(steps=p.steps, lr=p.lr, batch_size=p.batch_size)
    tx = optim.make(run_cfg, rules)
    step = train.make_step(model.module, rules, tx)
    try:
        state, _, seconds = train.fit(step, train.init_state(variables, tx),
                                      data.batches(x, y, p.batch_size, p.seed), p.steps,
                                      desc=f"pretrain on {p.dataset}")
        final = {"params": state.params, "batch_stats": state.batch_stats}
        xt = data.preprocess(ds.splits["test"].images, model.preprocessing)
        metrics = train.evaluate(train.make_predict(model.module), final, xt,
                                 ds.splits["test"].labels, cfg.eval_batch_size)
    except FloatingPointError as e:  # nothing is saved: a rerun trains it again
        raise UserError(f"the source model's pretraining on {p.dataset!r} diverged ({e}); "
                        f"lower pretrain.lr (now {p.lr:g})") from None
    checkpoint.save_variables(path, final)
    log(f"source model: {model.name} trained on {p.dataset} for {p.steps} steps in "
        f"{seconds:.1f}s, test accuracy {metrics['accuracy']:.3f}; saved to {path}")
    return path
