"""Shared fixtures: an isolated TFDS data dir for the whole session."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
    """Points tljax's data dir at a fresh session directory; returns its path."""
    path = str(tmp_path_factory.mktemp("tfds"))
    old = os.environ.get("TLJAX_DATA_DIR")
    os.environ["TLJAX_DATA_DIR"] = path
    yield path
    if old is None:
        os.environ.pop("TLJAX_DATA_DIR", None)
    else:
        os.environ["TLJAX_DATA_DIR"] = old
