"""The job of evaluate.py: clean, defended and attacked accuracy of a workdir's networks.

Work is cut into units ("clean", one per attack, one per eps of the sweep; `units.py`) and
batches; each finished (unit, batch) is stored at once (`store.py`), so an interrupted
evaluation started again with the same arguments skips what is done and ends with the same
report (`report.py`). Results are keyed on the networks' content and every setting.
"""

import dataclasses
import os
from collections.abc import Callable, Sequence

import flax
import jax
import numpy as np

from jaxpure import __version__, attacks as attacks_lib, data, model_specs, parallel
from jaxpure import config_checks
from jaxpure.defense import READOUTS, Defense
from jaxpure.errors import ConfigError, WorkdirError
from jaxpure.jobs import loading
from jaxpure.jobs.evaluation import budget as budget_lib, certify as certify_lib
from jaxpure.jobs.evaluation import fixed_noise as fixed_noise_lib
from jaxpure.jobs.evaluation import pictures, report as report_lib
from jaxpure.jobs.evaluation import store as store_lib
from jaxpure.jobs.evaluation import units as units_lib
from jaxpure.jobs.evaluation.units import concat


def attack_settings(config, name: str, **changes) -> attacks_lib.AttackSettings:
  """AttackSettings of attack `name` from config.attack (shared norm/eps + its own section)."""
  if name not in attacks_lib.ATTACKS:
    raise ConfigError(f"unknown attack {name!r}; expected names from {attacks_lib.ATTACKS}")
  section = config.attack[name]
  # Every key of the attack's own section is an AttackSettings field and goes through as it is.
  fields = {f.name for f in dataclasses.fields(attacks_lib.AttackSettings)}
  unknown = sorted(set(section) - fields)
  if unknown:
    raise ConfigError(f"config.attack.{name}: unknown settings {unknown}; expected fields of "
                      f"AttackSettings {sorted(fields)}")
  kwargs = dict(norm=config.attack.norm, eps=config.attack.eps)
  kwargs.update({k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in section.items()})
  through = attacks_lib.SPECS[name].through_purifier
  if through:
    kwargs.update(deviation_weight=config.attack.deviation_weight)
  kwargs.update(changes)
  chunk = config.attack.eot_chunk  # only where it splits the EOT samples
  kwargs["eot_chunk"] = chunk if through and kwargs["n_eot"] > chunk else 0
  return attacks_lib.AttackSettings(**kwargs)


def sweep_settings(config, name: str, eps: float) -> attacks_lib.AttackSettings:
  """The settings of `name` at one eps of the sweep: fewer steps, step size 2.5 eps / steps."""
  n = config.attack.sweep_num_steps
  n_eot = 1 if attacks_lib.SPECS[name].blind else config.attack.sweep_n_eot
  return attack_settings(config, name, eps=eps, num_steps=n, n_eot=n_eot,
                         step_size=max(2.5 * eps / n, 1e-6))


def make_defense(config) -> Defense:
  """The config's defense: its purifier family and settings, networks and restarts."""
  settings = config_checks.check_defense(config)
  from jaxpure import purifiers
  return Defense(score_fn=model_specs.score_fn(config), logits_fn=model_specs.logits_fn(config),
                 family=purifiers.get(config.defense.purifier), settings=settings,
                 restarts=config.defense.restarts)


def defense_settings(defense: Defense) -> dict:
  """The defense as stored results' signatures name it. The purifier's `remat` policy is left
  out on purpose: it changes what a gradient keeps and recomputes, not what it computes
  (`jaxpure.purifiers.remat`), so a stored result is reused under any policy (as on another
  device). The report records the policy apart (report["remat"])."""
  settings = dataclasses.asdict(defense.settings)
  settings.pop("remat", None)
  return {"purifier": defense.family.NAME, "restarts": defense.restarts, "settings": settings}


def memory_budget_bytes(config) -> int:
  """The byte budget of a remat = "auto" purifier: config.attack.memory_budget_gb GiB, or the
  device's default when it is 0 or unset (`remat.default_budget_bytes`)."""
  from jaxpure.purifiers import remat
  return remat.budget_bytes(config.attack.get("memory_budget_gb", 0.0) or None)


def _cost(defense: Defense) -> dict:
  """Network evaluations of the score network per purification and per defended prediction."""
  count = getattr(defense.settings, "network_evaluations", None)
  per = count() if count else None
  return {"network_evaluations_per_purification": per,
          "network_evaluations_per_prediction": per * defense.restarts if per is not None
          else None}


