"""Errors that mean "the user gave something wrong": the CLIs print them as one line, exit 2."""


class UserInputError(ValueError):
  """Base class: bad input from the user (config, data, workdir, checkpoint)."""


class ConfigError(UserInputError):
  """A config key is unknown, ill-typed or out of range."""


class DataNotPreparedError(UserInputError):
  """A TFDS data set is not prepared as array_record where we look for it."""


class WorkdirError(UserInputError):
  """The working directory cannot be created or written."""


class CheckpointMismatchError(UserInputError):
  """A checkpoint was written for another model, head or shape than the config asks for."""


class CheckpointDamagedError(UserInputError):
  """A checkpoint's files are truncated, corrupted or missing (not a checkpoint of another
  model). `path` is the damaged file or folder, `step` the checkpoint's step."""

  def __init__(self, message: str, *, path: str | None = None, step: int | None = None):
    super().__init__(message)
    self.path, self.step = path, step


class NonFiniteLossError(UserInputError):
  """Training produced a NaN/inf loss or parameters; the last good checkpoint is kept."""


class ImporterError(UserInputError):
  """A checkpoint to import is unreadable, of another layout, or does not fit the architecture."""
