"""The automatic attack budget (`config.eval.budget = "auto"`): before the evaluation, on a
budget subset of the test split disjoint from the reported examples, the exact-gradient
attack's steps and then its EOT samples are doubled until the last doubling breaks no more
examples than the paired test allows (`statistics.paired_budget_test`), or until the next
doubling would pass the cap on gradient samples per image. The evaluation then runs at the
chosen budget; the report's `budget_search` section records every comparison.

Each comparison is one unit (stored per batch, so an interrupted search resumes): the attack
run once at n_eot EOT samples with its points after the given step counts read off its
trajectory (what shorter runs with the same keys return), each scored by the defense with the
attack unit's scoring keys. With the attack unit's own keys, a point of the search is exactly
what the attack unit would give on those examples at that budget, and the two budgets of a
comparison see the same scoring runs: the test pairs them example by example.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxpure import attacks as attacks_lib, statistics
from jaxpure.defense import Defense
from jaxpure.errors import ConfigError
from jaxpure.jobs.evaluation import units as units_lib
from jaxpure.purifiers.common import example_keys

CONVERGED = "converged"
CAP_REACHED = "cap reached: an upper bound"


def trajectory_unit(unit: str, name: str, s: attacks_lib.AttackSettings, record: tuple[int, ...],
                    defense: Defense, attack_key, eval_key, batch_size: int, attack_seed: int,
                    scoring_runs: int, num_examples: int | None = None) -> units_lib.Unit:
  """Attack `name` with settings s (its n_eot; run for max(record) steps), its points after
  each step count in `record` scored by `scoring_runs` runs of the defense. Keys are the
  attack unit's (`attack.attack_unit` with unit = name). Stores correct [len(record), runs, n]
  (bool)."""
  s = dataclasses.replace(s, num_steps=max(record))
  a_key, s_key = (jax.random.fold_in(k, units_lib.tag(name)) for k in (attack_key, eval_key))
  trajectory = attacks_lib.attack_trajectory(name, defense, s, tuple(record))

  def fn(params, batch, dynamic):
    del dynamic
    x, y, index = batch["image"], batch["label"], batch["index"]
    points = trajectory(params, example_keys(a_key, index), x, y)  # [K, B, H, W, C]
    k = points.shape[0]
    which = jnp.repeat(jnp.arange(k, dtype=jnp.int32), scoring_runs)  # point i, run r
    keys = jnp.concatenate([units_lib.scoring_keys(s_key, scoring_runs)] * k)
    correct = units_lib.scoring_correct(defense, params, points, which, y, index, keys)
    return {"correct": correct.reshape((k, scoring_runs) + y.shape)}

  work = (attacks_lib.purifications(name, s, defense.restarts)
          + len(record) * scoring_runs * defense.restarts)
  signature = {"trajectory_of": name, "settings": dataclasses.asdict(s), "record": record,
               "attack_seed": attack_seed, "scoring_runs": scoring_runs}
  return units_lib.Unit(unit, fn, batch_size, signature, work=work, num_examples=num_examples)


def search(name: str, s: attacks_lib.AttackSettings, max_gradients: int, run_points,
           level: float = statistics.DEFAULT_LEVEL) -> dict:
  """The budget search of attack `name` from its settings s (num_steps, n_eot: the smallest
  budget tried).

  run_points(settings, record) -> correct [len(record), runs, n] bool: the attack at
  settings.n_eot, scored after each step count of `record` (`trajectory_unit` on the budget
  subset). Steps are doubled at the starting n_eot while the doubling still helps; then EOT
  samples at the chosen steps. A doubling is tried only if its budget (steps x n_eot gradient
  samples per image) is at most max_gradients.

  Returns {"points": one row per comparison, "chosen": {"num_steps", "n_eot",
  "gradients_per_image"}, "status": CONVERGED or CAP_REACHED, "test": its description}.
  """
  steps, n_eot = s.num_steps, s.n_eot
  correct, rows = {}, []

  def compare(small, large, axis):
    test = statistics.paired_budget_test(correct[small], correct[large], level)
    rows.append({"doubled": axis, "from": _point(small, correct[small]),
                 "to": _point(large, correct[large]), **test})
    return test["still_helps"]

  status = None
  while status is None:  # steps, at the starting n_eot
    if 2 * steps * n_eot > max_gradients:
      status = CAP_REACHED
      break
    pair = run_points(dataclasses.replace(s, n_eot=n_eot), (steps, 2 * steps))
    correct[(steps, n_eot)], correct[(2 * steps, n_eot)] = pair[0], pair[1]
    if not compare((steps, n_eot), (2 * steps, n_eot), "num_steps"):
      break
    steps *= 2
  while status is None:  # EOT samples, at the chosen steps
    if steps * 2 * n_eot > max_gradients:
      status = CAP_REACHED
      break
    correct[(steps, 2 * n_eot)] = run_points(dataclasses.replace(s, n_eot=2 * n_eot),
                                             (steps,))[0]
    if not compare((steps, n_eot), (steps, 2 * n_eot), "n_eot"):
      status = CONVERGED
      break
    n_eot *= 2
  return {"attack": name, "points": rows, "status": status,
          "chosen": {"num_steps": steps, "n_eot": n_eot, "gradients_per_image": steps * n_eot},
          "max_gradients_per_image": max_gradients,
          "test": (f"one-sided exact sign test on the examples, paired (same examples and "
                   f"scoring runs at both budgets): a doubling still helps when p < {level}")}


def _point(budget, correct) -> dict:
  steps, n_eot = budget
  per_example = correct.mean(0)
  return {"num_steps": steps, "n_eot": n_eot, "accuracy": float(per_example.mean()),
          "standard_error": statistics.standard_error_over_examples(per_example)}


def subset(first: int, n: int, n_split: int, budget_first: int, budget_examples: int):
  """(first index, count) of the budget subset: budget_examples examples from budget_first,
  or, with budget_first = -1, right after the reported examples [first, first + n). Raises
  ConfigError when the split has none left there."""
  start = first + n if budget_first < 0 else budget_first
  count = min(budget_examples, n_split - start)
  if count < 1:
    raise ConfigError(
        f"no test examples left for the automatic budget search from index {start} (the split "
        f"has {n_split}; the evaluation reports {first}..{first + n - 1}); set "
        "config.eval.budget_first_example, fewer --num_examples, or config.eval.budget=fixed")
  return start, count


def run_search(name: str, s: attacks_lib.AttackSettings, defense: Defense, runner, attack_key,
               eval_key, batch_size: int, attack_seed: int, scoring_runs: int,
               max_gradients: int, level: float = statistics.DEFAULT_LEVEL) -> dict:
  """`search` with each comparison a `trajectory_unit` run by `runner` (a `units.Runner` over
  the budget subset: stored per batch, resumable). The record also gives the subset."""
  def run_points(settings, record):
    unit = trajectory_unit(f"budget_search_{name}_steps{max(record)}_eot{settings.n_eot}",
                           name, settings, record, defense, attack_key, eval_key, batch_size,
                           attack_seed, scoring_runs)
    return units_lib.concat(runner.run(unit), "correct")
  record = search(name, s, max_gradients, run_points, level)
  record["examples"] = {"first": runner.first, "count": runner.n}
  return record


def search_budget(ev) -> dict | None:
  """With config.eval.budget == "auto" and an exact-gradient attack among ev's attacks: the
  budget search (`run_search`) of config.eval.budget_attack from its configured budget, on
  the budget subset (a Runner like ev.runner over those examples); else None. ev: the
  `context.Evaluation` (its attacks at their configured budgets)."""
  e, runner = ev.settings, ev.runner
  if e.budget != "auto" or not e.budget_examples or not any(
      attacks_lib.SPECS[name].exact_gradient for name in ev.attack_names):
    return None
  first, count = subset(runner.first, runner.n, len(ev.test_split), e.budget_first_example,
                        e.budget_examples)
  sub = runner.on_examples(first, count)
  record = run_search(e.budget_attack, ev.budget_attack, ev.defense, sub, ev.attack_key,
                      ev.eval_key, e.attack_batch_size, e.attack_seed, e.scoring_runs,
                      e.max_gradients_per_image, e.budget_level)
  runner.timings.update({f"{unit} (budget subset)": t for unit, t in sub.timings.items()})
  runner.print_fn(f"[eval] {summary(record)}")
  return record


def summary(record: dict | None) -> str:
  """One line: whether the attack budget converged (or was fixed by the config)."""
  if record is None:
    return "budget fixed by the config (not searched): convergence not checked"
  c, ex = record["chosen"], record["examples"]
  return (f"budget {record['status']} at {c['num_steps']} steps x EOT {c['n_eot']} "
          f"({c['gradients_per_image']} gradient samples per image; searched with "
          f"{record['attack']} on test examples {ex['first']}..{ex['first'] + ex['count'] - 1})")
