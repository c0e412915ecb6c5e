"""``vader``: the VADER sentiment lexicon as a binary word-sentiment classification task.

Source: ``vader_lexicon.txt`` in the ``vadersentiment`` 3.3.2 wheel (Hutto & Gilbert,
ICWSM 2014), installed offline from the package index (``pip install vadersentiment``).
Each of its 7,520 lines is a token (words, slang, emoticons such as ``:-)``) with the mean
valence that 10 human raters gave it on [-4, 4], their standard deviation and the 10
ratings. 14 tokens appear twice; the last entry counts, as VADER's own analyser reads the
file, leaving 7,506 tokens.

Task: the text is the token, the label its polarity as rated: ``negative`` (class 0)
where the mean valence is <= -0.5, ``positive`` (class 1) where it is >= +0.5; the 703
near-neutral tokens (|mean| < 0.5, where raters barely lean either way) are dropped.
That gives 6,803 examples: 3,813 negative and 2,990 positive (majority class: 0.56 of
test). Splits: 70/10/20 stratified by class with the fixed seed of ``digits``
(``tljax.data.digits.split_indices``): train 4,762 (2,669 negative / 2,093 positive),
val 680 (381 / 299), test 1,361 (763 / 598). Read in milliseconds, so it is read on each
use, never prepared on disk.
"""

import functools
import importlib.util
import os

import numpy as np

from tljax.data.textfiles import TextSplit
from tljax.errors import UserError

DISTRIBUTION = "vadersentiment"
PACKAGE = "vaderSentiment"
LEXICON = "vader_lexicon.txt"
THRESHOLD = 0.5  # |mean valence| below this is near-neutral and dropped
CLASS_NAMES = ("negative", "positive")
SOURCE = "the VADER sentiment lexicon: 7,506 tokens rated by 10 people, from the vadersentiment wheel"


def lexicon_path() -> str:
    """Returns the path of ``vader_lexicon.txt`` in the installed package (not imported).

    Raises ``UserError`` naming the pip command where the package is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"dataset 'vader' needs the package {DISTRIBUTION!r}: "
                        f"pip install {DISTRIBUTION}")
    path = os.path.join(list(spec.submodule_search_locations)[0], LEXICON)
    if not os.path.isfile(path):
        raise UserError(f"package {DISTRIBUTION!r} is installed but lacks {LEXICON}; "
                        f"reinstall it: pip install --force-reinstall {DISTRIBUTION}")
    return path


def read_lexicon(path: str) -> dict:
    """Returns ``{token: mean valence}``, the last entry of a repeated token winning."""
    means = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) >= 2 and fields[0]:
                means[fields[0]] = float(fields[1])
    return means


@functools.lru_cache(maxsize=1)
def load() -> tuple:
    """Returns ``(class_names, {split: TextSplit})`` of the task in the module docstring."""
    from tljax.data.digits import split_indices

    means = read_lexicon(lexicon_path())
    tokens = [t for t, m in means.items() if abs(m) >= THRESHOLD]
    texts = np.array(tokens, dtype=object)
    labels = np.array([int(means[t] > 0) for t in tokens], np.int64)
    full = TextSplit(texts, labels)
    return CLASS_NAMES, {name: full.take(idx, labels[idx])
                         for name, idx in split_indices(labels).items()}
