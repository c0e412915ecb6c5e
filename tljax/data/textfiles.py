"""Text classification datasets from a ``.csv`` or ``.jsonl`` file, held as raw text.

A dataset spec that ends in ``.csv`` or ``.jsonl`` is such a file (``/data/reviews.csv``,
``/data/reviews.csv:0,2``). Each row is one example: a text column (``text`` unless
``text_column`` says otherwise), a label column (``label_column``, default ``label``) and,
for sentence pairs, an optional second segment (``pair_column``, default none). A CSV has a
header row (rows of empty cells skipped); a JSONL file has one JSON object per line (blank
lines skipped).

Labels: where every label is a whole number (a JSON int, or a CSV cell such as ``3``;
``3.0`` too) the
integers are the class indices as given and must cover ``0..k-1``; otherwise every label
is read as a string and the sorted distinct strings are the classes ``0..k-1``.

Splits: a ``split`` column whose values are ``train``, ``val`` (or ``validation``,
``valid``, ``dev``) and ``test``, in any case, fixes them;
without one the examples are split 70/10/20, stratified by class, with the fixed seed of
``digits`` (``tljax.data.digits.split_indices``), so every class needs ``MIN_PER_CLASS``
examples. Tokenization is not done here: the data layer knows no model, and the text
runs through the weights' own tokenizer in ``tljax.text.encode_split``.
"""

import csv
import dataclasses
import functools
import json
import os
import re

import numpy as np

from tljax import files
from tljax.errors import UserError

