"""The input pipeline on mocked MNIST / CIFAR-10 (tfds.testing.mock_data) and on digits."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxpure import data, parallel
from jaxpure.errors import DataNotPreparedError


@pytest.fixture
def mock_split():
  def make(name, split="train", n=40):
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
      return data.open_split(name, split)
  return make


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_mock_train_batches_are_sharded_floats_in_unit_range(name, shape, mock_split):
  source = mock_split(name)
  raw = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
  mesh = parallel.make_mesh()
  batches = data.TrainBatches(source, jax.random.key(0), 16, mesh, random_flip=False)
  batch = batches(3)
  assert batch["image"].shape == (16,) + shape and batch["image"].dtype == np.float32
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  assert batch["image"].sharding.is_equivalent_to(parallel.batch_sharding(mesh), 4)
  images = np.asarray(batch["image"])
  assert images.min() >= 0 and images.max() <= 1
  np.testing.assert_allclose(images, raw[batches.indices(3)] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(batches(3)["image"]), images)  # depends on step only


def test_epochs_are_permutations_and_differ(mock_split):
  source = mock_split("mnist", n=48)
  batches = data.TrainBatches(source, jax.random.key(1), 16, parallel.make_mesh(), False)
  assert batches.steps_per_epoch == 3
  epoch0 = np.concatenate([batches.indices(s) for s in range(3)])
  epoch1 = np.concatenate([batches.indices(s) for s in range(3, 6)])
  assert sorted(epoch0) == list(range(48)) and sorted(epoch1) == list(range(48))
  assert not np.array_equal(epoch0, epoch1)


def test_random_flip_mirrors_about_half_of_cifar_images(mock_split):
  source = mock_split("cifar10", n=64)
  mesh = parallel.make_mesh()
  plain = data.TrainBatches(source, jax.random.key(2), 64, mesh, random_flip=False)(0)
  flipped = data.TrainBatches(source, jax.random.key(2), 64, mesh, random_flip=True)(0)
  a, b = np.asarray(plain["image"]), np.asarray(flipped["image"])
  same = np.all(a == b, axis=(1, 2, 3))
  mirrored = np.all(a[:, :, ::-1] == b, axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 10 < mirrored.sum() < 54


def test_eval_batches_pad_and_mask(mock_split):
  source = mock_split("mnist", split="test", n=21)
  mesh = parallel.make_mesh()
  got = list(data.eval_batches(source, 10, mesh))  # rounded up to 16 for 8 devices
  assert [b["image"].shape[0] for b in got] == [16, 16]
  masks = np.concatenate([np.asarray(b["mask"]) for b in got])
  assert masks.sum() == 21 and masks[:21].all()
  labels = np.concatenate([np.asarray(b["label"]) for b in got])[:21]
  want = np.asarray([int(np.asarray(source[i]["label"])) for i in range(21)])
  np.testing.assert_array_equal(labels, want)


def test_eval_batches_from_a_first_index_hold_those_examples_and_their_indices(mock_split):
  source = mock_split("mnist", split="test", n=21)
  mesh = parallel.make_mesh()
  got = list(data.eval_batches(source, 10, mesh, 7, first=12))
  masks = np.concatenate([np.asarray(b["mask"]) for b in got])
  assert masks.sum() == 7
  index = np.concatenate([np.asarray(b["index"]) for b in got])[masks]
  np.testing.assert_array_equal(index, np.arange(12, 19))
  images = np.concatenate([np.asarray(b["image"]) for b in got])[masks]
  x, y = data.read_all(source, 7, first=12)
  np.testing.assert_array_equal(images, x)
  everything, _ = data.read_all(source)
  np.testing.assert_array_equal(x, everything[12:19])
  # capped at the end of the split
  assert sum(int(np.asarray(b["mask"]).sum()) for b in data.eval_batches(
      source, 10, mesh, 50, first=15)) == 6


def test_batch_size_must_split_over_devices(mock_split):
  source = mock_split("mnist")
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    data.TrainBatches(source, jax.random.key(0), 12, parallel.make_mesh(), False)


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(DataNotPreparedError, match="python -m jaxpure.datasets.prepare cifar10"):
    data.open_split("cifar10", "train", str(tmp_path))


def test_digits_are_prepared_on_first_use(tmp_path):
  source = data.open_split("digits", "test", str(tmp_path))
  images, labels = data.read_all(source)
  assert images.shape == (360, 8, 8, 1) and images.dtype == np.float32
  assert images.max() == 1.0 and images.min() == 0.0
  assert sorted(set(labels.tolist())) == list(range(10))
