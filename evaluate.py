"""Evaluates a trained workdir: clean and purified (ADP) accuracy, with pictures.

  python evaluate.py --config configs/digits.py --workdir runs/digits [--num_examples N]

Writes WORKDIR/eval/report.json, WORKDIR/eval/purification.png (rows: clean, then noised /
purified for several restarts) and WORKDIR/eval/steps.png (accuracy and step size per
purification step). Bad input prints one line on stderr and exits 2.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxpure import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run (default runs/<data set>).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None,
                                     "Evaluate the first N test examples (default: config.eval).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
  logging.set_verbosity(logging.WARNING)
  config = cli.checked_config(_CONFIG.value)
  if _NUM_EXAMPLES.value is not None and _NUM_EXAMPLES.value < 1:
    cli.fail(f"--num_examples={_NUM_EXAMPLES.value}; expected >= 1")
  workdir = _WORKDIR.value or f"runs/{config.data.name}"
  from jaxpure import experiment
  with cli.user_errors_exit():
    experiment.evaluate_defense(config, workdir, _NUM_EXAMPLES.value)
  sys.exit(0)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags_or_exit)
