"""Result records on disk: one JSON line per run in ``results.jsonl``, appended whole."""

import functools
import json
import os
import platform

import numpy as np

# The CPU features that change which kernels XLA:CPU (and numpy) compile, and with them how
# float32 sums round: a run on another CPU can differ in the last bits, and after training
# in a prediction or two.
_ISA_FLAGS = ("avx512f", "avx2", "fma", "sse4_2", "neon", "asimd")


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    """Returns the host CPU's model and the vector instruction sets it offers (``AMD EPYC
    (avx2 fma sse4_2)``), for a record's provenance; ``platform.machine()`` where
    ``/proc/cpuinfo`` cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model = fields.get("model name") or fields.get("CPU implementer") or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return f"{model} ({' '.join(f for f in _ISA_FLAGS if f in flags) or 'no listed ISA'})"


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
