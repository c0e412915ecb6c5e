"""Training curves as TensorBoard event files, one directory per run, written without
TensorFlow or PyTorch: ``tensorboard --logdir WORKDIR`` lists each run as
``curves/<strategy>/<k=v,...>/seed<N>-<run hash>`` (``no_sweep`` for a strategy
without swept values).

Scalars per run: ``train/loss``, ``train/accuracy`` and ``train/learning_rate`` (the base
learning rate of the step, before any per-block multiplier), and with domain adaptation
``train/adapt_loss`` (``tljax.adapt``'s term before its weight), at the logging cadence
(``log_every``); ``val/loss`` and ``val/accuracy`` where they were measured
(``val_every``, and always at the last step); and ``final/<split>_accuracy``, the final
model on each evaluated split (train, val, test, the shifted ones). A cached-feature
probe has no steps: its points are at its solver's iteration count. The file format is
TFRecord framing (length, masked CRC-32C) around ``Event`` protocol buffers, encoded here
field by field.
"""

import os
import re
import socket
import struct
import time

from tljax import optim
from tljax.report.records import hparams_text

_RUN_CHARS = re.compile(r"[^A-Za-z0-9@._=,:+-]+")


def run_dir(workdir: str, spec) -> str:
    """Returns the directory of ``spec``'s event files: its strategy, swept values and seed
    (what TensorBoard's run list shows), and its run hash, so no two runs share one."""
    hparams = (hparams_text(spec.point.hparams).replace(", ", ",") if spec.point.hparams
               else "no_sweep")
    parts = [_RUN_CHARS.sub("_", p)[:80] for p in (spec.strategy, hparams)]
    return os.path.join(workdir, "curves", *parts, f"seed{spec.seed}-{spec.run_hash[:8]}")


def scalars(record: dict, run_cfg) -> list:
    """Returns ``[(tag, step, value)]``: the curves of a finished run's ``record``."""
    out = []
    unit = optim.schedule(1.0, run_cfg.warmup_steps, run_cfg.steps)
    for point in record.get("history", []):
        step = int(point["step"])
        out += [("train/loss", step, point["loss"]), ("train/accuracy", step, point["accuracy"])]
        if "adapt_loss" in point:  # domain adaptation's term, before its weight
            out.append(("train/adapt_loss", step, point["adapt_loss"]))
        # optax counts updates from 0: the step's update used the schedule at step - 1.
        out.append(("train/learning_rate", step, float(run_cfg.lr * unit(step - 1))))
    last = int(record.get("steps") or 0)
    metrics = record.get("metrics", {})
    val = [(int(p["step"]), p["loss"], p["accuracy"]) for p in record.get("val_history", [])]
    if "val" in metrics and (not val or val[-1][0] != last):  # the end's point, always
        val.append((last, metrics["val"]["loss"], metrics["val"]["accuracy"]))
    for step, loss, accuracy in val:
        out += [("val/loss", step, loss), ("val/accuracy", step, accuracy)]
    for split, values in metrics.items():  # the final model on every split
        out.append((f"final/{split}_accuracy", last, values["accuracy"]))
    return out


def write(workdir: str, spec, record: dict, run_cfg) -> str:
    """Writes ``record``'s curves to a new event file in ``run_dir``; returns its path."""
    directory = run_dir(workdir, spec)
    os.makedirs(directory, exist_ok=True)
    now = time.time()
    path = os.path.join(directory, f"events.out.tfevents.{int(now)}.{socket.gethostname()}."
                                   f"{os.getpid()}.tljax")
    with open(path + ".tmp", "wb") as f:
        f.write(_record(_event(now, 0, file_version="brain.Event:2")))
        for tag, step, value in scalars(record, run_cfg):
            f.write(_record(_event(now, step, tag=tag, value=value)))
    os.replace(path + ".tmp", path)  # never a torn file under TensorBoard's name
    return path


# --- protocol buffers: Event{wall_time=1 double, step=2 int64, file_version=3 string,
# summary=5 Summary{value=1 Value{tag=1 string, simple_value=2 float}}}

def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """Returns a length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, file_version: str = "", tag: str = "",
           value: float = 0.0) -> bytes:
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version:
        return out + _field(3, file_version.encode())
    summary_value = _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
    return out + _field(5, _field(1, summary_value))


# --- TFRecord framing: len (u64), masked crc32c(len) (u32), data, masked crc32c(data) (u32)

def _crc_table() -> list:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """Returns the CRC-32C (Castagnoli) of ``data``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked(crc32c(length))) + data
            + struct.pack("<I", _masked(crc32c(data))))
