"""Trains what a config names: the score network (DSM), then the classifier.

  python train.py --config configs/digits.py --workdir runs/digits [--config.KEY=VALUE ...]
      [--models score,classifier]

Resumes from WORKDIR/checkpoints; SIGTERM/SIGINT saves a checkpoint and exits 0. Bad input
(config, data, workdir, checkpoint, NaN loss) prints one line on stderr and exits 2.
"""

import signal
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from jaxpure import cli

cli.define_distributed_flags()
cli.define_show_config_flag()
flags.declare_key_flag("show_config")  # listed in the short --help
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/<data set>).")
_MODELS = flags.DEFINE_list("models", ["score", "classifier"], "Which models to train.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
  logging.set_verbosity(logging.WARNING)  # orbax/TFDS info lines would drown the progress
  config = cli.checked_config(_CONFIG.value)
  cli.enable_compilation_cache()
  cli.init_distributed(config)
  workdir = _WORKDIR.value or f"runs/{config.data.name}"
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  from jaxpure.jobs import train  # after flag parsing: importing JAX/TFDS takes seconds
  with cli.user_errors_exit():
    summary = train.run(config, workdir, tuple(_MODELS.value), should_stop=stop.is_set)
  sys.exit(0 if summary is not None or stop.is_set() else 1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags_or_exit)
