"""Datasets as TFDS read into numpy; class-subset and corrupted views; preprocessing, batching."""

from tljax.data import corruptions
from tljax.data.datasets import (BUILTIN, Dataset, Split, check_known, default_data_dir,
                                  k_shot_indices, load, parse_spec)
from tljax.data.pipeline import batches, preprocess

__all__ = ["BUILTIN", "Dataset", "Split", "batches", "check_known", "corruptions",
           "default_data_dir", "k_shot_indices", "load", "parse_spec", "preprocess"]
