"""Tests of jaxpure.datasets: the offline digits builder, prepare(), its CLI, and
tfds.testing.mock_data for the official data sets (all without TensorFlow).

Every test uses its own tmp_path as TFDS data_dir, never ~/tensorflow_datasets.
"""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from jaxpure.datasets import digits as digits_lib
from jaxpure.datasets import prepare as prepare_lib

NUM_DIGITS = 1797
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


def _read_split(data_dir, split):
  """All of a split, in data_source order: images [N, 8, 8, 1] uint8, labels [N]."""
  source = tfds.data_source("digits", split=split, data_dir=str(data_dir))
  examples = source.__getitems__(list(range(len(source))))
  images = np.stack([ex["image"] for ex in examples])
  labels = np.array([ex["label"] for ex in examples], np.int64)
  return images, labels


def _sklearn_index(images):
  """Index into sklearn's load_digits of each [8, 8, 1] image (matched by content).

  The 1797 raw images are pairwise distinct, so the match is unique.
  """
  raw = sk_datasets.load_digits().images
  expected = np.round(raw * 255 / 16).astype(np.uint8)
  lookup = {img.tobytes(): i for i, img in enumerate(expected)}
  assert len(lookup) == NUM_DIGITS
  return np.array([lookup[img[..., 0].tobytes()] for img in images])


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare_lib.prepare("digits", data_dir=str(data_dir))
  return data_dir


def test_prepare_digits_writes_array_record(tmp_path):
  assert not prepare_lib.is_prepared("digits", data_dir=str(tmp_path))
  builder = prepare_lib.prepare("digits", data_dir=str(tmp_path))
  assert prepare_lib.is_prepared("digits", data_dir=str(tmp_path))
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert str(builder.version) == "1.0.0"
  files = sorted(p.name for p in (tmp_path / "digits" / "1.0.0").iterdir())
  assert any(f.startswith("digits-train.array_record") for f in files), files
  assert any(f.startswith("digits-test.array_record") for f in files), files
  # Preparing again is a no-op that returns the same place.
  again = prepare_lib.prepare("digits", data_dir=str(tmp_path))
  assert again.data_dir == builder.data_dir


def test_digits_info(digits_dir):
  builder = tfds.builder("digits", data_dir=str(digits_dir))
  assert builder.info.supervised_keys == ("image", "label")
  assert builder.info.features["label"].num_classes == 10
  assert builder.info.splits["train"].num_examples == 1437
  assert builder.info.splits["test"].num_examples == 360
  assert "1.0.0" in builder.RELEASE_NOTES


def test_digits_data_source(digits_dir):
  sizes = {}
  for split in ("train", "test"):
    source = tfds.data_source("digits", split=split, data_dir=str(digits_dir))
    sizes[split] = len(source)
    example = source[0]
    assert set(example) == {"image", "label"}
    assert example["image"].dtype == np.uint8
    assert example["image"].shape == (8, 8, 1)
    assert 0 <= int(example["label"]) < 10
  assert sizes["train"] + sizes["test"] == NUM_DIGITS
  images, _ = _read_split(digits_dir, "train")
  assert images.max() == 255 and images.min() == 0


def test_digits_getitems_matches_getitem(digits_dir):
  source = tfds.data_source("digits", split="train", data_dir=str(digits_dir))
  keys = [5, 0, 17]
  batch = source.__getitems__(keys)
  assert isinstance(batch, list) and len(batch) == len(keys)
  for key, example in zip(keys, batch):
    np.testing.assert_array_equal(example["image"], source[key]["image"])
    assert example["label"] == source[key]["label"]


