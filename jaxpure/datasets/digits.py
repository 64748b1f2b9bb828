"""Offline TFDS builder for scikit-learn's bundled 8x8 handwritten digits.

Importing this module registers the builder under the name ``digits``, so that
``tfds.builder("digits")`` and ``tfds.data_source("digits", ...)`` find it.

The data come from ``sklearn.datasets.load_digits`` (1797 images shipped inside
scikit-learn, no network). Preparing needs no TensorFlow: the features are plain
``Tensor``/``ClassLabel`` features and the builder is prepared with
``file_format="array_record"``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

#: Seed and share of the stratified train/test split (fixed: part of the data set).
SPLIT_SEED = 0
TEST_SIZE = 0.2

_DESCRIPTION = """\
scikit-learn's copy of the UCI optical recognition of handwritten digits test set:
1797 grayscale 8x8 images of the digits 0-9. Pixel counts 0..16 are scaled to uint8
as round(v * 255 / 16), so 16 maps to 255. Split into train (80%) and test (20%)
by sklearn.model_selection.train_test_split(test_size=0.2, stratify=labels,
random_state=0). Example keys are the indices into sklearn's arrays.
"""

_CITATION = """\
@misc{optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
}
"""


def scale_pixels(values: np.ndarray) -> np.ndarray:
  """Maps sklearn digit pixel counts to uint8.

  Args:
    values: any shape, numbers in [0, 16].

  Returns:
    Same shape, uint8 in [0, 255]: ``round(v * 255 / 16)`` (half to even).
  """
  return np.round(np.asarray(values, np.float64) * 255.0 / 16.0).astype(np.uint8)


def split_indices() -> dict[str, np.ndarray]:
  """Indices into ``load_digits()`` of the train and test splits.

  Returns:
    ``{"train": [1437] int64, "test": [360] int64}``, each sorted ascending;
    a deterministic stratified split (``TEST_SIZE``, ``SPLIT_SEED``).
  """
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection

  labels = sk_datasets.load_digits().target
  index = np.arange(len(labels))
  train, test = model_selection.train_test_split(
      index, test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
  )
  return {"train": np.sort(train), "test": np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits: images [8, 8, 1] uint8 in [0, 255], labels 0..9."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": (
          "Initial release: sklearn load_digits, pixels round(v*255/16) as uint8, "
          "stratified 80/20 train/test split with random_state=0."
      ),
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage=(
            "https://scikit-learn.org/stable/modules/generated/"
            "sklearn.datasets.load_digits.html"
        ),
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ship with scikit-learn.
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    images = scale_pixels(digits.images)[..., None]  # [N, 8, 8, 1] uint8
    labels = digits.target.astype(np.int64)
    return {
        name: self._generate_examples(images, labels, index)
        for name, index in split_indices().items()
    }

  def _generate_examples(self, images, labels, index):
    for i in index:
      yield int(i), {"image": images[i], "label": int(labels[i])}
