"""Datasets as TFDS read into numpy, class-subset views, preprocessing and batching."""

from tljax.data.datasets import (BUILTIN, Dataset, Split, check_known, default_data_dir,
                                  k_shot_indices, load, parse_spec)
from tljax.data.pipeline import batches, preprocess

__all__ = ["BUILTIN", "Dataset", "Split", "batches", "check_known", "default_data_dir", "k_shot_indices", "load",
           "parse_spec", "preprocess"]
