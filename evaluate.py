"""Evaluates a trained workdir: purification (ADP) and attacks.

  python evaluate.py --config configs/digits.py --workdir runs/digits

Not built yet: purification is the next issue. This CLI exists so the contract of DESIGN §3
has its entry point; it exits 2 with a one-line message.
"""

from absl import app, flags
from ml_collections import config_flags

from jaxpure import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/digits.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run.")


def main(argv):
  del argv
  cli.checked_config(_CONFIG.value)
  cli.fail("not yet: purification and attacks are not implemented in this version")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags_or_exit)
