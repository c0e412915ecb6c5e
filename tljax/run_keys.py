"""What makes two runs the same run: hashes of the settings that can change a result.

A run is identified by ``run_hash``: the result-affecting settings of its effective config
(per-strategy overrides and swept values applied), its strategy and seed, and the
*content* of its weights (a digest of the file or checkpoint, never its path). Settings
that cannot change a result (logging, checkpoint cadence, eval batch size, cache and data
paths) are left out, so changing them neither reruns a finished run nor abandons a
resumable checkpoint. ``sweep_hash`` is the same without the swept keys and the seed: the
records of one sweep of one strategy under one config share it, and reports never average
records whose ``sweep_hash`` differs.
"""

import hashlib
import json
import os

# Keys that cannot change a run's result, or that are resolved before hashing (the
# strategy list and per-strategy overrides become the run's own strategy and settings).
NON_RESULT_KEYS = ("experiment", "log_every", "checkpoint_every", "eval_batch_size",
                   "feature_cache", "data_dir", "download", "strategies", "seeds", "sweep",
                   "per_strategy", "select_seeds", "select_metric", "rules")
OPTIM_KEYS = ("steps", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
              "grad_clip", "warmup_steps", "l2sp_alpha", "l2sp_beta")
# What each training path never reads: the cached-feature probe trains no network, and a
# run through the network fits no cached probe.
_NETWORK_KEYS = OPTIM_KEYS + ("bn_mode", "accum_steps", "parallel", "fsdp_regex",
                              "compute_dtype")
_PROBE_KEYS = ("probe_solver", "probe_standardize", "probe_l2_grid")
IGNORED_BY_PATH = {"probe": _NETWORK_KEYS, "network": _PROBE_KEYS, "probe+network": ()}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_settings(cfg_dict: dict, strategy: str, path: str, weights_digest: str) -> dict:
    """Returns the settings of one run that can change its result.

    ``cfg_dict`` is the run's effective config as a dict; ``path`` its training path
    (``probe``, ``network`` or ``probe+network``); ``weights_digest`` the content digest of
    its weights, a self-pretrained source's included ('' for random init).
    """
    drop = set(NON_RESULT_KEYS) | set(IGNORED_BY_PATH[path])
    settings = {k: v for k, v in cfg_dict.items() if k not in drop}
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
    if not settings.get("shifted"):
        settings.pop("shifted", None)
    return settings


def run_hash(settings: dict, strategy: str, seed: int) -> str:
    """Returns the identity of one run: same hash, same result (up to the machine)."""
    return _digest({"settings": settings, "strategy": strategy, "seed": int(seed)})[:16]


def sweep_hash(settings: dict, strategy: str, swept_keys) -> str:
    """Returns the identity of the sweep a run belongs to: its settings less the swept keys
    (and the seed), so every grid point and seed of one strategy's sweep shares it."""
    rest = {k: v for k, v in settings.items() if k not in set(swept_keys)}
    return _digest({"settings": rest, "strategy": strategy})[:16]


def weights_digest(path: str, cache: dict | None = None) -> str:
    """Returns a sha256 of the weights' bytes: a file's content, or every file of a
    checkpoint directory with its relative path. ``cache`` (path, size, mtime -> digest)
    spares rereading an unchanged file."""
    if not path:
        return ""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    stamp = json.dumps([(os.path.relpath(f, path) if f != path else "", os.path.getsize(f),
                         os.stat(f).st_mtime_ns) for f in files])
    key = f"{os.path.abspath(path)}|{stamp}"
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    for f in files:
        h.update((os.path.relpath(f, path) if f != path else "").encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()
    if cache is not None:
        cache[key] = digest
    return digest
