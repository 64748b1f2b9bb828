"""Evaluate a trained digits defense from Python: load it, attack it, print the report.

  python train.py --config configs/digits.py --workdir runs/digits     # once
  python examples/evaluate_digits.py runs/digits [--config configs/digits.py] [-n 64]
"""

import argparse
import json
import os

import jaxpure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdir")
  p.add_argument("--config", default=os.path.join(REPO, "configs", "digits.py"))
  p.add_argument("-n", "--num_examples", type=int, default=64)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--n_eot", type=int, default=2)
  args = p.parse_args()

  defense, params = jaxpure.load_defense(args.config, args.workdir)
  x, y = jaxpure.load_examples(args.config, "test", args.num_examples)
  held_out = jaxpure.load_examples(args.config, "test", 32, first=args.num_examples)
  eps = jaxpure.load_config(args.config).attack.eps
  report = jaxpure.evaluate_defense(defense, params, x, y, eps=eps, steps=args.steps,
                                    n_eot=args.n_eot, attacks=("pgd_eot", "apgd_eot"),
                                    budget="auto", budget_data=held_out)
  print(json.dumps({k: report[k] for k in (
      "robust_accuracy_worst_case", "robust_accuracy_worst_case_standard_error",
      "clean_accuracy", "defended_clean_accuracy", "robust_accuracy", "budget_status")},
                   indent=1))


if __name__ == "__main__":
  main()
