"""What makes two runs the same run: hashes of the settings that can change a result.

A run is identified by ``run_hash``: the result-affecting settings of its effective config
(per-strategy overrides and swept values applied), its strategy and seed, and the
*content* of its weights (a digest of the file or checkpoint, never its path), of the
tokenizer a text run uses (wherever it comes from), of an image folder it reads (its
images' relative paths and bytes: ``tljax.data.folders``) and of a text file it reads (a
digest of its bytes). Settings that cannot change a result (logging,
checkpoint cadence, eval batch size, cache and data paths) are left out, so changing them
neither reruns a finished run nor abandons a resumable checkpoint. ``sweep_hash`` is the
same without the swept keys (and what is derived from them) and the seed: the records of
one sweep of one strategy under one config share it, and reports never average records
whose ``sweep_hash`` differs. ``settings_hash`` is the same again without the strategy.
"""

import hashlib
import json
import os

from tljax import files

# Keys that cannot change a run's result, or that are resolved before hashing (the
# strategy list and per-strategy overrides become the run's own strategy and settings).
NON_RESULT_KEYS = ("experiment", "log_every", "val_every", "checkpoint_every",
                   "eval_batch_size", "feature_cache", "data_dir", "download", "strategies",
                   "seeds", "sweep", "per_strategy", "select_seeds", "select_metric", "rules",
                   "published", "published_source", "stream_above_mb", "compare")
OPTIM_KEYS = ("steps", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
              "grad_clip", "warmup_steps", "l2sp_alpha", "l2sp_beta")
# What each training path never reads: the cached-feature probe trains no network, and a
# run through the network fits no cached probe.
_NETWORK_KEYS = OPTIM_KEYS + ("bn_mode", "accum_steps", "parallel", "fsdp_regex",
                              "compute_dtype")
_PROBE_KEYS = ("probe_solver", "probe_standardize", "probe_l2_grid")
# A cached probe adapts nothing (tljax.adapt needs steps through the network).
_ADAPT_KEYS = ("adapt", "adapt_weight")
IGNORED_BY_PATH = {"probe": _NETWORK_KEYS + _ADAPT_KEYS, "network": _PROBE_KEYS,
                   "probe+network": (), "adapt": _PROBE_KEYS, "probe+adapt": ()}
# Read only for text datasets: an image run's identity (and its finished results) does not
# depend on them.
TEXT_KEYS = ("text_column", "label_column", "pair_column", "max_length", "tokenizer")
# Read only for image folders (a dataset path that is not a text file).
FOLDER_KEYS = ("folder_image_size",)


def _specs(cfg_dict: dict) -> list:
    """Returns the dataset specs a run reads: its dataset, its shifted test sets and its
    target domain."""
    specs = ([cfg_dict.get("dataset", "")] + list((cfg_dict.get("shifted") or {}).values())
             + [cfg_dict.get("target", "")])
    return [spec for spec in specs if spec]


def _reads_text(cfg_dict: dict) -> bool:
    from tljax.data.datasets import kind, parse_spec

    return any(kind(parse_spec(spec)[0]) == "text" for spec in _specs(cfg_dict))


def folder_contents(specs, data_dir: str = "") -> dict:
    """Returns ``{path: key of its content}`` for each image folder ``specs`` read: the key
    covers its images' relative paths and bytes, not where the folder is nor the size it
    is stored at (``tljax.data.folders.content_key``; ``data_dir`` keeps the digests). An
    edited folder is another dataset, as edited weights are; a copied one is not."""
    from tljax.data import folders
    from tljax.data.datasets import parse_spec

    names = sorted({parse_spec(spec)[0] for spec in specs if spec})
    return {name: folders.content_key(folders.scan(name), data_dir or None) for name in names
            if folders.is_folder_spec(name)}


def text_contents(specs) -> dict:
    """Returns ``{path: sha256 of its bytes}`` for each text file (.csv, .jsonl) ``specs``
    read."""
    from tljax.data.datasets import parse_spec
    from tljax.data.textfiles import is_text_file

    names = sorted({parse_spec(spec)[0] for spec in specs if spec})
    return {name: files.digest(name) for name in names
            if is_text_file(name) and os.path.isfile(name)}


def tokenizer_digest(cfg_dict: dict) -> str:
    """Returns the digest of the tokenizer.json a text run tokenizes with: the one
    ``tokenizer`` names, else the one shipped with the weights (a file beside a weights
    file is not part of the weights' own digest)."""
    from tljax import text
    from tljax.models import zoo

    return files.digest(text.find_tokenizer(cfg_dict.get("tokenizer") or "",
                                           zoo.resolve(cfg_dict.get("weights") or "")))


