"""Checks an evaluation's chosen attack budget after the fact: the same evaluation at the
chosen budget and at twice it (every exact-gradient attack's steps doubled), on the first N
reported examples, and the paired test of the worst case over attacks between them.

  python benchmarks/budget_doubling.py --config configs/digits.py --workdir runs/digits \
      --report runs/digits/eval/report.json --num_examples 64 --output runs/budget_check

--report: the evaluation whose chosen budget (its budget_search, or its attacks' settings) is
checked; both evaluations run with config.eval.budget = "fixed" on its attacks, without budget
curves (they are not part of the test). Prints both worst cases and the one-sided paired sign
test (jaxpure.statistics.paired_budget_test) of "twice the budget breaks more examples";
writes the two reports under --output.

Both evaluations keep their batches under OUTPUT/chosen/batches and OUTPUT/doubled/batches
and reuse any stored batch of the same networks, examples and settings. Before running, the
check links the checked evaluation's stored batches (the `batches` folder beside --report)
into both folders (hard links where the file system allows, copies otherwise; stored batches
are never rewritten in place), so when that evaluation ran on exactly --num_examples examples
its units are read, not recomputed, and only the doubled attacks run.
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def budgets(report: dict) -> tuple[int, int]:
  """(num_steps, n_eot) of PGD-type exact-gradient attacks at the report's chosen budget."""
  if report.get("budget_search"):
    chosen = report["budget_search"]["chosen"]
    return chosen["num_steps"], chosen["n_eot"]
  settings = report["attacks"]["pgd_eot_full"]["settings"]
  return settings["num_steps"], settings["n_eot"]


def batches_beside(report_path: str) -> str:
  """The stored batches of the evaluation that wrote `report_path`: EVAL/batches for
  EVAL/report.json and for EVAL/reports/report_<hash>.json."""
  folder = os.path.dirname(os.path.abspath(report_path))
  if os.path.basename(folder) == "reports":
    folder = os.path.dirname(folder)
  return os.path.join(folder, "batches")


def seed_batches(report_path: str, output: str) -> int:
  """Links (or, across file systems, copies) every stored batch file of the evaluation that
  wrote `report_path` into OUTPUT/chosen/batches and OUTPUT/doubled/batches, keeping files
  already there; returns how many files were added. A stored unit is read only by an
  evaluation whose signature matches, so batches of other settings or examples are inert, and
  the store never rewrites a file in place (it writes a new one and renames it), so the links
  stay independent. Raises ValueError when OUTPUT lies inside those batches."""
  source = batches_beside(report_path)
  if not os.path.isdir(source):
    return 0
  if os.path.commonpath([source, os.path.abspath(output)]) == source:
    raise ValueError(f"--output {output} lies inside the checked evaluation's batches {source}")
  added = 0
  for which in ("chosen", "doubled"):
    for folder, _, files in os.walk(source):
      target = os.path.join(output, which, "batches", os.path.relpath(folder, source))
      os.makedirs(target, exist_ok=True)
      for name in files:
        if name.endswith(".tmp") or name.endswith(".tmp.npz"):
          continue  # a write in progress or one a killed run left
        src, dst = os.path.join(folder, name), os.path.join(target, name)
        if os.path.exists(dst):
          continue
        try:
          os.link(src, dst)
        except OSError:
          tmp = dst + ".tmp"  # a stopped copy never leaves a short file under the real name
          shutil.copy2(src, tmp)
          os.replace(tmp, dst)
        added += 1
  return added


def run(config, workdir: str, attacks: list[str], num_examples: int, steps: int, n_eot: int,
        output: str, print_fn=print) -> dict:
  """The evaluation of `attacks` on the first num_examples examples with every exact-gradient
  attack at steps x n_eot (fixed budget), written to `output`; returns its report."""
  from jaxpure import attacks as attacks_lib
  from jaxpure.jobs import evaluation
  config = config.copy_and_resolve_references()
  config.eval.budget = "fixed"
  config.eval.budget_examples = 0  # no budget curves: not part of the test
  for name in attacks:
    if attacks_lib.SPECS[name].exact_gradient:
      s = attacks_lib.with_gradient_budget(name, evaluation.attack_settings(config, name), steps,
                                           n_eot)
      config.attack[name].update(num_steps=s.num_steps, n_eot=s.n_eot)
  return evaluation.evaluate(config, workdir, attacks, num_examples, output_dir=output,
                             print_fn=print_fn)


def compare(chosen: dict, doubled: dict, level: float) -> dict:
  """The paired test of the worst case over attacks, example by example."""
  from jaxpure import statistics
  test = statistics.paired_budget_test(chosen["worst_case"]["per_example"],
                                       doubled["worst_case"]["per_example"], level)
  return {"worst_case_chosen": chosen["robust_accuracy_worst_case"],
          "worst_case_doubled": doubled["robust_accuracy_worst_case"],
          "standard_error_doubled": doubled["robust_accuracy_worst_case_standard_error"],
          **test}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--report", required=True)
  parser.add_argument("--num_examples", type=int, default=64)
  parser.add_argument("--output", required=True)
  parser.add_argument("--level", type=float, default=None)
  args = parser.parse_args(argv)
  try:
    with open(args.report) as f:
      reference = json.load(f)
    from benchmarks.bench_purify import load_config
    config = load_config(args.config)
    attacks = list(reference["robust_accuracy"])
    steps, n_eot = budgets(reference)
  except (OSError, ValueError, KeyError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  level = args.level if args.level is not None else config.eval.budget_level
  quiet = lambda s: None  # noqa: E731
  try:
    seeded = seed_batches(args.report, args.output)
  except (OSError, ValueError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  source = batches_beside(args.report)
  print(f"seeded {args.output} with {seeded} new stored batch files of the checked evaluation "
        f"({source})" if os.path.isdir(source) else
        f"no stored batches of the checked evaluation at {source}: both budgets are computed")
  chosen = run(config, args.workdir, attacks, args.num_examples, steps, n_eot,
               os.path.join(args.output, "chosen"), quiet)
  doubled = run(config, args.workdir, attacks, args.num_examples, 2 * steps, n_eot,
                os.path.join(args.output, "doubled"), quiet)
  result = dict(compare(chosen, doubled, level), attacks=attacks, num_examples=args.num_examples,
                chosen_budget=[steps, n_eot], doubled_budget=[2 * steps, n_eot])
  print(f"worst case over {', '.join(attacks)} on the first {args.num_examples} examples: "
        f"{result['worst_case_chosen']:.4f} at {steps} steps x EOT {n_eot}, "
        f"{result['worst_case_doubled']:.4f} at {2 * steps} steps x EOT {n_eot}")
  print(f"paired sign test: {result['broken_more']} examples broken more, "
        f"{result['broken_fewer']} fewer at twice the budget; one-sided p = "
        f"{result['p_value']:.3g} ({'still helps' if result['still_helps'] else 'no more than the test allows'} at {level})")
  with open(os.path.join(args.output, "budget_doubling.json"), "w") as f:
    json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
