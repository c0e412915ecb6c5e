"""Reading result records (``results.jsonl``) and the fields the report groups them by."""

import json
import math
import os
import sys

from tljax.errors import UserError

# Splits every run evaluates; any other metrics key is a shifted split.
CORE_SPLITS = ("train", "val", "test")


def _warn(message: str) -> None:
    print(f"tljax: warning: {message}", file=sys.stderr)


def _parse_line(line: str):
    """Returns ``(record or None, recovered)``: the JSON object on ``line``; failing that, a
    whole object that starts after a torn prefix (``recovered`` True), else ``None``."""
    try:
        record = json.loads(line)
        return (record if isinstance(record, dict) else None), False
    except ValueError:
        pass
    # A run killed mid-write leaves a line without its newline; the next run appends its
    # record right after it, so the record is the longest suffix that parses.
    decoder = json.JSONDecoder()
    start = line.find("{", 1)
    while start != -1:
        try:
            record, end = decoder.raw_decode(line, start)
            if isinstance(record, dict) and not line[end:].strip():
                return record, True
        except ValueError:
            pass
        start = line.find("{", start + 1)
    return None, False


def read_results(path: str, warn=_warn) -> list:
    """Returns the records (dicts) of a ``results.jsonl`` file, in file order.

    A line that is not a JSON object (a torn line from a run killed mid-write) is skipped
    with a warning naming the file and line number; a whole record appended after a torn
    prefix on the same line is kept.
    """
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record, recovered = _parse_line(line)
            if record is None:
                warn(f"{path}:{number}: not a JSON record (torn by a killed run?); ignored")
            else:
                if recovered:
                    warn(f"{path}:{number}: torn record before a whole one; kept the whole one")
                records.append(record)
    return records


def read_workdirs(workdirs) -> list:
    """Returns the records of every workdir's ``results.jsonl``, concatenated in order.

    Raises ``UserError`` for a workdir that does not exist or has no ``results.jsonl``.
    """
    records = []
    for workdir in workdirs:
        if not os.path.isdir(workdir):
            raise UserError(f"no such workdir {workdir!r}")
        path = os.path.join(workdir, "results.jsonl")
        if not os.path.isfile(path):
            raise UserError(f"no results.jsonl in {workdir!r}; a workdir is made by `tljax run`")
        records += read_results(path)
    return records


def metric(record: dict, split: str, name: str = "accuracy") -> float:
    """Returns ``record``'s ``name`` metric on ``split``, NaN where absent."""
    value = (record.get("metrics") or {}).get(split, {}).get(name)
    return math.nan if value is None else float(value)


def method_name(strategy: str, adapt: str = "none") -> str:
    """Returns how reports name a strategy run with adaptation objective ``adapt``:
    ``full_ft``, ``full_ft+dann``."""
    return strategy if adapt in ("none", "", None) else f"{strategy}+{adapt}"


def config_key(record: dict) -> str:
    """Returns the hash of the config a record belongs to: its ``sweep_hash`` (swept values,
    seeds and strategies excluded), else for older records its ``config_hash``."""
    return str(record.get("sweep_hash") or record.get("config_hash") or "")


def hparams_key(hparams: dict) -> str:
    """Returns a canonical string for a grid point's swept values (equal points, equal keys)."""
    return json.dumps(hparams or {}, sort_keys=True, default=str)


def hparams_text(hparams: dict) -> str:
    """Returns ``key=value, ...`` for a grid point, ``-`` when nothing was swept."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted((hparams or {}).items())) or "-"


def shifted_names(record: dict) -> list:
    """Returns the names of a record's shifted splits (``shifted``, else for older records
    every metrics key that is not train, val or test)."""
    if record.get("shifted") is not None:
        return list(record["shifted"])
    return [k for k in (record.get("metrics") or {}) if k not in CORE_SPLITS]


def shots_text(shots) -> str:
    """Returns ``shots`` for a table: ``all`` for 0 (the whole train split)."""
    return "all" if not shots else str(shots)
