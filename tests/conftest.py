"""The test session writes nothing outside a temporary directory of its own.

Before collection (test modules import tljax, matplotlib, ...) every cache location is
pointed inside one fresh directory, removed at the end: tljax's data dir, feature cache
and compilation cache, and ``HOME`` and ``XDG_CACHE_HOME`` themselves, so a default that
falls back to ``~/.cache/...`` lands there too. Subprocesses inherit the environment.
"""

import os
import shutil
import tempfile

import pytest

_SAVED: dict = {}
_ROOT: list = []


def _session_env(root: str) -> dict:
    """Returns the environment variables that keep the session's files under ``root``."""
    return {
        "TLJAX_DATA_DIR": os.path.join(root, "tfds"),
        "TLJAX_FEATURE_CACHE": os.path.join(root, "features"),
        "TLJAX_COMPILATION_CACHE": os.path.join(root, "jax_cache"),
        "HOME": os.path.join(root, "home"),
        "XDG_CACHE_HOME": os.path.join(root, "home", ".cache"),
        "MPLCONFIGDIR": os.path.join(root, "home", ".config", "matplotlib"),
    }


def pytest_configure(config):
    root = tempfile.mkdtemp(prefix="tljax-tests-")
    _ROOT.append(root)
    for key, path in _session_env(root).items():
        _SAVED[key] = os.environ.get(key)
        os.makedirs(path, exist_ok=True)
        os.environ[key] = path


def pytest_unconfigure(config):
    for key, value in _SAVED.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for root in _ROOT:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir():
    """Returns the session's TFDS data dir (``$TLJAX_DATA_DIR``)."""
    return os.environ["TLJAX_DATA_DIR"]


@pytest.fixture
def stubbed_training(monkeypatch):
    """Replaces training by stubs that score a run by its settings alone (lr 3e-2 or L2 1.0
    is right on every split, anything else wrong on val) and note the train split's size:
    the sweep's phases, run records and report are real, and nothing compiles."""
    import numpy as np

    from tljax.run.execute import STAGES

    def logits(run, right):
        out = {}
        for name, (_, ys) in run.inputs.splits.items():
            wrong = name == "val" and not right
            out[name] = np.eye(run.inputs.num_classes)[(ys + wrong) % run.inputs.num_classes]
        return out

    def network(run):
        run.logits = logits(run, run.run_cfg.lr == 3e-2)
        run.record.update(steps=run.run_cfg.steps, n_train=len(run.inputs.splits["train"][1]))

    def probe(run):
        grid = list(run.cfg.probe_l2_grid)
        chosen = 1.0 if 1.0 in grid else grid[0]
        run.logits = logits(run, True)
        run.record["probe"] = {"l2": chosen, "sweep": [{"l2": v} for v in grid],
                               "train_examples": len(run.inputs.splits["train"][1])}

    monkeypatch.setitem(STAGES, "network", (network,))
    monkeypatch.setitem(STAGES, "probe", (probe,))
