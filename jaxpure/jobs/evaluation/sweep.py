"""The eps sweep evaluator (evaluate.py --sweep; the gradient-masking check): the sweep's
attack (config.attack.sweep_attack) and the undefended baseline at each eps of
config.attack.sweep_eps, with fewer steps (`settings.sweep_settings`), scored by one run of
the defense. Its section of the report: accuracy against eps."""

from jaxpure.jobs.evaluation import attack as attack_lib
from jaxpure.jobs.evaluation import units as units_lib


def unit_name(name: str, eps: float) -> str:
  """The name of the unit of attack `name` at one eps of the sweep."""
  return f"sweep_{name}_eps{eps:.6f}"


def plan(ev) -> tuple[list[units_lib.Unit], dict]:
  """One attack unit per attack and eps (the points of one attack share its executable); the
  sweep's eps for the settings' signature."""
  s = ev.settings
  units = [attack_lib.attack_unit(unit_name(name, eps), name, point, ev.defense, ev.attack_key,
                                  ev.eval_key, s.attack_batch_size, s.attack_seed, i, 1)
           for name, rows in ev.sweep.items() for i, (eps, point) in enumerate(rows)]
  return units, {"sweep": list(ev.sweep_eps)}


def summarise(ev, stored: dict) -> tuple[dict, dict]:
  """({attack: [(eps, AttackResult)]}, the report's eps_sweep section)."""
  grid = ev.settings.attack_grid_examples
  swept = {name: [(eps, attack_lib.AttackResult.from_batches(stored[unit_name(name, eps)],
                                                             grid))
                  for eps, _ in rows] for name, rows in ev.sweep.items()}
  return swept, {"eps_sweep": {
      name: [{"eps": eps, "defended_accuracy": float(r.defended.mean()),
              "bare_accuracy": float(r.bare.mean())} for eps, r in rows]
      for name, rows in swept.items()}}
