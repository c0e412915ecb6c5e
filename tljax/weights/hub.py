"""Hugging Face model directories: ``config.json`` beside the weights, read without torch.

A directory saved by ``save_pretrained`` or downloaded from the hub holds the weights as
one file (``model.safetensors``, else ``pytorch_model.bin``) or as shards listed by an
index (``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``: tensor name ->
shard file). ``read_dir`` returns every tensor of them; what the model is comes from
``config.json`` (``tljax.models.hub``).
"""

import json
import os

from tljax.errors import UserError
from tljax.weights.readers import read_file

CONFIG = "config.json"
# In the order Hugging Face itself prefers them: safetensors first, one file before shards.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def is_model_dir(path: str) -> bool:
    """Returns True where ``path`` is a directory holding a ``config.json``."""
    return bool(path) and os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG))


def read_json(directory: str, name: str, required: bool = True, expect: type = dict):
    """Returns the JSON object (or, with ``expect=list``, array) in ``directory/name``;
    an empty one if the file is absent and not ``required``.

    Raises ``UserError`` naming the file when it is missing (and required), not JSON, or
    not of the ``expect``-ed type.
    """
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        if required:
            raise UserError(f"{path!r} not found: a Hugging Face model directory holds "
                            f"{CONFIG} and one of {', '.join(WEIGHT_FILES)}")
        return expect()
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (ValueError, OSError) as e:  # ValueError: bad JSON or UTF-8
        raise UserError(f"cannot read {path!r}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else ''}") from None
    if not isinstance(value, expect):
        raise UserError(f"{path!r} is not a JSON {'object' if expect is dict else 'array'}")
    return value


def inside(directory: str, name, what: str) -> str:
    """Returns ``directory/name`` for a path that a file of the model directory names (a
    module folder), after checking it stays inside the directory: a relative path without
    ``..``. Raises ``UserError`` naming ``what`` named it otherwise, so no byte outside the
    directory is read on a file's say-so. Links inside the directory are followed, as the
    Hugging Face cache's snapshots (links into its blobs/) need."""
    text = str(name)
    parts = text.replace("\\", "/").split("/")
    if not text or os.path.isabs(text) or ".." in parts or "\0" in text:
        raise UserError(f"{what} names {text[:100]!r}, which is not a path inside the model "
                        f"directory {directory!r}; every path it names must be one")
    return os.path.join(directory, text)


def weights_file(directory: str) -> str:
    """Returns the path of the weights (or shard index) in ``directory``, preferring
    safetensors; raises ``UserError`` naming the files looked for."""
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise UserError(f"no weights in model directory {directory!r}; expected one of: "
                    f"{', '.join(WEIGHT_FILES)}")


def read_dir(directory: str) -> dict:
    """Returns ``{stored name: np.ndarray}`` of every tensor of the directory's weights.

    Sharded weights are checked against their index: every tensor the index names is in
    the shard it names, and every tensor of a shard is in the index (else one error names
    each one); a shard is a plain file name inside the directory.
    """
    path = weights_file(directory)
    if not path.endswith(".index.json"):
        return read_file(path)
    index = read_json(directory, os.path.basename(path))
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{path!r} has no weight_map of tensor name -> shard file")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise UserError(f"{path!r} names shard {shard!r}, not a file in {directory!r}")
    tensors, problems = {}, []
    for shard in shards:
        stored = read_file(os.path.join(directory, shard))
        listed = {k for k, v in weight_map.items() if v == shard}
        for name in sorted(listed - set(stored)):
            problems.append(f"{name} (indexed in {shard}, not in it)")
        for name in sorted(set(stored) - listed):
            problems.append(f"{name} (in {shard}, not indexed there)")
        tensors.update({k: v for k, v in stored.items() if k in listed})
    if problems:
        raise UserError(f"{path!r} does not match its shards: " + ", ".join(problems))
    return tensors
