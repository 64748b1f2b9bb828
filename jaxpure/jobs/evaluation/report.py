"""The evaluation report: accuracies with standard errors, per-step statistics, the suspect
checks, and where it is written (EVAL/report.json, the latest, and EVAL/reports/<hash>.json,
one per evaluation settings, never overwritten by an evaluation of other settings)."""

import json
import math
import os

import numpy as np

from jaxpure import attacks as attacks_lib, statistics


def standard_error(p: float, n: int) -> float:
  return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def run_scores(runs: np.ndarray, resubmissions: int = 0) -> dict:
  """Scores of one attack's points over N independent runs of the defense, runs [N, n] bool:
  the mean accuracy over runs (the headline; N = 1 is the single scoring), the worst case
  (an example counts as robust only if every run is right: an attacker may resubmit) and the
  majority vote over runs (ties count as wrong), each with its standard error over examples;
  and the unbiased estimate of robustness to M = min(resubmissions, N) submissions
  (`statistics.resubmission_robustness`; resubmissions 0: M = N)."""
  n_runs, n = runs.shape
  per_example = runs.mean(0)
  out = {}
  for name, values in (("mean", per_example), ("all_runs", runs.all(0).astype(float)),
                       ("majority_vote", (per_example > 0.5).astype(float))):
    out[name] = {"accuracy": float(values.mean()),
                 "standard_error": statistics.standard_error_over_examples(values)}
  m = min(resubmissions or n_runs, n_runs)
  out["resubmission"] = {"submissions": m,
                         "accuracy": statistics.resubmission_robustness(runs, m)}
  out["runs"] = n_runs
  return out


def worst_case(runs_by_attack: dict) -> dict:
  """AutoAttack's union: per example and run, robust only if the defense is right at every
  attack's point; runs_by_attack {attack: [N, n] bool}. Returns the accuracy (mean over runs
  and examples), its standard error over examples, per example the fraction of runs robust
  (to pair evaluations example by example: `statistics.paired_budget_test`), and per attack
  how many examples it broke (in a majority of runs) and how many only it broke."""
  if not runs_by_attack:
    return {"accuracy": None, "standard_error": None, "per_example": [], "broken_by": {},
            "broken_only_by": {}}
  stacked = np.stack(list(runs_by_attack.values()))  # [A, N, n]
  union = stacked.all(0)  # [N, n]
  per_example = union.mean(0)
  n = per_example.shape[0]
  broken = stacked.mean(1) < 0.5  # [A, n]: the attack's point is wrong in most runs
  names = list(runs_by_attack)
  return {"accuracy": float(per_example.mean()),
          "standard_error": statistics.standard_error_over_examples(per_example),
          "per_example": [float(v) for v in per_example],
          "broken_by": {a: int(broken[i].sum()) for i, a in enumerate(names)},
          "broken_only_by": {a: int((broken[i] & (broken.sum(0) == 1)).sum())
                             for i, a in enumerate(names)}}


def budget_curve(budgets, correct: np.ndarray, key: str) -> list[dict]:
  """Rows {key: budget, accuracy, standard_error} of a budget curve; correct [K, runs, n] bool,
  one entry per budget (accuracy: mean over runs and examples; s.e. over examples)."""
  rows = []
  for b, c in zip(budgets, correct):
    per_example = c.mean(0)
    rows.append({key: int(b), "accuracy": float(per_example.mean()),
                 "standard_error": statistics.standard_error_over_examples(per_example)})
  return rows


def not_converged(budgets, correct: np.ndarray, key: str,
                  level: float = statistics.DEFAULT_LEVEL) -> tuple[dict | None, str | None]:
  """The paired test of a budget curve's last doubling (`statistics.paired_budget_test` on
  the last two budgets' correct [runs, n], the same examples and scoring runs) and why the
  curve has not converged, or None: the larger budget still breaks significantly more
  examples. correct: [K, runs, n] bool, one entry per budget."""
  if len(budgets) < 2:
    return None, None
  test = statistics.paired_budget_test(correct[-2], correct[-1], level)
  if not test["still_helps"]:
    return test, None
  return test, (f"from {key} {budgets[-2]} to {budgets[-1]} {test['broken_more']} examples "
                f"were broken more and {test['broken_fewer']} less (one-sided paired sign test "
                f"p = {test['p_value']:.3g} < {level})")


