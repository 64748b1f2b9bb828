"""TFDS data sources -> float32 NHWC batches in [0, 1], sharded over the `data` mesh axis.

All reading goes through `tfds.data_source` (random access to array_record files, no
TensorFlow). The offline `digits` data set is prepared on first use; MNIST and CIFAR-10 must
be prepared once (`python -m jaxpure.datasets.prepare NAME`, needs the `tf` extra; CIFAR-10
also offline from its python tarball with `--from cifar-10-python.tar.gz`, which `cifar10`
then reads: see `prepare.source_name`).

Training batches depend only on (key, step): the order is a permutation of the split drawn
from `fold_in(key, epoch)`, so a resumed run sees exactly the batches an uninterrupted run
sees. Each process reads only its own slice of every global batch.
"""

import functools
import os

import jax
import numpy as np
import tensorflow_datasets as tfds

from jaxpure import parallel
from jaxpure.datasets import prepare as prepare_lib
from jaxpure.errors import DataNotPreparedError

OFFLINE_DATASETS = ("digits",)


def _default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def open_split(name: str, split: str, data_dir: str | None = None):
  """A random-access source of one split: `len(src)`, `src.__getitems__(indices)`.

  Elements are dicts with `image` (uint8 [H, W, C]) and `label` (int). `digits` is prepared
  here if needed (offline, seconds); other data sets raise DataNotPreparedError. `cifar10`
  reads `cifar10_tarball` where `prepare cifar10 --from` put it (tarball order).
  """
  data_dir = data_dir or None
  if name in OFFLINE_DATASETS and not prepare_lib.is_prepared(name, data_dir):
    prepare_lib.prepare(name, data_dir)
  try:
    return tfds.data_source(prepare_lib.source_name(name, data_dir), split=split,
                            data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises several types for "not there"; all mean the same here.
    where = data_dir or _default_data_dir()
    dir_flag = f" --data_dir {data_dir}" if data_dir else ""
    raise DataNotPreparedError(
        f"data set {name!r} (split {split!r}) is not prepared as array_record in {where} "
        f"({type(e).__name__}); prepare it with: pip install -e '.[tf]' && "
        f"python -m jaxpure.datasets.prepare {name}{dir_flag}"
        + (f" (or offline: python -m jaxpure.datasets.prepare {name} --from "
           f"{prepare_lib.FROM_FILE[name]}{dir_flag})" if name in prepare_lib.FROM_FILE
           else "")) from e


def read_examples(source, indices) -> tuple[np.ndarray, np.ndarray]:
  """Reads examples `indices` -> (images float32 [n, H, W, C] in [0, 1], labels int32 [n])."""
  indices = [int(i) for i in indices]
  try:
    records = source.__getitems__(indices)
  except (AttributeError, TypeError):  # sources without batched reads (and TFDS's mock)
    records = [source[i] for i in indices]
  images = np.stack([np.asarray(r["image"]) for r in records])
  if images.ndim == 3:  # [n, H, W] -> [n, H, W, 1]
    images = images[..., None]
  if images.dtype != np.uint8:
    raise ValueError(f"expected uint8 images from the data source, got {images.dtype}")
  labels = np.asarray([r["label"] for r in records], dtype=np.int32)
  return images.astype(np.float32) / 255.0, labels


def _process_slice(global_size: int) -> slice:
  """This process's contiguous slice of a global batch of `global_size` examples."""
  count, index = jax.process_count(), jax.process_index()
  if global_size % count:
    raise ValueError(f"global batch {global_size} does not split over {count} processes")
  local = global_size // count
  return slice(index * local, (index + 1) * local)


def _to_global(sharding, local: np.ndarray, global_size: int) -> jax.Array:
  return jax.make_array_from_process_local_data(
      sharding, local, (global_size,) + local.shape[1:])


class TrainBatches:
  """Shuffled training batches as global arrays sharded on the batch axis.

  `batches(step)` -> {"image": [B, H, W, C] float32 in [0, 1], "label": [B] int32}, B the
  global batch size; epochs are `len(source) // B` steps (remainder dropped).
  """

  def __init__(self, source, key: jax.Array, batch_size: int, mesh, random_flip: bool):
    parallel.check_batch_size(batch_size, mesh)
    self.source = source
    self.num_examples = len(source)
    if self.num_examples < batch_size:
      raise ValueError(f"batch_size={batch_size} exceeds the split's {self.num_examples} examples")
    self.batch_size = batch_size
    self.steps_per_epoch = self.num_examples // batch_size
    self._order_key, self._flip_key = jax.random.split(key)
    self.random_flip = random_flip
    self.sharding = parallel.batch_sharding(mesh)
    self._slice = _process_slice(batch_size)

  @functools.lru_cache(maxsize=2)
  def _permutation(self, epoch: int) -> np.ndarray:
    key = jax.random.fold_in(self._order_key, epoch)
    return np.asarray(jax.random.permutation(key, self.num_examples))

  def indices(self, step: int) -> np.ndarray:
    """Global example indices of the batch of training step `step`, [B] int."""
    epoch, i = divmod(step, self.steps_per_epoch)
    return self._permutation(epoch)[i * self.batch_size:(i + 1) * self.batch_size]

  def __call__(self, step: int) -> dict[str, jax.Array]:
    local_indices = self.indices(step)[self._slice]
    images, labels = read_examples(self.source, local_indices)
    if self.random_flip:
      flip = np.asarray(jax.random.bernoulli(
          jax.random.fold_in(self._flip_key, step), 0.5, (self.batch_size,)))[self._slice]
      images = np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
    return {"image": _to_global(self.sharding, images, self.batch_size),
            "label": _to_global(self.sharding, labels, self.batch_size)}


def eval_batches(source, batch_size: int, mesh, num_examples: int | None = None,
                 first: int = 0):
  """Yields `num_examples` examples in order from index `first` (default: all from there), as
  fixed-shape sharded batches.

  Yields dicts {"image": [B, H, W, C] float32 in [0, 1], "label": [B] int32,
  "mask": [B] bool, "index": [B] int32 example index in the split}; the last batch is padded
  (mask False) so one compiled shape serves all.
  `batch_size` is rounded up to a multiple of the device count.
  """
  batch_size = parallel.round_up_to_devices(batch_size, mesh)
  left = max(0, len(source) - first)
  total = left if num_examples is None else min(num_examples, left)
  sharding = parallel.batch_sharding(mesh)
  sl = _process_slice(batch_size)
  for start in range(0, total, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < total
    idx = np.where(mask, idx + first, first)
    images, labels = read_examples(source, idx[sl])
    yield {"image": _to_global(sharding, images, batch_size),
           "label": _to_global(sharding, labels, batch_size),
           "mask": _to_global(sharding, mask[sl], batch_size),
           "index": _to_global(sharding, idx[sl].astype(np.int32), batch_size)}


def read_all(source, num_examples: int | None = None,
             first: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`num_examples` examples from index `first` (default: all from there) on the host:
  (float32 [n, H, W, C] in [0, 1], int32 [n])."""
  left = max(0, len(source) - first)
  total = left if num_examples is None else min(num_examples, left)
  return read_examples(source, first + np.arange(total))
