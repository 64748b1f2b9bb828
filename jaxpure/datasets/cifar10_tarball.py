"""CIFAR-10 from the standard Python-version tarball: no TensorFlow, no network.

``cifar-10-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/cifar.html, also the file
torchvision downloads) holds ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5``,
``test_batch`` and ``batches.meta``. Each batch is a Python pickle of a dict with
``b"data"`` (uint8 [n, 3072]: per row 1024 red, 1024 green, 1024 blue values, each a
32x32 image row-major) and ``b"labels"`` (n ints in 0..9); ``batches.meta`` names the
10 classes.

The records keep the tarball's order exactly: test = ``test_batch`` (the order in which
ADP, Croce et al. and RobustBench evaluate, so "the first 1,000 test images" are the same
images), train = ``data_batch_1`` .. ``data_batch_5`` concatenated. The builder sets
``disable_shuffling`` and uses the position as key: TFDS would otherwise store examples
in the order of their hashed keys (as the official ``cifar10`` builder does).

Name resolution: importing this module registers the builder as ``cifar10_tarball``
(files in ``DATA_DIR/cifar10_tarball/1.0.0``), next to TFDS's official ``cifar10``. The
name our configs use stays ``cifar10``: ``jaxpure.data.open_split("cifar10", ...)``
reads ``cifar10_tarball`` when it is prepared in the data directory, else the official
``cifar10`` (see ``jaxpure.datasets.prepare.source_name``). Prepare it with::

  python -m jaxpure.datasets.prepare cifar10 --from cifar-10-python.tar.gz [--data_dir DIR]

``--from`` also takes the extracted ``cifar-10-batches-py`` folder (or its parent).
Batches are unpickled by an unpickler that only builds numpy arrays, lists, dicts,
strings and numbers: a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import posixpath
import tarfile
import zlib
from typing import Mapping, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxpure.errors import UserInputError

#: The folder inside the tarball and the batch files read from it, in record order.
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META = "batches.meta"

#: CIFAR-10 class names, label 0..9, as in ``batches.meta``.
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")

IMAGE_SHAPE = (32, 32, 3)
_ROW_SIZE = 32 * 32 * 3

_DESCRIPTION = """\
CIFAR-10 (60000 32x32 colour images in 10 classes) read from the Python-version
tarball cifar-10-python.tar.gz with no TensorFlow. Records keep the tarball order:
train = data_batch_1..5 concatenated (50000), test = test_batch (10000). Images are
uint8 [32, 32, 3] (HWC, RGB) in [0, 255], labels 0..9 in the order of batches.meta.
"""

_CITATION = """\
@TECHREPORT{Krizhevsky09learningmultiple,
    author = {Alex Krizhevsky},
    title = {Learning multiple layers of features from tiny images},
    institution = {},
    year = {2009}
}
"""


class Cifar10TarballError(UserInputError):
  """The CIFAR-10 tarball is missing, unreadable or not in the Python-version layout."""


class Split(NamedTuple):
  """One split in tarball order: images uint8 [n, 32, 32, 3] in [0, 255], labels int64 [n]."""

  images: np.ndarray
  labels: np.ndarray


# What the CIFAR-10 pickles (Python 2 cPickle of numpy arrays) refer to, under the module
# names numpy 1 and numpy 2 write. Python 3 writes bytes with protocol 2 as
# _codecs.encode(text, "latin1"). Nothing else may be looked up while unpickling.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
  """Unpickles plain data and numpy arrays only; any other global is refused."""

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refers to {module}.{name}, which a CIFAR-10 batch does not hold") from None


def unpickle(raw: bytes, member: str) -> dict:
  """The dict pickled in ``raw`` (Python 2 ``str`` comes back as ``bytes``).

  Raises:
    Cifar10TarballError: ``raw`` is not a pickled dict of plain data and arrays.
  """
  try:
    value = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except Exception as e:  # noqa: BLE001  (garbled pickles raise almost any type)
    raise Cifar10TarballError(f"{member} is not a readable pickle: {e}") from e
  if not isinstance(value, dict):
    raise Cifar10TarballError(f"{member} holds a {type(value).__name__}, not a dict")
  return value


def _field(batch: dict, key: str, member: str):
  """``batch[b"key"]`` (Python 2 pickles) or ``batch["key"]`` (Python 3 re-pickles)."""
  for k in (key.encode(), key):
    if k in batch:
      return batch[k]
  raise Cifar10TarballError(f"{member} has no {key!r} entry")


def rows_to_images(rows: np.ndarray) -> np.ndarray:
  """CIFAR rows -> images.

  Args:
    rows: uint8 [n, 3072], each row 1024 R, 1024 G, 1024 B values of a 32x32 image,
      row-major (value ``c * 1024 + y * 32 + x`` is channel c of pixel (y, x)).

  Returns:
    uint8 [n, 32, 32, 3] (HWC, RGB) in [0, 255]: ``images[i, y, x, c]``.
  """
  return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def parse_batch(raw: bytes, member: str) -> Split:
  """One pickled batch file -> its images and labels, in file order.

  Args:
    raw: the file's bytes (a pickled dict with ``data`` uint8 [n, 3072], ``labels``).
    member: its name, for error messages.

  Returns:
    ``Split(images uint8 [n, 32, 32, 3] in [0, 255], labels int64 [n] in 0..9)``.

  Raises:
    Cifar10TarballError: not a CIFAR-10 batch (shape, dtype or label range).
  """
  batch = unpickle(raw, member)
  rows = np.asarray(_field(batch, "data", member))
  if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != _ROW_SIZE:
    raise Cifar10TarballError(
        f"{member}: 'data' is {rows.dtype} {list(rows.shape)}, expected uint8 [n, {_ROW_SIZE}]")
  labels = np.asarray(_field(batch, "labels", member))
  if labels.shape != (len(rows),) or (labels.size and labels.dtype.kind not in "iu"):
    raise Cifar10TarballError(
        f"{member}: 'labels' is {labels.dtype} {list(labels.shape)}, expected {len(rows)} ints")
  labels = labels.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= len(LABEL_NAMES)):
    raise Cifar10TarballError(f"{member}: labels outside 0..{len(LABEL_NAMES) - 1}")
  return Split(rows_to_images(rows), labels)


def check_meta(raw: bytes, member: str = META) -> None:
  """Checks that ``batches.meta`` names the 10 CIFAR-10 classes in ``LABEL_NAMES`` order.

  Raises:
    Cifar10TarballError: other class names (e.g. another data set's tarball).
  """
  names = _field(unpickle(raw, member), "label_names", member)
  try:
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
  except (TypeError, UnicodeDecodeError) as e:
    raise Cifar10TarballError(f"{member}: unreadable label_names ({e})") from e
  if names != LABEL_NAMES:
    raise Cifar10TarballError(
        f"{member} names the classes {list(names)}, not CIFAR-10's {list(LABEL_NAMES)}")


_WANTED = TRAIN_BATCHES + TEST_BATCHES + (META,)


def _member_key(name: str) -> str | None:
  """``cifar-10-batches-py/test_batch`` (or ``./...``) -> ``test_batch``; None if not wanted."""
  name = posixpath.normpath(name)
  folder, base = posixpath.split(name)
  return base if folder == FOLDER and base in _WANTED else None


def _read_tar(path: str) -> dict[str, bytes]:
  """The wanted files of a (possibly compressed) tar, read in one pass, nothing extracted."""
  found = {}
  with tarfile.open(path, "r|*") as tar:
    for member in tar:
      key = _member_key(member.name)
      if key is not None and member.isfile() and key not in found:
        found[key] = tar.extractfile(member).read()
  return found


def _read_folder(path: str) -> dict[str, bytes]:
  """The wanted files of an extracted ``cifar-10-batches-py`` folder (or its parent)."""
  if os.path.basename(os.path.normpath(path)) != FOLDER:
    path = os.path.join(path, FOLDER)
  found = {}
  for key in _WANTED:
    file = os.path.join(path, key)
    if os.path.isfile(file):
      with open(file, "rb") as f:
        found[key] = f.read()
  return found


def require_path(path: str | os.PathLike) -> str:
  """``path`` as a string if it exists; else Cifar10TarballError."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise Cifar10TarballError(f"CIFAR-10 tarball not found: {path}")
  return path


def read_files(path: str | os.PathLike) -> dict[str, bytes]:
  """The bytes of ``data_batch_1..5``, ``test_batch`` and ``batches.meta``.

  Args:
    path: ``cifar-10-python.tar.gz`` (any tar compression), or the extracted
      ``cifar-10-batches-py`` folder or its parent.

  Returns:
    ``{file name: bytes}`` for the 7 files.

  Raises:
    Cifar10TarballError: ``path`` is missing, unreadable, or lacks some of the files.
  """
  path = require_path(path)
  try:
    found = _read_folder(path) if os.path.isdir(path) else _read_tar(path)
  except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
    raise Cifar10TarballError(
        f"cannot read {path} as the CIFAR-10 python tarball ({type(e).__name__}: {e})") from e
  missing = [key for key in _WANTED if key not in found]
  if missing:
    raise Cifar10TarballError(
        f"{path} is not the CIFAR-10 python tarball (cifar-10-python.tar.gz): "
        f"{FOLDER}/{{{','.join(missing)}}} missing")
  return found


def read_tarball(path: str | os.PathLike) -> dict[str, Split]:
  """Both splits of the CIFAR-10 python tarball, in tarball order.

  Args:
    path: see ``read_files``.

  Returns:
    ``{"train": Split, "test": Split}``: images uint8 [n, 32, 32, 3] in [0, 255] (HWC,
    RGB), labels int64 [n] in 0..9. Train is ``data_batch_1..5`` concatenated (50000 in
    the real tarball), test is ``test_batch`` (10000), each in file order.

  Raises:
    Cifar10TarballError: see ``read_files``, ``parse_batch``, ``check_meta``.
  """
  files = read_files(path)
  check_meta(files[META])

  def split(names):
    parts = [parse_batch(files[name], f"{FOLDER}/{name}") for name in names]
    return Split(np.concatenate([p.images for p in parts]),
                 np.concatenate([p.labels for p in parts]))

  return {"train": split(TRAIN_BATCHES), "test": split(TEST_BATCHES)}


class Cifar10Tarball(tfds.core.GeneratorBasedBuilder):
  """CIFAR-10 in tarball order: images [32, 32, 3] uint8 in [0, 255], labels 0..9.

  Args (to prepare; reading needs none):
    splits: ``read_tarball(path)``; the builder writes exactly these records, in order.
    **kwargs: ``tfds.core.DatasetBuilder`` arguments (``data_dir``, ``file_format``).
  """

  name = "cifar10_tarball"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": ("Initial release: the CIFAR-10 python tarball, records in tarball order "
                "(train data_batch_1..5, test test_batch), uint8 HWC images."),
  }

  def __init__(self, *, splits: Mapping[str, Split] | None = None, **kwargs):
    self._splits = splits
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # keep the tarball order (keys are positions)
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the user gives the tarball.
    if self._splits is None:
      raise Cifar10TarballError(
          "cifar10_tarball is prepared from a local file: python -m "
          "jaxpure.datasets.prepare cifar10 --from cifar-10-python.tar.gz")
    return {name: self._generate_examples(split) for name, split in self._splits.items()}

  def _generate_examples(self, split: Split):
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
      yield i, {"image": image, "label": int(label)}
