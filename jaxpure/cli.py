"""What the thin CLIs (train.py, evaluate.py) share: flag parsing and one-line errors.

A user's mistake is one line on stderr and exit code 2, never a traceback.
"""

import contextlib
import sys

from absl import flags

from jaxpure.errors import UserInputError


def fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def parse_flags_or_exit(argv):
  """absl flags parser for `app.run` that reports bad flags in one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(" ".join(str(e).split()))
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # raised by config overrides
    fail(f"bad config override: {' '.join(str(e).split())}")


def checked_config(config):
  """The config from --config, checked against configs/default.py's keys, types and ranges."""
  if config is None:
    fail("--config is required, e.g. --config configs/digits.py")
  try:
    config.to_dict()  # config_flags loads the file lazily: surface a load failure here
  except Exception as e:  # noqa: BLE001  (whatever the config file raised)
    fail(f"cannot load the --config file: {' '.join(str(e).split())}")
  from configs import default  # the CLIs run from the repository root
  from jaxpure import experiment
  with user_errors_exit():
    experiment.check_config(config, default.get_config())
  return config


@contextlib.contextmanager
def user_errors_exit():
  """Turns UserInputError (and missing files) into one line on stderr and exit 2."""
  try:
    yield
  except (UserInputError, FileNotFoundError) as e:
    fail(" ".join(str(e).split()))


def define_distributed_flags():
  """--coordinator_address, --num_processes, --process_id (multi-process runs)."""
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for a multi-process run (else auto-detected "
                      "on TPU pods, SLURM and Open MPI)")
  flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")


def init_distributed(config) -> None:
  """Starts jax.distributed from the flags / environment, before JAX touches a device."""
  from jaxpure import parallel
  f = flags.FLAGS
  with user_errors_exit():
    parallel.initialize_distributed(
        f.coordinator_address, f.num_processes, f.process_id,
        initialization_timeout=config.distributed.initialization_timeout,
        heartbeat_timeout_seconds=config.distributed.heartbeat_timeout_seconds)