def _search_budget(config, defense: Defense, a_settings: dict, attack_names, runner, n_split,
                   attack_key, eval_key) -> dict | None:
  """With config.eval.budget == "auto" and an exact-gradient attack among attack_names: the
  budget search (`budget.run_search`) of config.eval.budget_attack from its configured budget,
  on the budget subset (a Runner like `runner` over those examples); else None."""
  ev = config.eval
  if ev.budget != "auto" or not ev.budget_examples or not any(
      attacks_lib.SPECS[name].exact_gradient for name in attack_names):
    return None
  name = ev.budget_attack
  s = a_settings.get(name) or attack_settings(config, name)
  first, count = budget_lib.subset(runner.first, runner.n, n_split, ev.budget_first_example,
                                   ev.budget_examples)
  sub = units_lib.Runner(runner.params, runner.test_split, count, runner.mesh, runner.store,
                         dict(runner.shared, num_examples=count, first_example=first),
                         print_fn=runner.print_fn, after_batch=runner.after_batch,
                         is_writer=runner.is_writer, first=first,
                         memory_budget=runner.memory_budget)
  sub.remat_choices = runner.remat_choices  # one record of the evaluation's programs
  record = budget_lib.run_search(name, s, defense, sub, attack_key, eval_key,
                                 config.attack.batch_size, config.attack.seed, ev.scoring_runs,
                                 ev.max_gradients_per_image, ev.budget_level)
  runner.timings.update({f"{unit} (budget subset)": t for unit, t in sub.timings.items()})
  runner.print_fn(f"[eval] {budget_lib.summary(record)}")
  return record


