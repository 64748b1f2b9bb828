"""The evaluation report's checks across sections (the suspect reasons), its summary line,
and where it is written (EVAL/report.json, the latest, and EVAL/reports/<hash>.json,
one per evaluation settings, never overwritten by an evaluation of other settings)."""

import json
import os

from jaxpure import attacks as attacks_lib


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