def digest(obj) -> str:
    """Returns the sha256 (hex) of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_settings(cfg_dict: dict, strategy: str, path: str, weights_digest: str) -> dict:
    """Returns the settings of one run that can change its result.

    ``cfg_dict`` is the run's effective config as a dict; ``path`` its training path
    (``probe``, ``network`` or ``probe+network``); ``weights_digest`` the content digest of
    its weights, a self-pretrained source's included ('' for random init).
    """
    drop = set(NON_RESULT_KEYS) | set(IGNORED_BY_PATH[path])
    text_run = _reads_text(cfg_dict)
    if not text_run:
        drop |= set(TEXT_KEYS)
    contents = folder_contents(_specs(cfg_dict), cfg_dict.get("data_dir") or "")
    if not contents:
        drop |= set(FOLDER_KEYS)
    settings = {k: v for k, v in cfg_dict.items() if k not in drop}
    if contents:
        settings["folder_contents"] = contents
    texts = text_contents(_specs(cfg_dict))
    if texts:
        settings["text_contents"] = texts
    if text_run:  # the tokenizer's bytes, wherever it comes from, not its path
        settings["tokenizer"] = tokenizer_digest(cfg_dict)
    rules = cfg_dict.get("rules", {})
    if strategy in rules:  # only this strategy's own rule list matters
        settings["rules"] = rules[strategy]
    if weights_digest:
        # The weights' bytes say everything about them: a file, a pretrained name, or the
        # self-pretrained source (whose training may read keys this run's path never does).
        settings["weights"] = weights_digest
        settings.pop("pretrain", None)
    elif not cfg_dict.get("pretrain", {}).get("dataset"):
        settings.pop("pretrain", None)
    # Keys added after runs were recorded count only when set: a run that does not use
    # them keeps the identity (and the finished result) it had before they existed.
    for key in ("shifted", "splits", "final_fit", "keep_head", "target"):
        if not settings.get(key):
            settings.pop(key, None)
    if path.startswith("probe") and cfg_dict.get("probe_solver") == "lbfgs":
        # The float64 host solver replaced optax's float32 L-BFGS: its heads differ, so a
        # probe recorded by the old solver is not this run's result.
        settings["probe_lbfgs"] = "host-float64"
    if settings.get("matmul_precision") in ("highest", None):
        # Added later, and the default: full float32, what every run did on a CPU before.
        settings.pop("matmul_precision", None)
    if settings.get("adapt") in ("none", None):  # no adaptation: its weight reads nothing
        settings.pop("adapt", None)
        settings.pop("adapt_weight", None)
    return settings


def run_hash(settings: dict, strategy: str, seed: int) -> str:
    """Returns the identity of one run: same hash, same result (up to the machine)."""
    return digest({"settings": settings, "strategy": strategy, "seed": int(seed)})[:16]


# Settings ``run_settings`` derives from other keys' values (a digest of what they name):
# a sweep over one of those keys changes them too, so the sweep hash drops them with it.
DERIVED_FROM = {"tokenizer": ("tokenizer", "weights"),
                "folder_contents": ("dataset", "target"), "text_contents": ("dataset", "target"),
                # a point without adaptation drops its weight: a swept adapt takes it along
                "adapt_weight": ("adapt",)}


def _unswept(settings: dict, swept_keys) -> dict:
    """Returns ``settings`` less the swept keys and what is derived from them."""
    swept = set(swept_keys)
    drop = swept | {k for k, sources in DERIVED_FROM.items() if swept & set(sources)}
    return {k: v for k, v in settings.items() if k not in drop}


def sweep_hash(settings: dict, strategy: str, swept_keys) -> str:
    """Returns the identity of the sweep a run belongs to: its settings less the swept keys
    and what is derived from them (``DERIVED_FROM``), and less the seed, so every grid
    point and seed of one strategy's sweep shares it."""
    return digest({"settings": _unswept(settings, swept_keys), "strategy": strategy})[:16]


def settings_hash(settings: dict, swept_keys) -> str:
    """Returns the identity of the config a run comes from, whatever its strategy: the
    sweep hash's settings without the strategy (nor its own rule list). The strategies of
    one config share it where their settings agree: the same training path (a probe reads
    other keys than a network run) and no ``per_strategy`` override. A report tells two
    configs of one experiment name apart by it (``tljax.report.transfer``)."""
    rest = {k: v for k, v in _unswept(settings, swept_keys).items() if k != "rules"}
    return digest({"settings": rest})[:16]


def weights_digest(path: str, cache: dict | None = None) -> str:
    """Returns a sha256 of the weights' bytes: a file's content, or every file of a
    checkpoint directory with its relative path. ``cache`` (path and every file's
    ``tljax.files.stamp`` -> digest) spares rereading unchanged files."""
    if not path:
        return ""
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    if os.path.isfile(os.path.join(path, "config.json")):  # a Hugging Face model directory:
        # .git/ and .cache/huggingface/ (a clone, `huggingface-cli download --local-dir`)
        # are rewritten by the tools, never read as the model.
        paths = [f for f in paths if not any(
            part.startswith(".") for part in os.path.relpath(f, path).split(os.sep))]
    stamp = json.dumps([(os.path.relpath(f, path) if f != path else "", *files.stamp(f))
                        for f in paths])
    key = f"{os.path.abspath(path)}|{stamp}"
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    for f in paths:
        h.update((os.path.relpath(f, path) if f != path else "").encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    value = h.hexdigest()
    if cache is not None:
        cache[key] = value
    return value
