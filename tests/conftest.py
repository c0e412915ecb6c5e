"""Shared fixtures: an isolated TFDS data dir for the whole session."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
    """Points tljax's data dir (and compilation cache) at fresh session directories;
    returns the data dir."""
    path = str(tmp_path_factory.mktemp("tfds"))
    saved = {k: os.environ.get(k) for k in ("TLJAX_DATA_DIR", "TLJAX_COMPILATION_CACHE")}
    os.environ["TLJAX_DATA_DIR"] = path
    os.environ["TLJAX_COMPILATION_CACHE"] = str(tmp_path_factory.mktemp("jax_cache"))
    yield path
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
