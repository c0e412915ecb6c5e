"""The test suite keeps its files in temporary directories, never in the user's caches."""

import os
import tempfile

from tljax import data, probe


def test_every_cache_and_home_resolve_inside_the_temp_dir():
    """tljax's default cache and data paths, and ``~`` itself, lie under the temp dir."""
    tmp = os.path.realpath(tempfile.gettempdir())
    paths = {"feature cache": probe.default_cache_dir(), "data dir": data.default_data_dir(),
             "compilation cache": os.environ.get("TLJAX_COMPILATION_CACHE", ""),
             "~": os.path.expanduser("~"), "~/.cache/tljax": os.path.expanduser("~/.cache/tljax"),
             "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", "")}
    for what, path in paths.items():
        assert os.path.realpath(path).startswith(tmp + os.sep), f"{what} {path!r} is outside {tmp}"
