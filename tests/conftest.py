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