def test_digits_split_is_sklearn_stratified_split(digits_dir):
  raw = sk_datasets.load_digits()
  train_expected, test_expected = model_selection.train_test_split(
      np.arange(NUM_DIGITS), test_size=0.2, stratify=raw.target, random_state=0
  )
  found = {}
  for split in ("train", "test"):
    images, labels = _read_split(digits_dir, split)
    index = _sklearn_index(images)
    assert len(set(index)) == len(index)
    # Pixel scaling: round(v * 255 / 16) of sklearn's raw array, image by image.
    expected = np.round(raw.images[index] * 255 / 16).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, raw.target[index])
    found[split] = index
  assert set(found["train"]).isdisjoint(found["test"])
  assert set(found["train"]) | set(found["test"]) == set(range(NUM_DIGITS))
  assert set(found["train"]) == set(train_expected)
  assert set(found["test"]) == set(test_expected)
  np.testing.assert_array_equal(
      digits_lib.split_indices()["test"], np.sort(test_expected)
  )


def test_digits_split_is_stratified(digits_dir):
  _, train_labels = _read_split(digits_dir, "train")
  _, test_labels = _read_split(digits_dir, "test")
  for c in range(10):
    n_train = int(np.sum(train_labels == c))
    n_test = int(np.sum(test_labels == c))
    assert abs(n_test / (n_train + n_test) - 0.2) <= 0.02, (c, n_train, n_test)


def test_digits_prepare_is_deterministic(digits_dir, tmp_path):
  prepare_lib.prepare("digits", data_dir=str(tmp_path))
  for split in ("train", "test"):
    images_a, labels_a = _read_split(digits_dir, split)
    images_b, labels_b = _read_split(tmp_path, split)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(labels_a, labels_b)


def test_scale_pixels():
  values = np.arange(17)
  scaled = digits_lib.scale_pixels(values)
  assert scaled.dtype == np.uint8
  np.testing.assert_array_equal(scaled, [round(v * 255 / 16) for v in range(17)])
  assert scaled[0] == 0 and scaled[16] == 255


def test_prepare_unknown_name(tmp_path):
  with pytest.raises(ValueError, match="digits, mnist, cifar10"):
    prepare_lib.prepare("nope", data_dir=str(tmp_path))
  with pytest.raises(ValueError):
    prepare_lib.is_prepared("nope", data_dir=str(tmp_path))
  assert prepare_lib.SUPPORTED == ("digits", "mnist", "cifar10")


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_prepare_official_without_tensorflow(name, tmp_path):
  if HAS_TENSORFLOW:
    pytest.skip("TensorFlow is installed: preparing would download")
  assert not prepare_lib.is_prepared(name, data_dir=str(tmp_path))
  with pytest.raises(RuntimeError, match=r'\.\[tf\]') as info:
    prepare_lib.prepare(name, data_dir=str(tmp_path))
  assert "\n" not in str(info.value)
  assert not list(tmp_path.iterdir())  # nothing written, nothing downloaded


def _run_cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "jaxpure.datasets.prepare", *args],
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )


def test_cli_prepares_digits(tmp_path):
  result = _run_cli("digits", "--data_dir", str(tmp_path))
  assert result.returncode == 0, result.stderr
  where = tmp_path / "digits" / "1.0.0"
  # Plain lines only: no progress bars (carriage returns, escape codes) on stderr.
  assert result.stderr == ""
  assert result.stdout.splitlines() == [f"preparing digits as array_record in {where} ...",
                                        f"digits prepared in {where}"]
  assert prepare_lib.is_prepared("digits", data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "args", [("nope",), ()] + ([] if HAS_TENSORFLOW else [("cifar10",)])
)
def test_cli_errors_are_one_line(args, tmp_path):
  result = _run_cli(*args, "--data_dir", str(tmp_path))
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stdout == ""


@pytest.mark.parametrize(
    "name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))]
)
def test_mock_data_source(name, shape):
  """The way the data pipeline tests mock the official data sets, without TF."""
  with tfds.testing.mock_data(
      num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    source = tfds.data_source(name, split="train")
    assert len(source) == 5
    examples = [source[i] for i in range(len(source))]
  for example in examples:
    assert isinstance(example["image"], np.ndarray)
    assert example["image"].dtype == np.uint8
    assert example["image"].shape == shape
    assert 0 <= int(example["label"]) < 10
