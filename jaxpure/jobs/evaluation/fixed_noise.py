"""The fixed-noise threat model (DESIGN §5; ADDT's "DW-box"): the defense's random draws are
fixed and known to the attacker, who then attacks one deterministic function. Reported as its
own section of the report (`fixed_noise`), never as the headline: a deployed randomized
defense draws afresh, so this measures how much of its robustness is its randomness.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxpure import attacks as attacks_lib, statistics
from jaxpure.attacks import eot, pgd as pgd_lib
from jaxpure.defense import Defense
from jaxpure.jobs.evaluation import units as units_lib
from jaxpure.purifiers.common import example_keys, restart_keys

UNIT = "fixed_noise"
THREAT_MODEL = ("the defense's random draws fixed and known to the attacker (one deterministic "
                "function; not the headline)")


@dataclasses.dataclass(frozen=True)
class FixedNoiseResult:
  """The fixed-noise unit's results over the evaluated examples (n): defended [n] bool (the
  defense, with the draws the attacker knew, right at the attacked point) and bare [n] bool (the
  bare classifier right there)."""
  defended: np.ndarray
  bare: np.ndarray

  @classmethod
  def from_batches(cls, results: list[dict]) -> "FixedNoiseResult":
    return cls(defended=units_lib.concat(results, "defended_correct")[0],
               bare=units_lib.concat(results, "bare_correct"))


def unit(s: attacks_lib.AttackSettings, defense: Defense, attack_key, eval_key, batch_size: int,
         attack_seed: int) -> units_lib.Unit:
  """PGD with settings s (its steps and step size; EOT is moot) on x -> the defense's mean
  softmax over its R purifications drawn with fixed keys, exact gradient through all R
  (`eot.fixed_noise_gradient`); the point is scored by the defense with those same draws.
  Stores defended_correct [1, n] and bare_correct [n]."""
  a_key, s_key = (jax.random.fold_in(k, units_lib.tag(UNIT)) for k in (attack_key, eval_key))

  def fn(params, batch, dynamic):
    del dynamic
    x, y, index = batch["image"], batch["label"], batch["index"]
    keys = example_keys(s_key, index)
    estimator = eot.fixed_noise_gradient(defense, s.loss, restart_keys(keys, defense.restarts))
    x_adv = pgd_lib.pgd(estimator, params, example_keys(a_key, index), x, y, s)
    correct = defense.predict(params, x_adv, keys)["mean_softmax"] == y
    return {"defended_correct": correct[None],
            "bare_correct": jnp.argmax(defense.classify(params, x_adv), -1) == y}

  signature = {"fixed_noise": dataclasses.asdict(s), "attack_seed": attack_seed}
  work = s.num_steps * defense.restarts * attacks_lib.EXACT_GRADIENT_COST + defense.restarts
  return units_lib.Unit(UNIT, fn, batch_size, signature, work=work)


def section(s: attacks_lib.AttackSettings, result: FixedNoiseResult) -> dict:
  """The report's fixed_noise section from the unit's result."""
  correct = result.defended.astype(float)
  return {"threat_model": THREAT_MODEL, "attack": "pgd (exact gradient through the fixed draws)",
          "settings": {"norm": s.norm, "eps": s.eps, "num_steps": s.num_steps,
                       "step_size": s.step_size, "loss": s.loss},
          "robust_accuracy": float(correct.mean()),
          "standard_error": statistics.standard_error_over_examples(correct)}


def plan(ev) -> tuple[list[units_lib.Unit], dict]:
  """The fixed-noise unit when config.eval.fixed_noise is on; its signature."""
  if not (ev.settings.fixed_noise and ev.attack_names):
    return [], {}
  u = unit(_settings(ev), ev.defense, ev.attack_key, ev.eval_key,
           ev.settings.attack_batch_size, ev.settings.attack_seed)
  return [u], {"fixed_noise": u.signature}


def summarise(ev, stored: dict) -> tuple[FixedNoiseResult | None, dict]:
  """(the unit's result or None without it, the report's fixed_noise section)."""
  results = stored.get(UNIT)
  result = None if results is None else FixedNoiseResult.from_batches(results)
  return result, {"fixed_noise": None if result is None else section(_settings(ev), result)}


def _settings(ev) -> attacks_lib.AttackSettings:
  """The budget attack's settings, at the searched budget when it is among the attacks."""
  return ev.attacks.get(ev.settings.budget_attack) or ev.budget_attack