def evaluate(config, workdir: str, attack_names: Sequence[str] = (),
             num_examples: int | None = None, *, sweep: bool = False, mesh=None, print_fn=print,
             after_batch: Callable[[str, int], None] = lambda unit, batch: None,
             output_dir: str | None = None, checkpoint_steps: dict | None = None,
             certify: bool = False) -> dict:
  """Runs the evaluation, writes OUTPUT/report.json and the PNGs (OUTPUT: WORKDIR/eval by
  default); returns the report.

  attack_names: the attacks to run (the blind baseline comes with any); sweep: also run the eps
  sweep of config.attack.sweep_attack and the baseline (the gradient-masking check).
  Each attacked point is scored by config.eval.scoring_runs independent runs of the defense.
  checkpoint_steps: {kind: step} to evaluate an older kept checkpoint (default the latest).
  certify: also certify the smoothed classifiers of config.certify (the report's `certified`
  section and certified.png; `certify.py`).
  """
  defense = make_defense(config)
  attack_names = list(dict.fromkeys(attack_names))
  a_settings = {name: attack_settings(config, name) for name in attack_names}
  baseline = attacks_lib.UNDEFENDED_BASELINE
  if attack_names or sweep:  # the undefended baseline comes with every attack evaluation
    a_settings.setdefault(baseline, attack_settings(config, baseline))
  sweep_eps = [float(e) for e in config.attack.sweep_eps] if sweep else []
  sweep_attack = config.attack.sweep_attack
  if sweep_eps:
    if sweep_attack not in attacks_lib.ATTACKS:
      raise ConfigError(f"config.attack.sweep_attack={sweep_attack!r}; expected one of "
                        f"{attacks_lib.ATTACKS}")
    for name in (sweep_attack, baseline):
      for eps in sweep_eps:
        sweep_settings(config, name, eps)  # validates
  test_split = data.open_split(config.data.name, "test", config.data.data_dir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  loaded = loading.load_defense_models(config, workdir, mesh, steps=checkpoint_steps)
  out_dir = os.path.abspath(output_dir or os.path.join(workdir, "eval"))
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot write the evaluation to {out_dir!r}: {e.strerror or e}; "
                       "pass --output DIR") from e
  params = {kind: m.variables for kind, m in loaded.items()}
  first = config.eval.first_example
  n_split = len(test_split)
  if not 0 <= first < n_split:
    raise ConfigError(f"config.eval.first_example={first}; expected in [0, {n_split}) (the "
                      f"test split has {n_split} examples)")
  n_left = n_split - first
  n = min(num_examples or config.eval.num_examples or n_left, n_left)
  if num_examples and num_examples > n_left:
    print_fn(f"[eval] --num_examples={num_examples} is more than the {n_left} test examples "
             f"from index {first}; evaluating {n_left}")
  eval_key = jax.random.key(config.eval.seed)
  attack_key = jax.random.key(config.attack.seed)
  shared = {"num_examples": n, "networks": {k: m.fingerprint for k, m in loaded.items()},
            "defense": defense_settings(defense), "eval_seed": config.eval.seed,
            **({"first_example": first} if first else {})}
  is_writer = jax.process_index() == 0
  runner = units_lib.Runner(params, test_split, n, mesh,
                            store_lib.BatchStore(os.path.join(out_dir, "batches"), print_fn),
                            shared, print_fn=print_fn, after_batch=after_batch,
                            is_writer=is_writer, first=first,
                            memory_budget=memory_budget_bytes(config))

  scoring_runs = config.eval.scoring_runs
  budget_name = config.eval.budget_attack
  searched = _search_budget(config, defense, a_settings, attack_names, runner, n_split,
                            attack_key, eval_key)
  if searched is not None:
    for name in a_settings:
      if attacks_lib.SPECS[name].exact_gradient:
        a_settings[name] = attacks_lib.with_gradient_budget(
            name, a_settings[name], searched["chosen"]["num_steps"], searched["chosen"]["n_eot"])

  # ---- the units: clean and defended accuracy (with the per-step trace), attacks, sweep
  clean_unit = units_lib.clean_unit(defense, eval_key, config.eval.batch_size)

  def attack_unit(unit, name, s, sweep_index=None):
    runs = 1 if sweep_index is not None else scoring_runs
    return units_lib.attack_unit(unit, name, s, defense, attack_key, eval_key,
                                 config.attack.batch_size, config.attack.seed, sweep_index, runs)

  attack_units = {name: attack_unit(name, name, s) for name, s in a_settings.items()}
  sweep_units = {name: [(eps, attack_unit(f"sweep_{name}_eps{eps:.6f}", name,
                                          sweep_settings(config, name, eps), i))
                        for i, eps in enumerate(sweep_eps)]
                 for name in ((sweep_attack, baseline) if sweep_eps else ())}
  budget_unit = (units_lib.budget_unit(
      budget_name, a_settings[budget_name], defense, attack_key, eval_key,
      config.attack.batch_size, config.attack.seed, config.eval.budget_examples, scoring_runs)
                 if config.eval.budget_examples and budget_name in attack_names else None)
  fixed_settings = (a_settings.get(budget_name) or attack_settings(config, budget_name)
                    if config.eval.fixed_noise and attack_names else None)
  fixed_unit = (fixed_noise_lib.unit(fixed_settings, defense, attack_key, eval_key,
                                     config.attack.batch_size, config.attack.seed)
                if fixed_settings else None)
  cert_plan = certify_lib.plan(config, defense, eval_key, attack_key) if certify else None
  runner.plan([clean_unit, *attack_units.values(), *([budget_unit] if budget_unit else []),
               *(cert_plan.units() if cert_plan else []),
               *([fixed_unit] if fixed_unit else []),
               *(u for rows in sweep_units.values() for _, u in rows)])

  clean = runner.run(clean_unit)
  acc = lambda k: float(concat(clean, k).mean())  # noqa: E731
  count = int(concat(clean, "clean").shape[-1])
  step_mask = concat(clean, "step_mask")  # [R, T, n]
  step_values = {k[len("scalar_"):]: concat(clean, k) for k in clean[0] if k.startswith("scalar_")}
  by_step = concat(clean, "by_step").mean(-1).tolist()

  def run_attack(unit):
    res = runner.run(unit)
    cat = lambda k: np.concatenate([r[k] for r in res], axis=-1)  # noqa: E731
    correct = cat("defended_correct")  # [N runs, n]
    return {"defended": correct.mean(0), "runs": correct, "bare": cat("bare_correct"),
            "distance": cat("distance"),
            "x_adv": np.concatenate([r["x_adv"] for r in res])[:config.attack.grid_examples]}

  attacked = {name: run_attack(unit) for name, unit in attack_units.items()}
  budget = None
  if budget_unit is not None:
    res = runner.run(budget_unit)
    budget = report_lib.budget_report(
        budget_name, a_settings[budget_name], budget_unit.signature["steps"],
        budget_unit.signature["n_eot"], concat(res, "steps_correct"), concat(res, "eot_correct"))
  swept = {name: [(eps, run_attack(unit)) for eps, unit in rows]
           for name, rows in sweep_units.items()}
  fixed = (fixed_noise_lib.section(fixed_settings, runner.run(fixed_unit)) if fixed_unit
           else None)
  certified = certify_lib.run(cert_plan, runner) if cert_plan else None

  # ---- report
  robust = {name: float(attacked[name]["defended"].mean()) for name in attack_names}
  scoring = {name: report_lib.run_scores(attacked[name]["runs"], config.eval.resubmissions)
             for name in attack_names}
  worst = report_lib.worst_case({name: attacked[name]["runs"] for name in attack_names})
  report = {
      "dataset": config.data.name, "num_examples": count, "first_example": first,
      "clean_accuracy": acc("clean"),
      "defended_clean_accuracy": acc("mean_softmax"),
      "defended_accuracy_by_readout": {k: acc(k) for k in READOUTS},
      "single_restart_accuracy": acc("single_restart"),
      "noise_only_accuracy": by_step[0],
      "accuracy_by_step": by_step,
      **{f"{name}_by_step": report_lib.step_scalar_summary(v, step_mask)
         for name, v in step_values.items()},
      "robust_accuracy": robust,
      "robust_accuracy_standard_error": {k: report_lib.standard_error(v, count)
                                         for k, v in robust.items()},
      "robust_accuracy_worst_case": worst["accuracy"],
      "robust_accuracy_worst_case_standard_error": worst["standard_error"],
      "worst_case": worst,
      "scoring": {"runs": scoring_runs, "headline": "mean over runs", "by_attack": scoring},
      "undefended_robust_accuracy": (float(attacked[baseline]["bare"].mean())
                                     if baseline in attacked else None),
      "attacks": {name: {"settings": dataclasses.asdict(s),
                         "max_distance": float(attacked[name]["distance"].max()),
                         "seconds": runner.timings[name]["seconds"]}
                  for name, s in a_settings.items()},
      "budget_search": searched,
      "budget_status": searched["status"] if searched else "fixed",
      "budget_curves": budget,
      "fixed_noise": fixed,
      "certified": certified,
      "eps_sweep": {name: [{"eps": eps, "defended_accuracy": float(r["defended"].mean()),
                            "bare_accuracy": float(r["bare"].mean())} for eps, r in rows]
                    for name, rows in swept.items()},
      "settings": {"defense": shared["defense"], "eval_seed": config.eval.seed,
                   "attack_seed": config.attack.seed, "norm": config.attack.norm,
                   "eps": config.attack.eps},
      "cost": _cost(defense),
      "remat": {"setting": getattr(defense.settings, "remat", None),
                "memory_budget_bytes": runner.memory_budget,
                "auto_choices": runner.remat_choices},
      "networks": {kind: {"step": m.step, "fingerprint": m.fingerprint,
                          "model": m.metadata.get("model"), "source": m.source}
                   for kind, m in loaded.items()},
      "versions": {"jaxpure": __version__, "jax": jax.__version__, "flax": flax.__version__},
      "device": {"platform": jax.devices()[0].platform, "kind": jax.devices()[0].device_kind,
                 "count": jax.device_count(), "processes": jax.process_count()},
      "timings": runner.timings,
  }
  report["suspect_reasons"] = report_lib.suspect_reasons(report, sweep_attack)
  report["evaluation_suspect"] = bool(report["suspect_reasons"])
  settings_hash = store_lib.signature_hash(
      {"shared": shared, "attacks": {k: dataclasses.asdict(s) for k, s in a_settings.items()},
       "sweep": sweep_eps, "attack_seed": config.attack.seed,
       **({"budget_search": searched["examples"]} if searched else {}),
       **({"fixed_noise": fixed_unit.signature} if fixed_unit else {}),
       **({"certify": cert_plan.signature} if cert_plan else {}),
       **({"budget": budget_unit.signature} if budget_unit else {})})
  path = os.path.join(out_dir, "report.json")
  if is_writer:
    drawn = pictures.write_all(out_dir, config, defense, params, test_split, eval_key, report,
                               step_values, step_mask, attacked)
    path = report_lib.write(out_dir, report, settings_hash)
    pictures.keep(out_dir, drawn, settings_hash)
  print_fn(report_lib.summary_line(path, report, attack_names))
  if any(attacks_lib.SPECS[name].exact_gradient for name in attack_names):
    print_fn(f"[eval] {budget_lib.summary(searched)}")
  for reason in report["suspect_reasons"]:
    print_fn(f"[eval] SUSPECT: {reason}")
  return report
