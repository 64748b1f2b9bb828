"""Prepares the TFDS data sets jaxpure trains on, as array_record files.

``tfds.data_source`` (the reader ``jaxpure.data`` uses) reads only array_record
files, so every data set is prepared with ``file_format="array_record"``.

- ``digits``: our offline builder (``jaxpure.datasets.digits``), scikit-learn's
  bundled 8x8 digits. No network, no TensorFlow.
- ``mnist``, ``cifar10``: the official TFDS builders. Preparing them needs
  TensorFlow (``pip install -e ".[tf]"``) and a network, once; reading them
  afterwards needs neither.
- ``cifar10 --from cifar-10-python.tar.gz``: our offline builder
  (``jaxpure.datasets.cifar10_tarball``) over the CIFAR-10 python tarball the user
  already has. No network, no TensorFlow; records keep the tarball order (test =
  ``test_batch``, as RobustBench evaluates). It is stored as ``cifar10_tarball``, and
  ``cifar10`` resolves to it wherever it is prepared (``source_name``), so configs
  keep ``data.name = "cifar10"``.

Command line::

  python -m jaxpure.datasets.prepare NAME [--data_dir DIR] [--from FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys

import tensorflow_datasets as tfds

from jaxpure.datasets import cifar10_tarball  # registers "cifar10_tarball"
from jaxpure.datasets import digits  # noqa: F401  (registers the "digits" builder)

#: Data set names ``prepare`` knows, in the order they are listed to users.
SUPPORTED = ("digits", "mnist", "cifar10")

#: The data sets whose preparation needs TensorFlow (official TFDS builders).
_NEEDS_TENSORFLOW = frozenset({"mnist", "cifar10"})

_FILE_FORMAT = "array_record"

#: Data sets that ``--from FILE`` prepares offline, and the file it takes.
FROM_FILE = {"cifar10": "cifar-10-python.tar.gz"}

#: For those: (builder class that stores them, reader of the file into the
#: builder's ``splits``). Where that builder is prepared, it is what the name
#: reads (``source_name``).
_FROM_FILE_BUILDERS = {
    "cifar10": (cifar10_tarball.Cifar10Tarball, cifar10_tarball.read_tarball),
}


def _check_name(name: str) -> None:
  if name not in SUPPORTED:
    raise ValueError(
        f"Unknown data set {name!r}; expected one of: {', '.join(SUPPORTED)}."
    )


def _normalize_data_dir(data_dir: str | os.PathLike | None) -> str | None:
  """``None`` or ``""`` (the configs' spelling) means the TFDS default directory."""
  if data_dir is None or str(data_dir) == "":
    return None
  return os.fspath(data_dir)


@contextlib.contextmanager
def _quiet_absl():
  """Hides TFDS's absl warnings while looking at a data directory.

  Over a directory not prepared yet TFDS warns "Variant folder ... has no
  dataset_info.json", which is expected here and would break one-line CLI errors.
  """
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _builder(
    name: str, data_dir: str | None, file_format: str | None = None
) -> tfds.core.DatasetBuilder:
  """The builder over ``data_dir``; ``file_format=None`` keeps the one on disk."""
  with _quiet_absl():
    return tfds.builder(name, data_dir=data_dir, file_format=file_format)


def _prepared_format(builder: tfds.core.DatasetBuilder) -> str | None:
  """The file format ``builder`` is prepared in, or None if it is not prepared."""
  with _quiet_absl():
    prepared = builder.is_prepared()
  if not prepared:
    return None
  # Once prepared, `info` is restored from the files: this is the format on disk.
  return tfds.core.FileFormat(builder.info.file_format).value


def _from_file_builder(name: str, data_dir: str | None, **kwargs):
  """The builder that ``prepare(name, tarball=...)`` writes, over ``data_dir``."""
  with _quiet_absl():
    return _FROM_FILE_BUILDERS[name][0](data_dir=data_dir, **kwargs)


def _prepared_from_file(
    name: str, data_dir: str | None
) -> tfds.core.DatasetBuilder | None:
  """The builder of ``name`` prepared with ``--from`` in ``data_dir``, or None."""
  if name not in _FROM_FILE_BUILDERS:
    return None
  builder = _from_file_builder(name, data_dir)
  return builder if _prepared_format(builder) == _FILE_FORMAT else None


def source_name(name: str, data_dir: str | os.PathLike | None = None) -> str:
  """The TFDS name to read ``name`` from in ``data_dir`` (what ``jaxpure.data`` opens).

  ``cifar10`` -> ``cifar10_tarball`` where ``prepare cifar10 --from FILE`` prepared it
  (then it wins over an official ``cifar10`` in the same directory: its test order is
  the tarball's), else ``cifar10``. Any other name is returned as is. Looks at files
  only: no download, no TensorFlow.
  """
  prepared = _prepared_from_file(name, _normalize_data_dir(data_dir))
  return prepared.name if prepared is not None else name


def _require_tensorflow(name: str) -> None:
  try:
    importlib.import_module("tensorflow")
  except ImportError as e:
    raise RuntimeError(
        f"Preparing {name!r} needs TensorFlow (and a network, once), which is "
        'not installed: pip install -e ".[tf]"'
    ) from e


def is_prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
  """Whether ``name`` is prepared in ``data_dir`` in a form ``tfds.data_source`` reads.

  Downloads nothing and needs no TensorFlow. A data set prepared in another file
  format (e.g. TFRecord by an older ``tfds.load``) counts as not prepared.
  ``cifar10`` counts as prepared if either ``prepare cifar10`` or
  ``prepare cifar10 --from FILE`` prepared it.

  Args:
    name: one of ``SUPPORTED``.
    data_dir: TFDS data directory; ``None`` or ``""`` for the TFDS default
      (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

  Returns:
    True if the data set's files and metadata are there as array_record.

  Raises:
    ValueError: ``name`` is not in ``SUPPORTED``.
  """
  _check_name(name)
  data_dir = _normalize_data_dir(data_dir)
  if _prepared_from_file(name, data_dir) is not None:
    return True
  return _prepared_format(_builder(name, data_dir)) == _FILE_FORMAT


def prepare(
    name: str,
    data_dir: str | os.PathLike | None = None,
    tarball: str | os.PathLike | None = None,
) -> tfds.core.DatasetBuilder:
  """Prepares ``name`` as array_record in ``data_dir`` (a no-op if already there).

  Args:
    name: one of ``SUPPORTED``.
    data_dir: TFDS data directory; ``None`` or ``""`` for the TFDS default
      (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    tarball: ``cifar10`` only (the CLI's ``--from``): the CIFAR-10 python tarball
      ``cifar-10-python.tar.gz`` (or its extracted ``cifar-10-batches-py`` folder).
      Prepared offline as ``cifar10_tarball``, records in tarball order.

  Returns:
    The prepared builder; ``builder.data_dir`` is where the files are, and
    ``tfds.data_source(source_name(name, data_dir), split=..., data_dir=data_dir)``
    reads them. Without ``tarball``, a ``cifar10`` prepared from the tarball counts
    as already there.

  Raises:
    ValueError: ``name`` is not in ``SUPPORTED``, or ``tarball`` is given for a
      data set other than ``cifar10``.
    jaxpure.errors.UserInputError: ``tarball`` is missing or not the CIFAR-10
      python tarball (``cifar10_tarball.Cifar10TarballError``); nothing is written.
    RuntimeError: ``name`` needs TensorFlow to prepare and it is not installed,
      or the data set is already there in a format other than array_record.
  """
  _check_name(name)
  data_dir = _normalize_data_dir(data_dir)
  if tarball is not None:
    return _prepare_from_file(name, data_dir, tarball)
  prepared = _prepared_from_file(name, data_dir)
  if prepared is not None:
    return prepared
  # Built first without a file format: asking for array_record over files
  # prepared as TFRecord makes TFDS raise a confusing ValueError.
  builder = _builder(name, data_dir)
  file_format = _prepared_format(builder)
  if file_format == _FILE_FORMAT:
    return builder
  if file_format is not None:
    raise RuntimeError(
        f"{name!r} is already prepared in {builder.data_dir} as {file_format}, "
        f"but tfds.data_source needs {_FILE_FORMAT}: delete that directory or "
        "use another data_dir."
    )
  if name in _NEEDS_TENSORFLOW:
    _require_tensorflow(name)
  builder = _builder(name, data_dir, file_format=_FILE_FORMAT)
  _download_and_prepare(builder, name)
  return builder


def _download_and_prepare(builder: tfds.core.DatasetBuilder, name: str) -> None:
  """``builder.download_and_prepare()`` saying so in one plain line on stdout, instead of
  TFDS's progress bars (carriage returns and terminal escape codes on stderr) and its bold
  messages on stdout (the rest of the project writes plain lines)."""
  print(f"preparing {name} as {_FILE_FORMAT} in {builder.data_dir} ...", flush=True)
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=import-outside-toplevel
  shown = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare()
  finally:
    tfds.display_progress_bar(shown)


def _prepare_from_file(
    name: str, data_dir: str | None, path: str | os.PathLike
) -> tfds.core.DatasetBuilder:
  """``prepare(name, data_dir, tarball=path)``: reads the whole file before writing."""
  if name not in _FROM_FILE_BUILDERS:
    raise ValueError(
        f"--from is for {', '.join(FROM_FILE)} only, not {name!r}.")
  cifar10_tarball.require_path(path)
  prepared = _prepared_from_file(name, data_dir)
  if prepared is not None:
    return prepared
  # Reads and checks the whole file first: a bad file raises before anything is written.
  splits = _FROM_FILE_BUILDERS[name][1](path)
  builder = _from_file_builder(
      name, data_dir, file_format=_FILE_FORMAT, splits=splits)
  _download_and_prepare(builder, name)
  return builder


class _OneLineErrorParser(argparse.ArgumentParser):
  """Reports usage errors in one line on stderr, exit status 2."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
  """Command line entry point; returns the exit status (0 ok, 2 error)."""
  parser = _OneLineErrorParser(
      prog="python -m jaxpure.datasets.prepare",
      description=(
          "Prepare a TFDS data set as array_record for tfds.data_source. "
          f"Known data sets: {', '.join(SUPPORTED)}."
      ),
  )
  parser.add_argument("name", help=f"data set: one of {', '.join(SUPPORTED)}")
  parser.add_argument(
      "--data_dir",
      default=None,
      help="TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
  )
  parser.add_argument(
      "--from",
      dest="tarball",
      metavar="FILE",
      default=None,
      help=(
          "cifar10 only: prepare offline (no TensorFlow, no network) from the CIFAR-10 "
          "python tarball cifar-10-python.tar.gz or its extracted cifar-10-batches-py "
          "folder; records keep the tarball order (test = test_batch)"
      ),
  )
  args = parser.parse_args(argv)
  try:
    builder = prepare(args.name, args.data_dir, tarball=args.tarball)
  except (ValueError, RuntimeError, OSError) as e:
    message = " ".join(str(e).split())  # one line, whatever the message holds
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2
  print(f"{args.name} prepared in {builder.data_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