def budget_report(name: str, settings, steps, eots, steps_correct: np.ndarray,
                  eot_correct: np.ndarray, level: float = statistics.DEFAULT_LEVEL) -> dict:
  """The budget curves of attack `name` (`units.budget_unit`) with their convergence check
  (the paired test of each curve's last doubling, `not_converged`)."""
  curves, tests, reasons = {}, {}, []
  for key, budgets, correct in (("num_steps", steps, steps_correct),
                                ("n_eot", eots, eot_correct)):
    curves[key] = budget_curve(budgets, correct, key)
    tests[key], why = not_converged(budgets, correct, key, level)
    if why:
      reasons.append(f"{name} against {key}: {why}")
  return {"attack": name, "num_examples": int(steps_correct.shape[-1]),
          "settings": {"num_steps": settings.num_steps, "n_eot": settings.n_eot},
          "by_num_steps": curves["num_steps"], "by_n_eot": curves["n_eot"],
          "last_doubling_tests": tests,
          "converged": not reasons, "not_converged_reasons": reasons}


def step_scalar_summary(values: np.ndarray, mask: np.ndarray) -> list[dict]:
  """Per step t: the fraction of examples that took it and quantiles of a step scalar over
  those examples. values, mask: [R, T, n]."""
  rows = []
  for t in range(values.shape[1]):
    a = values[:, t][mask[:, t]]
    q = np.percentile(a, [25, 50, 75]).tolist() if a.size else [None] * 3
    rows.append({"step": t + 1, "active_fraction": float(mask[:, t].mean()),
                 "q25": q[0], "median": q[1], "q75": q[2],
                 "mean": float(a.mean()) if a.size else None})
  return rows


def suspect_reasons(report: dict, sweep_attack: str) -> list[str]:
  """Signs of a weak evaluation: accuracy left at the largest eps of the sweep, a budget search
  that stopped at its cap, an attack whose budget curves still fall (`not_converged`), an
  attack beating the exact-gradient ones by more than one standard error, or a certified
  accuracy above the attacked smoothed classifier's (the `certified` section's own reasons)."""
  reasons = []
  rows = report["eps_sweep"].get(sweep_attack)
  if rows and rows[-1]["defended_accuracy"] > 0.10:
    reasons.append(f"{sweep_attack} leaves {rows[-1]['defended_accuracy']:.3f} accuracy at the "
                   f"largest eps {rows[-1]['eps']:.4f} (expected <= 0.10): gradient masking?")
  search = report.get("budget_search")
  if search and search["status"] != "converged":
    reasons.append(f"the attack budget search stopped at its cap ({search['status']}): "
                   f"{search['chosen']['gradients_per_image']} gradient samples per image, "
                   f"max_gradients_per_image {search['max_gradients_per_image']}")
  budget = report.get("budget_curves")
  if budget and not budget["converged"]:
    reasons += [f"not converged in attack budget: {why}"
                for why in budget["not_converged_reasons"]]
  robust, se = report["robust_accuracy"], report["robust_accuracy_standard_error"]
  exact = [a for a in attacks_lib.EXACT_GRADIENT_ATTACKS if a in robust]
  if exact:
    best = min(exact, key=robust.get)
    for name, value in robust.items():
      if name not in exact and value < robust[best] - se[best]:
        reasons.append(f"{name} ({value:.3f}) beats the exact-gradient {best} "
                       f"({robust[best]:.3f}) by more than one standard error")
  reasons += (report.get("certified") or {}).get("suspect_reasons", [])
  return reasons


def write(out_dir: str, report: dict, settings_hash: str) -> str:
  """Writes the report as EVAL/reports/report_<hash>.json and EVAL/report.json; returns the
  latter's path."""
  os.makedirs(os.path.join(out_dir, "reports"), exist_ok=True)
  text = json.dumps(report, indent=2)
  paths = [os.path.join(out_dir, "reports", f"report_{settings_hash}.json"),
           os.path.join(out_dir, "report.json")]
  for path in paths:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  return paths[-1]


def summary_line(path: str, report: dict, attack_names) -> str:
  line = (f"wrote {path}: clean {report['clean_accuracy']:.4f}, "
          f"defended {report['defended_clean_accuracy']:.4f}, "
          f"noise only {report['noise_only_accuracy']:.4f}")
  robust = report["robust_accuracy"]
  if attack_names:
    line += ", robust " + ", ".join(f"{k} {robust[k]:.4f}" for k in attack_names)
    line += f", undefended {report['undefended_robust_accuracy']:.4f}"
    if report.get("robust_accuracy_worst_case") is not None:
      line += f", worst case over attacks {report['robust_accuracy_worst_case']:.4f}"
  budget = report.get("budget_curves")
  if budget:
    line += (f"; {budget['attack']} budget curves: "
             f"{'converged' if budget['converged'] else 'NOT converged'}")
  return line
