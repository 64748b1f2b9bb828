"""The evaluation's settings read from the config: each attack's AttackSettings (its own and
at the points of the eps sweep), the defense, how stored results name it, and the memory
budget of a remat = "auto" purifier."""

import dataclasses

from jaxpure import attacks as attacks_lib
from jaxpure.defense import Defense
from jaxpure.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """The plain values of config.eval and config.attack the evaluators use (read once,
  `read`): the data set's name; batch sizes of the clean and of the attack units; the seeds;
  the threat model (norm, eps); scoring runs and resubmissions (M); the pictures' examples and
  restarts; the attack budget (mode "auto" or "fixed", the budget attack, its examples and
  first example, the cap on gradient samples per image, the paired test's level); whether to
  run the fixed-noise unit; the sweep's attack; the first evaluated example."""
  dataset: str
  batch_size: int
  attack_batch_size: int
  eval_seed: int
  attack_seed: int
  norm: str
  eps: float
  scoring_runs: int
  resubmissions: int
  grid_examples: int
  grid_restarts: int
  attack_grid_examples: int
  budget: str
  budget_attack: str
  budget_examples: int
  budget_first_example: int
  max_gradients_per_image: int
  budget_level: float
  fixed_noise: bool
  sweep_attack: str
  first_example: int


def read(config) -> EvalSettings:
  """The EvalSettings of a (checked) config."""
  e, a = config.eval, config.attack
  return EvalSettings(
      dataset=config.data.name, batch_size=e.batch_size, attack_batch_size=a.batch_size,
      eval_seed=e.seed, attack_seed=a.seed, norm=a.norm, eps=a.eps,
      scoring_runs=e.scoring_runs, resubmissions=e.resubmissions,
      grid_examples=e.grid_examples, grid_restarts=e.grid_restarts,
      attack_grid_examples=a.grid_examples, budget=e.budget, budget_attack=e.budget_attack,
      budget_examples=e.budget_examples, budget_first_example=e.budget_first_example,
      max_gradients_per_image=e.max_gradients_per_image, budget_level=e.budget_level,
      fixed_noise=bool(e.fixed_noise), sweep_attack=a.sweep_attack,
      first_example=e.first_example)


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


def sweep_points(config, sweep: bool) -> dict:
  """{attack: [(eps, its settings at that eps)]} of the sweep's attack and the undefended
  baseline at each eps of config.attack.sweep_eps ({} without `sweep` or eps)."""
  eps_list = [float(e) for e in config.attack.sweep_eps] if sweep else []
  name = config.attack.sweep_attack
  if eps_list and name not in attacks_lib.ATTACKS:
    raise ConfigError(f"config.attack.sweep_attack={name!r}; expected one of "
                      f"{attacks_lib.ATTACKS}")
  return {attack: [(eps, sweep_settings(config, attack, eps)) for eps in eps_list]
          for attack in ((name, attacks_lib.UNDEFENDED_BASELINE) if eps_list else ())}


def all_attack_settings(config, attack_names, sweep: bool) -> dict:
  """{attack: AttackSettings} of the attacks asked for, with the undefended baseline, which
  comes with every attack evaluation (and with the sweep)."""
  out = {name: attack_settings(config, name) for name in attack_names}
  baseline = attacks_lib.UNDEFENDED_BASELINE
  if attack_names or sweep:
    out.setdefault(baseline, attack_settings(config, baseline))
  return out


def budget_attack_settings(config, attacks: dict,
                           attack_names) -> attacks_lib.AttackSettings | None:
  """The settings of config.eval.budget_attack (at its configured budget) when the automatic
  budget search or the fixed-noise unit will use them; else None."""
  e = config.eval
  searches = e.budget == "auto" and e.budget_examples and any(
      attacks_lib.SPECS[name].exact_gradient for name in attack_names)
  if not (searches or (e.fixed_noise and attack_names)):
    return None
  return attacks.get(e.budget_attack) or attack_settings(config, e.budget_attack)


def make_defense(config) -> Defense:
  """The config's defense: its purifier family and settings, networks and restarts."""
  from jaxpure import defense as defense_lib
  return defense_lib.from_config(config)


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


def cost(defense: Defense) -> dict:
  """Network evaluations of the score network per purification and per defended prediction."""
  count = getattr(defense.settings, "network_evaluations", None)
  per = count() if count else None
  return {"network_evaluations_per_purification": per,
          "network_evaluations_per_prediction": per * defense.restarts if per is not None
          else None}
