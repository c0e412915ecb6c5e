"""``digits``: scikit-learn's bundled 1,797 real handwritten digits as a TFDS dataset.

Written as array_record with Tensor features, so it is built and read (through
``tfds.data_source``) without TensorFlow. Images are 8x8x1 uint8 (the original 0..16
grey levels scaled to 0..255). Splits are fixed and stratified: 70% train, 10% val,
20% test.
"""

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 0
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def split_indices(labels: np.ndarray, fractions: dict = FRACTIONS) -> dict:
    """Returns ``{split: sorted example indices}``, stratified by class, the same every time.

    ``fractions`` gives ``train``, ``val`` and ``test`` (image folders carve val alone out
    of a fixed train split with ``test`` 0); each class's test and val counts are rounded.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    out = {name: [] for name in FRACTIONS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * fractions["test"])
        n_val = round(len(idx) * fractions["val"])
        out["test"] += list(idx[:n_test])
        out["val"] += list(idx[n_test:n_test + n_val])
        out["train"] += list(idx[n_test + n_val:])
    return {name: np.sort(np.array(v)) for name, v in out.items()}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits (UCI optical recognition of handwritten digits, test part)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn.datasets.load_digits, stratified 70/10/20 split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        labels = digits.target.astype(np.int64)
        return {name: self._generate_examples(images[idx], labels[idx], idx)
                for name, idx in split_indices(labels).items()}

    def _generate_examples(self, images, labels, indices):
        for image, label, index in zip(images, labels, indices):
            yield int(index), {"image": image, "label": int(label)}
