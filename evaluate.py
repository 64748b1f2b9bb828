"""Evaluates a trained workdir: clean accuracy, defended accuracy (the config's purifier:
ADP or DiffPure) and attacked accuracy, with pictures.

  python evaluate.py --config configs/digits.py --workdir runs/digits
      [--attacks pgd_clf,bpda_eot,bpda_eot_adp,pgd_eot_full,apgd_eot,pgd_eot_surrogate]
      [--sweep] [--certify] [--num_examples N] [--checkpoint_step score=STEP] [--output DIR]
      [--show_config]

Writes into OUTPUT (default WORKDIR/eval): report.json; purification.png and steps.png;
with attacks adversarial.png; with --sweep eps_sweep.png; with config.eval.budget_attack
among the attacks budget.png; with --certify certified.png (and the report's `certified`
section). Each run's report and pictures are also kept per settings in OUTPUT/reports/
(report_<settings hash>.json, purification_<settings hash>.png, ...); the plain names are the
latest run's. Finished batches are kept under OUTPUT/batches: an interrupted run started
again with the same arguments resumes. Bad input prints one line on stderr and exits 2.
"""

import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxpure import cli

cli.define_distributed_flags()
cli.define_show_config_flag()
flags.declare_key_flag("show_config")  # listed in the short --help
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run (default runs/<data set>).")
_ATTACKS = flags.DEFINE_list("attacks", [], "Attacks to run: pgd_clf, bpda_eot, bpda_eot_adp, "
                             "pgd_eot_full, apgd_eot, pgd_eot_surrogate, pgd_eot_inloop.")
_SWEEP = flags.DEFINE_bool("sweep", False, "Also run the eps sweep of config.attack.sweep_attack "
                           "(the gradient-masking check: accuracy must reach ~0 at a large eps).")
_CERTIFY = flags.DEFINE_bool("certify", False, "Also certify the smoothed classifiers of "
                             "config.certify (randomized smoothing through the denoiser, with "
                             "the attack's upper bound beside each certified accuracy).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the evaluation (default "
                              "WORKDIR/eval); the workdir itself is only read.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None,
                                     "Evaluate the first N test examples (default: config.eval).")
_CHECKPOINT_STEP = flags.DEFINE_list(
    "checkpoint_step", [], "Evaluate these kept checkpoints instead of the latest, as KIND=STEP "
    "(e.g. score=1500,classifier=300): for when the latest checkpoint is damaged.")


def _checkpoint_steps(items) -> dict[str, int]:
  """{kind: step} from --checkpoint_step KIND=STEP,...; one-line error otherwise."""
  steps = {}
  for item in items:
    kind, _, step = item.partition("=")
    if kind not in ("score", "classifier") or not step.isdigit():
      cli.fail(f"--checkpoint_step={item}; expected KIND=STEP with KIND score or classifier, "
               "e.g. --checkpoint_step=score=1500")
    steps[kind] = int(step)
  return steps


def _interrupted(signum, frame):
  """SIGTERM/SIGINT: finished batches are already stored; say so and how to resume."""
  del frame
  print(f"[eval] interrupted by {signal.Signals(signum).name}: every finished batch is stored; "
        "run the same command again to resume", file=sys.stderr, flush=True)
  os._exit(128 + signum)  # at once, even inside a long XLA compile


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR")
  logging.set_verbosity(logging.WARNING)
  config = cli.checked_config(_CONFIG.value)
  if _NUM_EXAMPLES.value is not None and _NUM_EXAMPLES.value < 1:
    cli.fail(f"--num_examples={_NUM_EXAMPLES.value}; expected >= 1")
  steps = _checkpoint_steps(_CHECKPOINT_STEP.value)
  cli.enable_compilation_cache()
  cli.init_distributed(config)
  workdir = _WORKDIR.value or f"runs/{config.data.name}"
  signal.signal(signal.SIGTERM, _interrupted)
  signal.signal(signal.SIGINT, _interrupted)
  from jaxpure.jobs import evaluation
  with cli.user_errors_exit():
    evaluation.evaluate(config, workdir, _ATTACKS.value, _NUM_EXAMPLES.value,
                        sweep=_SWEEP.value, output_dir=_OUTPUT.value, certify=_CERTIFY.value,
                        **({"checkpoint_steps": steps} if steps else {}))
  sys.exit(0)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags_or_exit)
