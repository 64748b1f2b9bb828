"""Evaluates a trained workdir: clean, purified (ADP) and attacked accuracy, with pictures.

  python evaluate.py --config configs/digits.py --workdir runs/digits \
      [--attacks pgd_clf,bpda_eot,pgd_eot_full,apgd_eot] [--num_examples N]

Writes WORKDIR/eval/report.json, purification.png, steps.png and, with attacks,
adversarial.png and eps_sweep.png. Finished batches are kept under WORKDIR/eval/batches:
an interrupted run started again with the same arguments resumes. Bad input prints one line
on stderr and exits 2.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxpure import cli

cli.define_distributed_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run (default runs/<data set>).")
_ATTACKS = flags.DEFINE_list("attacks", [], "Attacks to run: pgd_clf, bpda_eot, bpda_eot_adp, "
                             "pgd_eot_full, apgd_eot.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None,
                                     "Evaluate the first N test examples (default: config.eval).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
  logging.set_verbosity(logging.WARNING)
  config = cli.checked_config(_CONFIG.value)
  if _NUM_EXAMPLES.value is not None and _NUM_EXAMPLES.value < 1:
    cli.fail(f"--num_examples={_NUM_EXAMPLES.value}; expected >= 1")
  cli.init_distributed(config)
  workdir = _WORKDIR.value or f"runs/{config.data.name}"
  from jaxpure import evaluate_job
  with cli.user_errors_exit():
    evaluate_job.evaluate(config, workdir, _ATTACKS.value, _NUM_EXAMPLES.value)
  sys.exit(0)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags_or_exit)
