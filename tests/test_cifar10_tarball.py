"""The offline CIFAR-10 builder (jaxpure.datasets.cifar10_tarball) and `prepare cifar10 --from`.

The tests build small tarballs in the layout of the real cifar-10-python.tar.gz: folder
cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta, each pickled the way
Python 2's cPickle wrote them (protocol 2, `str` as BINSTRING, numpy arrays rebuilt by
numpy.core.multiarray._reconstruct). Every TFDS directory is a tmp_path.
"""

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxpure import data
from jaxpure.datasets import cifar10_tarball as ct
from jaxpure.datasets import prepare as prepare_lib
from jaxpure.errors import DataNotPreparedError, UserInputError

#: Images per data_batch_1..5 (uneven, so the concatenation order shows) and in test_batch.
TRAIN_SIZES = (3, 4, 2, 5, 3)
TEST_SIZE = 12


class _Py2Pickler(pickle._Pickler):  # noqa: SLF001  (the pure-Python pickler has `dispatch`)
  """Pickles `bytes` as Python 2's cPickle pickled `str` (SHORT_BINSTRING / BINSTRING)."""

  dispatch = dict(pickle._Pickler.dispatch)  # noqa: SLF001

  def _save_py2_str(self, obj):
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
  """`obj` pickled as in the CIFAR-10 files (numpy arrays under numpy 1's module name)."""
  buffer = io.BytesIO()
  _Py2Pickler(buffer, protocol=2).dump(obj)
  raw = buffer.getvalue()
  return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_batches(seed=0):
  """{file name: dict} of a small CIFAR-10 python tarball, as the real files hold them."""
  rng = np.random.default_rng(seed)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  batches = {}
  for name, n in zip(names, TRAIN_SIZES + (TEST_SIZE,)):
    batches[name] = {
        b"batch_label": f"fake {name}".encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
    }
  batches["batches.meta"] = {
      b"num_cases_per_batch": 10000,
      b"label_names": [name.encode() for name in ct.LABEL_NAMES],
      b"num_vis": 3072,
  }
  return batches


def write_tarball(path, batches, folder="cifar-10-batches-py", mode="w:gz"):
  """Writes {file name: dict or raw bytes} under `folder/` in a tar at `path`."""
  with tarfile.open(path, mode) as tar:
    for name, content in batches.items():
      raw = content if isinstance(content, bytes) else py2_pickle(content)
      info = tarfile.TarInfo(f"{folder}/{name}")
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
  return path


def pixel(batch, i, y, x, c):
  """Channel c of pixel (y, x) of record i, read from the raw row as the CIFAR docs say."""
  return batch[b"data"][i, c * 1024 + y * 32 + x]


def read_raw(source):
  """All records of a data source in order: uint8 [n, 32, 32, 3], int64 [n]."""
  records = source.__getitems__(list(range(len(source))))
  return (np.stack([np.asarray(r["image"]) for r in records]),
          np.array([int(r["label"]) for r in records], np.int64))


@pytest.fixture(scope="module")
def batches():
  return make_batches()


@pytest.fixture(scope="module")
def tarball(batches, tmp_path_factory):
  return write_tarball(tmp_path_factory.mktemp("src") / "cifar-10-python.tar.gz", batches)


