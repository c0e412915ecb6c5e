"""Text -> packed token ids ``(n, 3, max_tokens)``: input ids, attention mask, token types.

Uses the ``tokenizers`` package with a ``tokenizer.json`` (the one shipped with the
weights), so BERT-family classifiers train through the same pipeline as images.
"""

import os

import numpy as np

from tljax.errors import UserError


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