EXTENSIONS = (".csv", ".jsonl")
SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "val", "test")
# Read in any case, with val's other names (Hugging Face's "validation"), as image split
# folders are (tljax.data.folders).
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}
# The smallest class the 70/10/20 split gives one val and one test example
# (round(0.6) = 1 val, round(1.2) = 1 test, 4 train).
MIN_PER_CLASS = 6
_INT = re.compile(r"[+-]?\d+(\.0*)?")  # 3, or 3.0 as pandas writes an int column with a NaN


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """One split of raw text: ``texts`` (and ``pairs``, the second segments, or None) as
    object arrays of str, ``labels`` int64 (n,)."""

    texts: np.ndarray
    labels: np.ndarray
    pairs: np.ndarray | None = None

    def take(self, index, labels: np.ndarray) -> "TextSplit":
        """Returns the examples at ``index`` with ``labels`` in place of their own."""
        return TextSplit(self.texts[index], labels,
                         None if self.pairs is None else self.pairs[index])


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which columns of a file hold the text, the label and the optional second segment."""

    text: str = "text"
    label: str = "label"
    pair: str = ""  # '' = single texts


def is_text_file(name: str) -> bool:
    """Returns True if the dataset name is a path to a ``.csv`` or ``.jsonl`` file."""
    return str(name).lower().endswith(EXTENSIONS)


def check_file(path: str) -> None:
    """Raises ``UserError`` unless ``path`` is a readable file."""
    if not os.path.isfile(path):
        raise UserError(f"dataset file not found: {path!r} (a .csv or .jsonl text dataset)")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read dataset file {path!r}: permission denied")


def read(path: str, columns: Columns = Columns()) -> tuple:
    """Returns ``(class_names, {split: TextSplit})`` of the file at ``path``.

    Read once per file content and columns: the cache is keyed by the file's stamp (size,
    mtime, ctime, inode: ``tljax.files``), so an edited or replaced file is read again.
    Raises a one-line ``UserError`` for an unreadable file, a missing column (naming the
    columns found), an empty text or label, a bad split value, or a class with too few
    examples.
    """
    check_file(path)
    return _read(os.path.abspath(path), files.stamp(path), columns)


@functools.lru_cache(maxsize=8)
def _read(path: str, stamp: tuple, columns: Columns) -> tuple:
    del stamp  # only the cache key
    wanted = [c for c in (columns.text, columns.label, columns.pair) if c]
    rows, found = (_csv_rows if path.lower().endswith(".csv") else _jsonl_rows)(path)
    if not rows:
        raise UserError(f"dataset {path!r} has no examples")
    keys = {"text": columns.text, "label": columns.label, "pair": columns.pair}
    for what, column in keys.items():
        if column and column not in found:
            raise UserError(f"dataset {path!r} has no column {column!r} ({what}_column); "
                            f"columns found: {', '.join(found)}")
        if column and found.count(column) > 1:  # a CSV reader keeps the last copy only
            raise UserError(f"dataset {path!r} has column {column!r} twice in its header; "
                            f"rename one ({what}_column reads one column)")
    texts, pairs, raw_labels, split_names = [], [], [], []
    for line, row in rows:
        for column in wanted:
            value = row.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise UserError(f"empty {column!r} at {path} line {line}; every example "
                                "needs a text and a label")
        texts.append(str(row[columns.text]))
        if columns.pair:
            pairs.append(str(row[columns.pair]))
        raw_labels.append(row[columns.label])
        split_names.append(row.get(SPLIT_COLUMN))
    labels, names = _labels(path, raw_labels)
    texts = np.array(texts, dtype=object)
    pair_array = np.array(pairs, dtype=object) if columns.pair else None
    full = TextSplit(texts, labels, pair_array)
    if SPLIT_COLUMN in found:
        index = _fixed_splits(path, split_names, labels, names)
    else:
        index = _stratified_splits(path, labels, names)
    return names, {name: full.take(idx, labels[idx]) for name, idx in index.items()}


def _csv_rows(path: str) -> tuple:
    """Returns ``([(line, row dict)], column names)`` of a CSV file with a header row."""
    # A whole document may sit in one cell: lift csv's 131,072-character field limit
    # while reading (it is process-wide, so it is put back after).
    limit = csv.field_size_limit(2**31 - 1)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            found = list(reader.fieldnames or [])
            # A row of bare commas (a spreadsheet's trailing rows) is a blank line.
            rows = [(reader.line_num, row) for row in reader
                    if any(v.strip() for v in row.values() if isinstance(v, str))]
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read dataset {path!r}: not UTF-8 text ({e.reason} at byte "
                        f"{e.start})") from None
    except csv.Error as e:
        raise UserError(f"cannot read dataset {path!r} as CSV: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read dataset {path!r}: {e.strerror or e}") from None
    finally:
        csv.field_size_limit(limit)
    return rows, found


def _jsonl_rows(path: str) -> tuple:
    """Returns ``([(line, row dict)], column names in first-seen order)`` of a JSONL file."""
    rows, found = [], {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"cannot read dataset {path!r}: line {number} is not "
                                    f"JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"cannot read dataset {path!r}: line {number} is a JSON "
                                    f"{type(row).__name__}, not an object of columns")
                found.update(dict.fromkeys(row))
                rows.append((number, row))
    except UnicodeDecodeError as e:
        raise UserError(f"cannot read dataset {path!r}: not UTF-8 text ({e.reason} at byte "
                        f"{e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read dataset {path!r}: {e.strerror or e}") from None
    return rows, list(found)


def _labels(path: str, raw: list) -> tuple:
    """Returns ``(int64 labels, class names)``: integers as given, else sorted strings."""
    def as_int(v):
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return int(v) if v.is_integer() else None
        return int(float(v)) if isinstance(v, str) and _INT.fullmatch(v.strip()) else None

    ints = [as_int(v) for v in raw]
    if all(i is not None for i in ints):
        if min(ints) < 0:
            raise UserError(f"dataset {path!r} has label {min(ints)}; integer labels are "
                            "class indices 0..k-1")
        if max(ints) >= len(ints):  # some class of 0..max has no example: an id column?
            raise UserError(f"dataset {path!r} has label {max(ints)}; integer labels are "
                            f"class indices 0..k-1, which {len(ints)} examples cannot cover "
                            "(is label_column a column of ids?)")
        labels = np.array(ints, np.int64)
        return labels, tuple(str(c) for c in range(int(labels.max()) + 1))
    strings = [str(v).strip() for v in raw]
    names = tuple(sorted(set(strings)))
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup[s] for s in strings], np.int64), names


def _check_class_sizes(path: str, labels: np.ndarray, names: tuple, need: int,
                       where: str) -> None:
    """Raises ``UserError`` naming the first class with fewer than ``need`` examples."""
    counts = np.bincount(labels, minlength=len(names))
    if len(names) < 2:
        raise UserError(f"dataset {path!r} has one class ({names[0]!r}); classification "
                        "needs two or more")
    small = np.flatnonzero(counts < need)
    if len(small):
        c = small[0]
        raise UserError(f"class {names[c]!r} of dataset {path!r} has {counts[c]} examples"
                        f"{where}; each class needs at least {need}")


def _stratified_splits(path: str, labels: np.ndarray, names: tuple) -> dict:
    from tljax.data.digits import split_indices  # one split rule for every built dataset

    _check_class_sizes(path, labels, names, MIN_PER_CLASS,
                       " (split 70/10/20 by class: one val, one test example at least)")
    return split_indices(labels)


def _fixed_splits(path: str, values: list, labels: np.ndarray, names: tuple) -> dict:
    raw = ["" if v is None else str(v).strip() for v in values]
    values = [SPLIT_ALIASES.get(v.lower(), v.lower()) for v in raw]
    bad = sorted({r for r, v in zip(raw, values) if v not in SPLIT_VALUES})
    if bad:
        raise UserError(f"dataset {path!r} has {SPLIT_COLUMN!r} value {bad[0]!r}; valid: "
                        f"{', '.join(SPLIT_VALUES)} (val also as "
                        f"{', '.join(SPLIT_ALIASES)})")
    values = np.array(values)
    index = {name: np.flatnonzero(values == name) for name in SPLIT_VALUES}
    for name, idx in index.items():
        if not len(idx):
            raise UserError(f"dataset {path!r} has no {name!r} rows in its {SPLIT_COLUMN!r} "
                            f"column; it needs {', '.join(SPLIT_VALUES)}")
    _check_class_sizes(path, labels[index["train"]], names, 1, " in its train split")
    return index
