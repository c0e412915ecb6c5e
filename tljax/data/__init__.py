"""Datasets as TFDS read into numpy; class-subset and corrupted views; preprocessing, batching."""

from tljax.data import corruptions
from tljax.data.datasets import (BUILTIN, TEXT_BUILTIN, Dataset, Split, check_known,
                                  default_data_dir, k_shot_indices, kind, load, parse_spec)
from tljax.data.textfiles import Columns, TextSplit
from tljax.data.pipeline import batches, preprocess
from tljax.data import streaming  # after pipeline: it builds on preprocess

__all__ = ["BUILTIN", "TEXT_BUILTIN", "Columns", "Dataset", "Split", "TextSplit", "batches",
           "check_known", "corruptions", "default_data_dir", "k_shot_indices", "kind", "load",
           "parse_spec", "preprocess", "streaming"]
