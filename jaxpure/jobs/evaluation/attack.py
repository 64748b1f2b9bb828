"""The attack evaluator: each attack asked for (and the undefended baseline) on every
example, its points scored by independent runs of the defense. Its section of the report:
robust accuracy per attack with standard errors, the scores over runs (mean, all runs,
majority vote, resubmissions: `run_scores`), the worst case over attacks (`worst_case`), the
undefended baseline and each attack's settings."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxpure import attacks as attacks_lib, statistics
from jaxpure.defense import Defense
from jaxpure.jobs.evaluation import units as units_lib
from jaxpure.purifiers.common import example_keys


@dataclasses.dataclass(frozen=True)
class AttackResult:
  """One attack unit's results over the evaluated examples (n): runs [N, n] bool (scoring run
  k right at the attacked point), defended [n] (the mean over runs), bare [n] bool (the bare
  classifier right there; None for a defense without one), distance [n] (of the point from
  the clean image, in the attack's norm) and x_adv [m, H, W, C] in [0, 1], the first m
  attacked images (for the pictures)."""
  runs: np.ndarray
  defended: np.ndarray
  bare: np.ndarray | None
  distance: np.ndarray
  x_adv: np.ndarray

  @classmethod
  def from_batches(cls, results: list[dict], grid_examples: int) -> "AttackResult":
    cat = lambda k: units_lib.concat(results, k)  # noqa: E731
    correct = cat("defended_correct")
    return cls(runs=correct, defended=correct.mean(0), bare=cat("bare_correct"),
               distance=cat("distance"),
               x_adv=np.concatenate([r["x_adv"] for r in results])[:grid_examples])


def attack_unit(unit: str, name: str, s: attacks_lib.AttackSettings, defense: Defense,
                attack_key, eval_key, batch_size: int, attack_seed: int,
                sweep_index: int | None = None, scoring_runs: int = 1) -> units_lib.Unit:
  """Attack `name` with settings s on each batch; the attacked images are scored by
  `scoring_runs` independent runs of the full defense with fresh randomness (keys folded from
  eval_key; run 0 uses the unfolded key), never the attack's own samples. A point of the eps
  sweep (sweep_index given) folds the sweep's name and its index into the keys.

  Two programs: the attack, then the scoring (`units.scoring_stage`, shared by every attack
  unit with the same scoring runs and batch size). The attack's eps, step size and (PGD-type
  attacks) number of steps and the keys are inputs, so units of one attack that differ only
  in those (the attack's own unit and the points of its eps sweep, at the same batch size)
  share one executable (`compile_key`).
  """
  key_name = f"sweep_{name}" if sweep_index is not None else unit
  a_key, s_key = (jax.random.fold_in(k, units_lib.tag(key_name)) for k in (attack_key, eval_key))
  if sweep_index is not None:
    a_key, s_key = (jax.random.fold_in(k, sweep_index) for k in (a_key, s_key))
  names = attacks_lib.dynamic_settings(name)
  dynamic = {"attack_key": np.asarray(jax.random.key_data(a_key)),
             **{k: np.asarray(getattr(s, k), np.int32 if k == "num_steps" else np.float32)
                for k in names}}
  static = {k: v for k, v in dataclasses.asdict(s).items() if k not in names}
  compile_key = json.dumps({"attack": name, "static_settings": static, "batch_size": batch_size},
                           sort_keys=True, default=str)
  signature = {"attack": name, "settings": dataclasses.asdict(s), "attack_seed": attack_seed}
  if scoring_runs != 1:
    signature["scoring_runs"] = scoring_runs
  if sweep_index is not None:  # its keys fold it in
    signature["sweep_index"] = sweep_index
  work = attacks_lib.purifications(name, s, defense.restarts) + scoring_runs * defense.restarts
  return units_lib.Unit(unit, _attack_program(name, s, defense, jax.random.key_impl(a_key)),
                        batch_size, signature, dynamic, compile_key, work=max(work, 0.1),
                        then=(units_lib.scoring_stage(defense, s_key, scoring_runs,
                                                      batch_size),))


def _attack_program(name: str, s: attacks_lib.AttackSettings, defense: Defense, impl):
  """fn(params, batch, dynamic) -> {"distance" [B], "x_adv" [B, H, W, C]}: the attack with its
  key and dynamic settings as inputs."""
  names = attacks_lib.dynamic_settings(name)
  attack = attacks_lib.attack_function(name, defense, s)

  def fn(params, batch, dynamic):
    a_k = jax.random.wrap_key_data(dynamic["attack_key"], impl=impl)
    x, y = batch["image"], batch["label"]
    x_adv = attack(params, example_keys(a_k, batch["index"]), x, y,
                   **{k: dynamic[k] for k in names})
    dist = (jnp.max(jnp.abs(x_adv - x), axis=(1, 2, 3)) if s.norm == "linf"
            else jnp.sqrt(jnp.sum((x_adv - x) ** 2, axis=(1, 2, 3))))
    return {"distance": dist, "x_adv": x_adv}
  return fn


def plan(ev) -> tuple[list[units_lib.Unit], dict]:
  """One unit per attack of ev.attacks, named after it, scored by config.eval.scoring_runs
  runs; the attacks' settings and seed for the settings' signature."""
  config = ev.settings
  units = [attack_unit(name, name, s, ev.defense, ev.attack_key, ev.eval_key,
                       config.attack_batch_size, config.attack_seed, None,
                       config.scoring_runs)
           for name, s in ev.attacks.items()]
  return units, {"attacks": {k: dataclasses.asdict(s) for k, s in ev.attacks.items()},
                 "attack_seed": config.attack_seed}


def summarise(ev, stored: dict) -> tuple[dict[str, AttackResult], dict]:
  """({attack: AttackResult}, the report's attack section) from the stored batches."""
  attacked = {name: AttackResult.from_batches(stored[name], ev.settings.attack_grid_examples)
              for name in ev.attacks}
  seconds = {name: ev.runner.timings[name]["seconds"] for name in ev.attacks}
  return attacked, section(attacked, ev.attacks, ev.settings.scoring_runs,
                           ev.settings.resubmissions, seconds, names=ev.attack_names)


def section(attacked: dict[str, AttackResult], settings: dict, scoring_runs: int,
            resubmissions: int = 0, seconds: dict | None = None, names=None) -> dict:
  """The report's attack section (evaluate.py's report.json and `jaxpure.evaluate_defense`):
  per attack of `names` (default: all of `attacked`) its robust accuracy (mean over scoring
  runs) and its scores over the runs (`run_scores`), the worst case over them, the bare
  classifier's accuracy under the undefended baseline when it ran, and per attack of
  `settings` ({attack: AttackSettings}) its settings, largest distance and (with `seconds`)
  its run time."""
  names = list(attacked if names is None else names)
  count = next(iter(attacked.values())).defended.shape[0] if attacked else 0
  robust = {name: float(attacked[name].defended.mean()) for name in names}
  worst = worst_case({name: attacked[name].runs for name in names})
  baseline = attacked.get(attacks_lib.UNDEFENDED_BASELINE)
  return {
      "robust_accuracy": robust,
      "robust_accuracy_standard_error": {k: statistics.standard_error(v, count)
                                         for k, v in robust.items()},
      "robust_accuracy_worst_case": worst["accuracy"],
      "robust_accuracy_worst_case_standard_error": worst["standard_error"],
      "worst_case": worst,
      "scoring": {"runs": scoring_runs, "headline": "mean over runs",
                  "by_attack": {name: run_scores(attacked[name].runs, resubmissions)
                                for name in names}},
      "undefended_robust_accuracy": (float(baseline.bare.mean())
                                     if baseline is not None and baseline.bare is not None
                                     else None),
      "attacks": {name: {"settings": dataclasses.asdict(s),
                         "max_distance": float(attacked[name].distance.max()),
                         **({"seconds": seconds[name]} if seconds is not None else {})}
                  for name, s in settings.items()}}


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
  broken = stacked.mean(1) < 0.5  # [A, n]: the attack's point is wrong in most runs
  names = list(runs_by_attack)
  return {"accuracy": float(per_example.mean()),
          "standard_error": statistics.standard_error_over_examples(per_example),
          "per_example": [float(v) for v in per_example],
          "broken_by": {a: int(broken[i].sum()) for i, a in enumerate(names)},
          "broken_only_by": {a: int((broken[i] & (broken.sum(0) == 1)).sum())
                             for i, a in enumerate(names)}}
