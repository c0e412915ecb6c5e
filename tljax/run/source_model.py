"""A source model the experiment trains itself, saved with orbax and loaded back as weights.

Used when ``weights`` is empty and ``pretrain.dataset`` is set: the self-pretrained
route of the miniature experiments (train on digits 0-4, transfer to 5-9). The plan
trains it (once, before any run) and takes its checkpoint's digest into each run's
identity, like any other weights.
"""

import hashlib
import json
import os
import re

import jax
import ml_collections
import numpy as np

from tljax import checkpoint, data, locks, models, optim, parallel, strategies, train
from tljax.errors import UserError
from tljax.run import identity
from tljax.run.settings import MATMUL_PRECISIONS
from tljax.run.identity import OPTIM_KEYS

# L2-SP pulls toward pretrained values; a source trained from random init has none.
_SOURCE_OPTIM_KEYS = tuple(k for k in OPTIM_KEYS if not k.startswith("l2sp"))


def source_key(cfg) -> str:
    """Returns the directory name of ``cfg``'s source model: a short readable label (model,
    dataset, steps; file-name characters only) and a hash of everything its training
    reads: the model and its input size, ``pretrain.*``, the optimiser settings it shares
    with the config, and what its datasets hold (an image folder's files and the size it
    is stored at, ``identity.folder_contents``), so any change trains a new one."""
    p, name = cfg.pretrain, cfg.model or "cnn"  # '': no weights to take a model from
    # An empty ``mix`` (a key added later) is left out: a source trained before it existed
    # keeps its key, so a finished workdir reuses it.
    settings = {"model": name, "image_size": cfg.image_size, "channels": cfg.channels,
                "pretrain": {k: v for k, v in p.to_dict().items() if k != "mix" or v},
                **{k: cfg[k] for k in _SOURCE_OPTIM_KEYS}}
    if cfg.matmul_precision != "highest":  # highest keeps the key sources had before it
        settings["matmul_precision"] = cfg.matmul_precision
    contents = identity.folder_contents([p.dataset, *p.mix], cfg.data_dir)
    if contents:  # a catalog dataset is named by its spec; a folder by what it holds
        settings.update(folder_contents=contents, folder_image_size=cfg.folder_image_size)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    return f"{_label(name, p.dataset, p.steps)}-{digest.hexdigest()[:12]}"


def _label(model: str, spec: str, steps: int) -> str:
    """Returns ``model-dataset-steps`` in file-name characters, at most 60 of them: of a
    dataset path only its last part (never a separator, so never outside the folder)."""
    last = str(spec).rstrip("/").rsplit("/", 1)[-1]  # ':' and '@' never occur in a path
    return re.sub(r"[^A-Za-z0-9@._-]+", "_", f"{model}-{last}-{steps}")[:60]


def _train_split(cfg, ds, prep) -> tuple:
    """Returns the source's training inputs and labels: ``pretrain.dataset``'s train split,
    then each ``pretrain.mix`` spec's (e.g. a corrupted view, so the source has seen that
    variation), in that order."""
    xs, ys = [data.preprocess(ds.splits["train"].images, prep)], [ds.splits["train"].labels]
    for spec in cfg.pretrain.mix:
        extra = data.load(spec, data_dir=cfg.data_dir or None, download=cfg.download,
                          folder_image_size=cfg.folder_image_size)
        if extra.num_classes != ds.num_classes:
            raise UserError(f"pretrain.mix dataset {spec!r} has {extra.num_classes} classes; "
                            f"pretrain.dataset {cfg.pretrain.dataset!r} has {ds.num_classes}")
        xs.append(data.preprocess(extra.splits["train"].images, prep))
        ys.append(extra.splits["train"].labels)
    return np.concatenate(xs), np.concatenate(ys)


def source_model(cfg, workdir: str, log=print) -> str:
    """Trains the source model on ``cfg.pretrain.dataset`` (full fine-tuning from random init)
    unless a checkpoint of the same settings exists; returns its orbax checkpoint path.

    One process trains it: process 0 of a multi-process run (the others wait for its word,
    then read the checkpoint from the shared workdir), and of separate runs sharing the
    workdir, the first to take its lock (the others wait, then reuse it).
    """
    path = os.path.join(os.path.abspath(workdir), "pretrained", source_key(cfg))
    if not parallel.is_writer():
        theirs = parallel.wait_for_writer("source model")
        if theirs != path:  # its training data or settings differ from process 0's
            raise UserError(f"process 0 trained the source model {theirs}; this process's "
                            f"settings and data make it {path}: every process needs the same "
                            "config and the same bytes of pretrain.dataset")
        if not os.path.isdir(path):
            raise UserError(f"process 0 saved the source model to {path}, which this process "
                            "cannot see; a multi-process run needs a workdir on storage every "
                            "process shares")
        log(f"source model: reusing {path} (trained by process 0)")
        return path
    with locks.held(locks.lock_path(os.path.dirname(path), os.path.basename(path)),
                    f"training the source model {path}", log=log):
        if os.path.isdir(path):
            log(f"source model: reusing {path}")
        else:
            _train_source(cfg, path, log)
    parallel.writer_done("source model", path)
    return path


def _train_source(cfg, path: str, log) -> None:
    """Trains ``cfg``'s source model and saves it to ``path`` (this process alone)."""
    p = cfg.pretrain
    ds = data.load(p.dataset, data_dir=cfg.data_dir or None, download=cfg.download,
                   folder_image_size=cfg.folder_image_size)
    model = models.create(cfg.model or "cnn", ds.num_classes, cfg.image_size, cfg.channels)
    x, y = _train_split(cfg, ds, model.preprocessing)
    variables = model.init(jax.random.key(p.seed))
    rules = strategies.labels("full_ft", variables["params"], model.blocks)
    run_cfg = ml_collections.ConfigDict({k: cfg[k] for k in _SOURCE_OPTIM_KEYS})
    run_cfg.update(steps=p.steps, lr=p.lr, batch_size=p.batch_size)
    tx = optim.make(run_cfg, rules)
    step = train.make_step(model.module, rules, tx)
    xt = data.preprocess(ds.splits["test"].images, model.preprocessing)
    # Trained and scored at the run's precision, as every run is (run.execute).
    precision = jax.default_matmul_precision(MATMUL_PRECISIONS[cfg.matmul_precision])
    try:
        with precision:
            state, _, seconds = train.fit(step, train.init_state(variables, tx),
                                          data.batches(x, y, p.batch_size, p.seed), p.steps,
                                          desc=f"pretrain on {p.dataset}")
            final = {"params": state.params, "batch_stats": state.batch_stats}
            metrics = train.evaluate(train.make_predict(model.module), final, xt,
                                     ds.splits["test"].labels, cfg.eval_batch_size)
    except FloatingPointError as e:  # nothing is saved: a rerun trains it again
        raise UserError(f"the source model's pretraining on {p.dataset!r} diverged ({e}); "
                        f"lower pretrain.lr (now {p.lr:g})") from None
    checkpoint.save_variables(path, final, alone=True)
    log(f"source model: {model.name} trained on {p.dataset} for {p.steps} steps in "
        f"{seconds:.1f}s, test accuracy {metrics['accuracy']:.3f}; saved to {path}")
