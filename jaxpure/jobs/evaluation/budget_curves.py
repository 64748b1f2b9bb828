"""The budget evaluator: robust accuracy of config.eval.budget_attack against its iteration
budget and its EOT samples on the first config.eval.budget_examples examples, from a few
halvings of the evaluated budget to one doubling past it, with the paired test of that last
doubling (does twice the evaluated budget break more of these examples?); and the record of
the automatic budget search (`budget.py`), which ran before the evaluation. Its section of the
report: budget_search, budget_status and budget_curves."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxpure import attacks as attacks_lib, statistics
from jaxpure.defense import Defense
from jaxpure.jobs.evaluation import units as units_lib
from jaxpure.purifiers.common import example_keys


@dataclasses.dataclass(frozen=True)
class BudgetCurves:
  """The budget unit's results: steps [S] and n_eot [E] the budgets tried; steps_correct
  [S, runs, n] and eot_correct [E, runs, n] bool, the scoring runs right at each budget's
  point."""
  steps: tuple[int, ...]
  n_eot: tuple[int, ...]
  steps_correct: np.ndarray
  eot_correct: np.ndarray


def halvings(budget: int, count: int = 4) -> tuple[int, ...]:
  """Up to `count` budgets ending at `budget`, each about half the next: 40 -> (5, 10, 20, 40)."""
  return tuple(sorted({max(1, budget >> i) for i in range(count)}))


def curve_budgets(budget: int) -> tuple[int, ...]:
  """The budgets of a curve through the evaluated `budget`: its `halvings`, then twice it, so
  that the curve's last doubling is the one beyond what was evaluated: 40 -> (5, 10, 20, 40,
  80)."""
  return halvings(budget) + (2 * budget,)


def at_eot(s: attacks_lib.AttackSettings, n_eot: int) -> attacks_lib.AttackSettings:
  """The settings `s` at n_eot samples per gradient, differentiated at most s.eot_chunk at a
  time as the evaluated attack is (the largest divisor of n_eot not above it; all at once
  when s.eot_chunk is 0)."""
  return dataclasses.replace(s, n_eot=n_eot,
                             eot_chunk=math.gcd(n_eot, s.eot_chunk) if s.eot_chunk else 0)


@dataclasses.dataclass(frozen=True)
class CurvePoints:
  """What the budget unit runs for an evaluated budget (num_steps N, n_eot E): steps
  `curve_budgets`(N), all points of one 2N-step trajectory at E; eots `curve_budgets`(E);
  other_eots the EOT counts run separately at N steps (all but E), in order; eot_rows the row
  of each EOT budget among the points [trajectory's..., other runs'...] (E's is the
  trajectory's point at N)."""
  steps: tuple[int, ...]
  eots: tuple[int, ...]
  other_eots: tuple[int, ...]
  eot_rows: tuple[int, ...]


def curve_points(num_steps: int, n_eot: int) -> CurvePoints:
  steps, eots = curve_budgets(num_steps), curve_budgets(n_eot)
  others = tuple(e for e in eots if e != n_eot)
  rows = tuple(steps.index(num_steps) if e == n_eot else len(steps) + others.index(e)
               for e in eots)
  return CurvePoints(steps, eots, others, rows)


def budget_unit(name: str, s: attacks_lib.AttackSettings, defense: Defense, attack_key,
                eval_key, batch_size: int, attack_seed: int, num_examples: int,
                scoring_runs: int = 1) -> units_lib.Unit:
  """Robust accuracy of attack `name` against its iteration budget and its EOT samples, on the
  first `num_examples` examples: the steps curve from one run's trajectory (`curve_budgets` of
  num_steps: halvings, the evaluated count and twice it, at n_eot), the EOT curve from runs
  with other sample counts (`curve_budgets` of n_eot, at num_steps, `at_eot`; the evaluated
  count is the trajectory's point). Attack and scoring keys are those of the attack's own
  unit, so the evaluated budget's point (second to last on both curves) is the attack's own
  result on these examples, and each curve's last doubling asks whether twice the evaluated
  budget breaks more.

  Stores steps_correct [len(steps), runs, n] and eot_correct [len(eot), runs, n] (bool)."""
  p = curve_points(s.num_steps, s.n_eot)
  per = lambda t: attacks_lib.purifications(name, t, defense.restarts)  # noqa: E731
  work = per(dataclasses.replace(s, num_steps=p.steps[-1])) + sum(
      per(at_eot(s, e)) for e in p.other_eots) + (
          len(p.steps) + len(p.other_eots)) * scoring_runs * defense.restarts
  signature = {"budget_of": name, "settings": dataclasses.asdict(s), "attack_seed": attack_seed,
               "steps": p.steps, "n_eot": p.eots, "scoring_runs": scoring_runs}
  fn = _curves_program(name, s, defense, p, attack_key, eval_key, scoring_runs)
  return units_lib.Unit(f"budget_{name}", fn, batch_size, signature, work=work,
                        num_examples=num_examples)


def _curves_program(name, s, defense, p: CurvePoints, attack_key, eval_key, scoring_runs: int):
  """fn(params, batch, dynamic) -> {steps_correct, eot_correct} of `budget_unit`: the points
  are the trajectory's (one per steps budget), then one run per other EOT count, in order."""
  a_key, s_key = (jax.random.fold_in(k, units_lib.tag(name)) for k in (attack_key, eval_key))
  trajectory = attacks_lib.attack_trajectory(
      name, defense, dataclasses.replace(s, num_steps=p.steps[-1]), p.steps)
  runs_at = [attacks_lib.attack_function(name, defense, at_eot(s, e)) for e in p.other_eots]

  def fn(params, batch, dynamic):
    del dynamic
    x, y, index = batch["image"], batch["label"], batch["index"]
    keys = example_keys(a_key, index)
    points = trajectory(params, keys, x, y)  # [len(steps), B, H, W, C]
    points = jnp.concatenate([points] + [f(params, keys, x, y)[None] for f in runs_at])
    # every point x every scoring run through one copy of the defense: [points * runs, B]
    runs_keys = units_lib.scoring_keys(s_key, scoring_runs)
    k = points.shape[0]
    which = jnp.repeat(jnp.arange(k, dtype=jnp.int32), scoring_runs)  # point i, run r
    correct = units_lib.scoring_correct(defense, params, points, which, y, index,
                                        jnp.concatenate([runs_keys] * k)).reshape(
                                            (k, scoring_runs) + y.shape)
    return {"steps_correct": correct[:len(p.steps)],
            "eot_correct": correct[jnp.asarray(p.eot_rows)]}
  return fn


def plan(ev) -> tuple[list[units_lib.Unit], dict]:
  """The budget unit of config.eval.budget_attack when it is among the attacks (and
  config.eval.budget_examples > 0); its signature and the budget search's examples for the
  settings' signature."""
  s, name = ev.settings, ev.settings.budget_attack
  units = []
  if s.budget_examples and name in ev.attack_names:
    units.append(budget_unit(name, ev.attacks[name], ev.defense, ev.attack_key, ev.eval_key,
                             s.attack_batch_size, s.attack_seed, s.budget_examples,
                             s.scoring_runs))
  return units, {**({"budget_search": ev.searched["examples"]} if ev.searched else {}),
                 **({"budget": units[0].signature} if units else {})}


def summarise(ev, stored: dict) -> tuple[BudgetCurves | None, dict]:
  """(the budget unit's curves or None without one, the report's budget section)."""
  name = ev.settings.budget_attack
  curves = None
  if stored:
    (unit,), _ = plan(ev)
    results = stored[unit.name]
    curves = BudgetCurves(unit.signature["steps"], unit.signature["n_eot"],
                          units_lib.concat(results, "steps_correct"),
                          units_lib.concat(results, "eot_correct"))
  return curves, {
      "budget_search": ev.searched,
      "budget_status": ev.searched["status"] if ev.searched else "fixed",
      "budget_curves": budget_report(name, ev.attacks[name], curves.steps, curves.n_eot,
                                     curves.steps_correct, curves.eot_correct)
      if curves is not None else None}


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
  """The budget curves of attack `name` (`budget_unit`) with their convergence check: the
  paired test of each curve's last doubling (`not_converged`), from the evaluated budget
  (`settings`) to twice it when the curves are `curve_budgets` of it."""
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
