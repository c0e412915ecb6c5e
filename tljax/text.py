"""Text -> packed token ids ``(n, 3, max_tokens)``: input ids, attention mask, token types.

Uses the ``tokenizers`` package with a ``tokenizer.json`` (the one shipped with the
weights), so BERT-family classifiers train through the same pipeline as images.
"""

import functools
import hashlib
import os

import numpy as np

from tljax import files, locks
from tljax.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
_TOKENS_VERSION = "1"  # bump when the packed layout changes: old cache entries are then unused


def load_tokenizer(path: str):
    """Returns the ``tokenizers.Tokenizer`` in ``path`` (a tokenizer.json or its directory)."""
    from tokenizers import Tokenizer

    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise UserError(f"tokenizer not found: {path!r}")
    return Tokenizer.from_file(path)


def encode(tokenizer, texts, max_tokens: int = 128, pairs=None) -> np.ndarray:
    """Returns int32 ``(len(texts), 3, max_tokens)``: ids, attention mask, token type ids.

    Texts are truncated to ``max_tokens`` and padded with id 0 (mask 0). ``pairs`` gives
    second segments (token type 1) for sentence-pair tasks.
    """
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(length=max_tokens, pad_id=0)
    inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
    encodings = tokenizer.encode_batch(inputs)
    out = np.zeros((len(encodings), 3, max_tokens), np.int32)
    for i, enc in enumerate(encodings):
        out[i, 0], out[i, 1], out[i, 2] = enc.ids, enc.attention_mask, enc.type_ids
    return out


def find_tokenizer(explicit: str, weights_path: str) -> str:
    """Returns the path of the tokenizer.json for a run: ``explicit`` (a file or its
    directory) if set, else the one shipped with the weights (in the weights directory, or
    beside the weights file). Raises ``UserError`` where there is none."""
    if explicit:
        path = os.path.join(explicit, TOKENIZER_FILE) if os.path.isdir(explicit) else explicit
        if not os.path.isfile(path):
            raise UserError(f"tokenizer not found: {explicit!r}; set tokenizer to a "
                            f"{TOKENIZER_FILE} or the directory holding one")
        return path
    if weights_path:
        folder = weights_path if os.path.isdir(weights_path) else os.path.dirname(weights_path)
        path = os.path.join(folder, TOKENIZER_FILE)
        if os.path.isfile(path):
            return path
    raise UserError(f"a text dataset needs the weights' tokenizer, and weights "
                    f"{weights_path or '(random init)'!r} have no {TOKENIZER_FILE} beside them; "
                    f"set tokenizer to a {TOKENIZER_FILE} or its directory")


def check_vocab(tokenizer_path: str, vocab_size: int, model: str) -> None:
    """Raises ``UserError`` when the tokenizer at ``tokenizer_path`` can give an id of
    ``vocab_size`` or more: JAX clamps such an embedding lookup to the last row instead of
    failing, so a mismatched tokenizer would train on silently wrong inputs."""
    largest = _largest_id(tokenizer_path, files.stamp(tokenizer_path))
    if largest >= vocab_size:
        raise UserError(f"tokenizer {tokenizer_path!r} gives token ids up to {largest}; model "
                        f"{model!r} has vocab_size {vocab_size} (ids 0..{vocab_size - 1}); "
                        "use the weights' own tokenizer")


@functools.lru_cache(maxsize=8)
def _largest_id(path: str, stamp: tuple) -> int:
    """Returns the largest id of the tokenizer at ``path`` (-1 for none); loading one takes
    0.2 s, and a sweep validates every grid point (``stamp`` keys the cache only)."""
    del stamp
    return max(load_tokenizer(path).get_vocab(with_added_tokens=True).values(), default=-1)


def encode_split(split, tokenizer_path: str, max_tokens: int, cache_dir: str = "") -> np.ndarray:
    """Returns the packed int32 ``(n, 3, max_tokens)`` input of a split's ``texts`` (and
    ``pairs``), tokenized with the tokenizer.json at ``tokenizer_path``.

    With ``cache_dir`` the result is kept there as ``.npy``, keyed by the tokenizer file's
    bytes, ``max_tokens`` and the texts themselves: tokenizing runs at a few thousand
    sentences a second on two CPU cores, a minute for a 100k-example file, which a second
    run (a cached-feature probe in particular) would otherwise pay again.
    """
    h = hashlib.sha256(f"{_TOKENS_VERSION}|{max_tokens}|".encode())
    with open(tokenizer_path, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    for column in (split.texts, split.pairs):
        h.update(b"\1" if column is None else b"\2")
        for t in ([] if column is None else column):
            b = str(t).encode()
            h.update(len(b).to_bytes(8, "little") + b)  # length-prefixed: no ambiguity
    if not cache_dir:
        return _encode_split(split, tokenizer_path, max_tokens)
    name = f"tokens-{h.hexdigest()[:32]}"
    path = os.path.join(cache_dir, f"{name}.npy")
    if os.path.isfile(path):
        return np.load(path)
    # One process tokenizes; the others (of a multi-process run, or runs sharing the
    # cache) wait for it and read its file.
    with locks.held(locks.lock_path(cache_dir, name), "tokenizing a text split"):
        if os.path.isfile(path):
            return np.load(path)
        tokens = _encode_split(split, tokenizer_path, max_tokens)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, tokens)
        os.replace(tmp, path)  # atomic: a reader without the lock never sees half a file
    return tokens


def _encode_split(split, tokenizer_path: str, max_tokens: int) -> np.ndarray:
    return encode(load_tokenizer(tokenizer_path), [str(t) for t in split.texts], max_tokens,
                  None if split.pairs is None else [str(t) for t in split.pairs])