@pytest.fixture(scope="module")
def prepared_dir(tarball, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare_lib.prepare("cifar10", data_dir=str(data_dir), tarball=tarball)
  return str(data_dir)


def test_test_split_keeps_test_batch_order(batches, prepared_dir):
  source = data.open_split("cifar10", "test", prepared_dir)
  images, labels = read_raw(source)
  test = batches["test_batch"]
  assert images.shape == (TEST_SIZE, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, test[b"labels"])
  for i in range(TEST_SIZE):  # record i is row i of test_batch, pixel by pixel
    expected = np.array([[[pixel(test, i, y, x, c) for c in range(3)] for x in range(32)]
                         for y in range(32)], np.uint8)
    np.testing.assert_array_equal(images[i], expected, err_msg=f"test record {i}")


def test_train_split_is_data_batches_1_to_5_in_order(batches, prepared_dir):
  images, labels = read_raw(data.open_split("cifar10", "train", prepared_dir))
  assert len(images) == sum(TRAIN_SIZES)
  position = 0
  for b in range(1, 6):
    batch = batches[f"data_batch_{b}"]
    for i, label in enumerate(batch[b"labels"]):
      assert labels[position] == label, (b, i)
      for y, x, c in [(0, 0, 0), (0, 31, 1), (31, 0, 2), (31, 31, 0), (7, 19, 1), (20, 3, 2)]:
        assert images[position, y, x, c] == pixel(batch, i, y, x, c), (b, i, y, x, c)
      position += 1


def test_chosen_records_through_read_examples(batches, prepared_dir):
  """What training and evaluation see: float32 in [0, 1] of the tarball's values."""
  source = data.open_split("cifar10", "test", prepared_dir)
  chosen = [11, 0, 5]
  images, labels = data.read_examples(source, chosen)
  test = batches["test_batch"]
  assert images.dtype == np.float32 and images.shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(labels, [test[b"labels"][i] for i in chosen])
  for k, i in enumerate(chosen):
    assert images[k, 0, 0, 0] == np.float32(pixel(test, i, 0, 0, 0) / 255.0)
    assert images[k, 31, 30, 2] == np.float32(pixel(test, i, 31, 30, 2) / 255.0)
    assert images[k, 12, 25, 1] == np.float32(pixel(test, i, 12, 25, 1) / 255.0)


def test_builder_info(prepared_dir):
  assert prepare_lib.source_name("cifar10", prepared_dir) == "cifar10_tarball"
  assert prepare_lib.is_prepared("cifar10", prepared_dir)
  builder = tfds.builder("cifar10_tarball", data_dir=prepared_dir)
  info = builder.info
  assert info.disable_shuffling  # else TFDS stores records in hashed-key order
  assert info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert info.splits["train"].num_examples == sum(TRAIN_SIZES)
  assert info.splits["test"].num_examples == TEST_SIZE
  assert info.features["label"].names == list(ct.LABEL_NAMES)
  assert os.path.isdir(os.path.join(prepared_dir, "cifar10_tarball", "1.0.0"))
  assert not os.path.exists(os.path.join(prepared_dir, "cifar10"))


def test_rows_to_images_layout():
  row = np.arange(3072, dtype=np.int64)[None]  # value = its index in the row
  image = ct.rows_to_images(row)[0]
  assert image.shape == (32, 32, 3)
  assert image[0, 0].tolist() == [0, 1024, 2048]
  assert image[0, 1].tolist() == [1, 1025, 2049]  # x is the fastest index in a plane
  assert image[1, 0].tolist() == [32, 1056, 2080]
  assert image[31, 31].tolist() == [1023, 2047, 3071]


def test_read_tarball_matches_file_and_folder(batches, tarball, tmp_path):
  from_tar = ct.read_tarball(tarball)
  with tarfile.open(tarball) as tar:
    tar.extractall(tmp_path, filter="data")
  for path in (tmp_path, tmp_path / "cifar-10-batches-py"):
    from_folder = ct.read_tarball(path)
    for split in ("train", "test"):
      np.testing.assert_array_equal(from_folder[split].images, from_tar[split].images)
      np.testing.assert_array_equal(from_folder[split].labels, from_tar[split].labels)
  np.testing.assert_array_equal(from_tar["test"].labels, batches["test_batch"][b"labels"])
  assert from_tar["test"].images.dtype == np.uint8
  assert from_tar["train"].labels.dtype == np.int64


def test_reads_python3_pickles(batches, tmp_path):
  """A tarball re-pickled by Python 3 (protocol 2 and 5) reads the same."""
  for protocol in (2, 5):
    raw = {k: pickle.dumps(v, protocol=protocol) for k, v in batches.items()}
    path = write_tarball(tmp_path / f"p{protocol}.tar", raw, mode="w")
    got = ct.read_tarball(path)
    np.testing.assert_array_equal(got["test"].labels, batches["test_batch"][b"labels"])
    assert got["test"].images[3, 4, 5, 1] == pixel(batches["test_batch"], 3, 4, 5, 1)


def test_prepare_again_is_a_no_op(prepared_dir, tarball):
  builder = prepare_lib.prepare("cifar10", data_dir=prepared_dir, tarball=tarball)
  assert builder.name == "cifar10_tarball"
  # Without --from, cifar10 is already there: nothing to download, no TensorFlow needed.
  assert prepare_lib.prepare("cifar10", data_dir=prepared_dir).data_dir == builder.data_dir


def test_unprepared_cifar10_mentions_from(tmp_path):
  assert prepare_lib.source_name("cifar10", str(tmp_path)) == "cifar10"
  with pytest.raises(DataNotPreparedError, match="--from cifar-10-python.tar.gz"):
    data.open_split("cifar10", "test", str(tmp_path))


class _RunsCode:
  """Unpickling this would run `touch MARKER`."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _bad_inputs(batches, tmp_path):
  """{case: path} of files that are not a usable CIFAR-10 python tarball."""
  tmp_path.mkdir()
  garbled = tmp_path / "garbled.tar.gz"
  garbled.write_bytes(os.urandom(4096))
  good = tmp_path / "good.tar.gz"
  write_tarball(good, batches)
  truncated = tmp_path / "truncated.tar.gz"
  truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  no_test = {k: v for k, v in batches.items() if k != "test_batch"}
  wrong_shape = dict(batches, test_batch={
      **batches["test_batch"], b"data": np.zeros((TEST_SIZE, 1024), np.uint8)})
  bad_label = dict(batches, data_batch_2={
      **batches["data_batch_2"], b"labels": [10] * TRAIN_SIZES[1]})
  not_pickle = dict(batches, data_batch_3=b"this is not a pickle")
  cifar100_meta = dict(batches, **{"batches.meta": {b"label_names": [b"apple"] * 10}})
  code = dict(batches, test_batch=pickle.dumps(_RunsCode(tmp_path / "ran"), protocol=2))
  cases = {
      "missing": tmp_path / "nope.tar.gz",
      "garbled": garbled,
      "truncated": truncated,
      "no_test_batch": write_tarball(tmp_path / "no_test.tar.gz", no_test),
      "wrong_folder": write_tarball(tmp_path / "folder.tar.gz", batches, folder="cifar"),
      "wrong_shape": write_tarball(tmp_path / "shape.tar.gz", wrong_shape),
      "bad_label": write_tarball(tmp_path / "label.tar.gz", bad_label),
      "not_pickle": write_tarball(tmp_path / "not_pickle.tar.gz", not_pickle),
      "other_classes": write_tarball(tmp_path / "meta.tar.gz", cifar100_meta),
      "runs_code": write_tarball(tmp_path / "code.tar.gz", code),
      "empty_folder": tmp_path / "empty_dir",
  }
  cases["empty_folder"].mkdir()
  return cases


def test_bad_tarballs_are_one_line_errors_and_write_nothing(batches, tmp_path, capsys):
  cases = _bad_inputs(batches, tmp_path / "inputs")
  for case, path in cases.items():
    data_dir = tmp_path / f"tfds_{case}"
    code = prepare_lib.main(["cifar10", "--from", str(path), "--data_dir", str(data_dir)])
    out, err = capsys.readouterr()
    assert code == 2, (case, out, err)
    assert out == "" and "Traceback" not in err, (case, err)
    assert len(err.strip().splitlines()) == 1, (case, err)
    assert err.startswith("python -m jaxpure.datasets.prepare: error: "), (case, err)
    assert not data_dir.exists() or not any(data_dir.iterdir()), case
    with pytest.raises(UserInputError):
      ct.read_tarball(path)
  assert not (tmp_path / "inputs" / "ran").exists()  # the pickle's code never ran


def test_from_is_for_cifar10_only(tarball, tmp_path, capsys):
  code = prepare_lib.main(["digits", "--from", str(tarball), "--data_dir", str(tmp_path)])
  _, err = capsys.readouterr()
  assert code == 2 and "--from is for cifar10 only" in err
  assert len(err.strip().splitlines()) == 1


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxpure.datasets.prepare", *args],
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli(tarball, batches, tmp_path):
  """The command line end to end: a bad file is one line, exit 2; the tarball prepares."""
  bad = tmp_path / "bad.tar.gz"
  bad.write_bytes(b"\x1f\x8b not really gzip")
  result = _run_cli("cifar10", "--from", str(bad), "--data_dir", str(tmp_path / "tfds"))
  assert result.returncode == 2 and result.stdout == ""
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  result = _run_cli("cifar10", "--from", str(tarball), "--data_dir", str(tmp_path / "tfds"))
  assert result.returncode == 0, result.stderr
  assert str(tmp_path / "tfds" / "cifar10_tarball" / "1.0.0") in result.stdout
  _, labels = read_raw(data.open_split("cifar10", "test", str(tmp_path / "tfds")))
  np.testing.assert_array_equal(labels, batches["test_batch"][b"labels"])
