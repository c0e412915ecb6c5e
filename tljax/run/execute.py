"""One ``RunSpec`` -> trained, evaluated, one result record.

``execute`` reads its spec (never the config): it loads the weights, labels the params by
the strategy's rules, and runs the stages of the spec's training path from ``STAGES``
(cached probe; through the network; LP-FT: the probe, then the network from its head;
domain adaptation: through the network with a target batch beside each source batch).
"""

import os

import jax
import numpy as np

from tljax import checkpoint, strategies, train, weights
from tljax.report.stats import encode_correct
from tljax.run import curves, domain_gap, paths
from tljax.run.plan import RunSpec
from tljax.run.resources import Resources
from tljax.run.settings import (MATMUL_PRECISIONS, compare_pairs, method_name,
                                published_numbers, strategy_config)

# Training path -> its stages, called in order on one ``paths.Run``.
STAGES = {"probe": (paths.fit_probe,), "network": (paths.fit_network,),
          "probe+network": (paths.fit_probe, paths.fit_network),
          "adapt": (paths.fit_adapt,), "probe+adapt": (paths.fit_probe, paths.fit_adapt)}


def execute(spec: RunSpec, resources: Resources, workdir: str | None, log=print) -> dict:
    """Returns ``_execute``'s record of ``spec``, every jitted function of the run traced
    (and so compiled) at the spec's ``matmul_precision``."""
    with jax.default_matmul_precision(MATMUL_PRECISIONS[spec.cfg.matmul_precision]):
        return _execute(spec, resources, workdir, log)


def _execute(spec: RunSpec, resources: Resources, workdir: str | None, log=print) -> dict:
    """Trains and evaluates ``spec``; returns its result record.

    The train state and the final checkpoint are named by the spec's ``run_hash``, so no
    other run ever overwrites them; with ``workdir`` None (``tljax probe``) nothing is
    written. A run whose loss or logits become non-finite returns a ``failed`` record.
    """
    cfg, strategy, seed = spec.cfg, spec.strategy, spec.seed
    model, inputs = resources.model_and_inputs(cfg)
    run_cfg = strategy_config(cfg, strategy)
    say = lambda msg: log(f"{strategy} seed {seed}: {msg}")  # noqa: E731
    # The head (and every ``reinit`` param, with its BatchNorm statistics) starts from this
    # one init at the run's seed; the weights fill the rest of the backbone.
    fresh = model.init(jax.random.key(seed))
    weights_path = spec.point.weights
    variables = weights.load(weights_path, fresh, model.torch_names, keep_head=cfg.keep_head,
                             log=say) if weights_path else fresh
    rules = strategies.labels(spec.point.rules, variables["params"], model.blocks)
    variables = strategies.apply_reinit(variables, fresh, rules)
    trainable, total = strategies.count(variables["params"], rules)
    frozen = strategies.frozen_blocks(rules, model.blocks)
    if run_cfg.bn_mode == "eval":
        frozen = model.block_names
    record = {
        "experiment": cfg.experiment, "model": cfg.model, "weights": cfg.weights or weights_path,
        "dataset": cfg.dataset, "strategy": strategy, "seed": seed, **spec.identity,
        "config_hash": spec.run_hash, "path": spec.point.path,
        "trainable_params": trainable, "total_params": total, "shots": cfg.shots,
        "reinit_params": strategies.count_reinit(variables["params"], rules),
        **published_numbers(cfg, method_name(strategy, cfg.adapt)), **compare_pairs(cfg),
        "frozen_blocks": list(frozen), "bn_mode": run_cfg.bn_mode,
        "optim": run_cfg.to_dict(), "devices": jax.device_count(), "parallel": cfg.parallel,
        "compute_dtype": cfg.compute_dtype, "matmul_precision": cfg.matmul_precision,
        "accum_steps": cfg.accum_steps,
        "shifted": list(cfg.shifted) + (["target"] if cfg.target else []),
        "platform": jax.default_backend(),
    }
    if cfg.target:  # what the run adapted to, and how far apart its features put the domains
        record.update(target=cfg.target, adapt=cfg.adapt)
        if cfg.adapt != "none":
            record["adapt_weight"] = cfg.adapt_weight
        gap_before = domain_gap.measure(model.module, variables, inputs.splits["test"][0],
                                        inputs.splits["target"][0], cfg.eval_batch_size)
    state_dir = os.path.join(workdir, "state", spec.run_hash) if workdir else ""
    run = paths.Run(cfg, run_cfg, model, inputs, variables, rules, tuple(frozen), seed,
                    state_dir, log=say)
    try:
        for stage in STAGES[spec.point.path]:
            stage(run)
        bad = paths.all_finite(run.logits)
        if bad:
            raise FloatingPointError(f"the final model gives non-finite logits on {bad!r}")
    except FloatingPointError as e:
        say(f"{e}; stopped, the last good checkpoint (if any) is kept in {run.state_dir}")
        return {**record, **run.record, "status": "failed", "error": str(e), "metrics": {},
                "train_seconds": round(run.seconds, 3)}
    labels = paths.split_labels(run)  # train: the examples trained on
    metrics = {name: train.classification_metrics(run.logits[name], ys)
               for name, ys in labels.items()}
    # Validation bits too: the report states a selection margin in validation examples.
    correct = {name: encode_correct(np.argmax(run.logits[name], -1) == ys)
               for name, ys in labels.items() if name != "train"}
    record = {**record, **run.record, "train_seconds": round(run.seconds, 3),
              "metrics": metrics, "correct": correct, "status": "ok"}
    if cfg.target:
        record["domain_gap"] = {"before": gap_before, "after": domain_gap.measure(
            model.module, run.variables, inputs.splits["test"][0], inputs.splits["target"][0],
            cfg.eval_batch_size)}
    if workdir is None:
        return record
    safe = strategy.replace(":", "_").replace("+", "_").replace("/", "_")
    record["checkpoint"] = checkpoint.save_variables(
        os.path.join(workdir, "checkpoints", f"{safe}-seed{seed}-{spec.run_hash}"),
        run.variables)
    if os.path.isdir(run.state_dir):
        record["state_dir"] = run.state_dir
    if jax.process_index() == 0:  # one writer in a multi-process run
        curves.write(workdir, spec, record, run_cfg)
    return record
