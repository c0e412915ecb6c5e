"""Result records on disk: one JSON line per run in ``results.jsonl``, appended whole."""

import json
import os

import numpy as np


def append_record(path: str, record: dict) -> None:
    """Appends ``record`` as one JSON line in a single write, then fsyncs. A torn last line
    (a process killed mid-write) is closed first, so it cannot swallow this record."""
    line = (json.dumps(record, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        while line:
            line = line[os.write(fd, line):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
