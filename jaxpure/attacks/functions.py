"""The attacks as functions of a defense: each returns a jitted

  attack(params, key, x, y, indices=None) -> x_adv [B, H, W, C] in [0, 1]

with x [B, H, W, C] in [0, 1], y [B] int labels, key one PRNG key and params the defense's
(`jaxpure.load_defense`, or the user's own for `jaxpure.custom_defense`). Example b attacks
with the key fold_in(key, indices[b]) (indices default to 0..B-1): give the examples' indices
in the whole data set and a data set cut into batches is attacked exactly as in one batch.
x_adv lies in the `norm` ball of radius eps around x and in [0, 1].

Thin wrappers over `jaxpure.attacks.attack_function` (the evaluation's attacks, with the
same settings as `AttackSettings`); eps and step sizes are in [0, 1] pixel units. A fixed
step size defaults to 2.5 eps / steps (Madry et al.: enough to cross the ball and back).
"""

import jax
import jax.numpy as jnp

from jaxpure.attacks.common import AttackSettings
from jaxpure.purifiers.common import example_keys


def _default_step(eps: float, steps: int, step_size: float | None) -> float:
  return step_size if step_size is not None else max(2.5 * eps / steps, 1e-6)


def _needs_split(name: str, defense) -> None:
  if not getattr(defense, "has_split", True):
    raise ValueError(f"{name} needs the defense's purification and classifier apart; this "
                     "defense was given as one logits_fn (use purify_fn and classify_fn)")


def jitted(name: str, defense, settings: AttackSettings):
  """The evaluation's attack `name` (`attack_function`) as `attack(params, key, x, y,
  indices=None)`, jitted, with per-example keys fold_in(key, index)."""
  from jaxpure.attacks import attack_function
  fn = attack_function(name, defense, settings)

  def attack(params, key, x, y, indices=None):
    indices = jnp.arange(x.shape[0]) if indices is None else indices
    return fn(params, example_keys(key, indices), x, y)
  return jax.jit(attack)


def pgd_eot(defense, *, eps: float, steps: int, n_eot: int, norm: str = "linf",
            step_size: float | None = None, loss: str = "ce", random_start: bool = True,
            eot_chunk: int = 0):
  """PGD with the exact gradient through the whole defense (every purification step, its
  noise and stopping rule), averaged over n_eot randomized calls per step (`pgd_eot_full`).
  loss: "ce", "cw" or "dlr"; eot_chunk: differentiate the n_eot calls this many at a time
  (a divisor of n_eot; 0: all at once) to bound memory."""
  return jitted("pgd_eot_full", defense, AttackSettings(
      norm=norm, eps=eps, step_size=_default_step(eps, steps, step_size), num_steps=steps,
      n_eot=n_eot, loss=loss, random_start=random_start, eot_chunk=eot_chunk))


def pgd_eot_inloop(defense, *, eps: float, steps: int, n_eot: int, inloop_runs: int = 4,
                   norm: str = "linf", step_size: float | None = None, loss: str = "ce",
                   random_start: bool = True):
  """PGD with exact EOT gradients whose every iterate is scored inside the loop by
  `inloop_runs` runs of the defense (forward only); per example the iterate wrong in the most
  runs, ties to the larger loss (DiffHammer's selection, the resubmission threat model)."""
  return jitted("pgd_eot_inloop", defense, AttackSettings(
      norm=norm, eps=eps, step_size=_default_step(eps, steps, step_size), num_steps=steps,
      n_eot=n_eot, loss=loss, random_start=random_start, inloop_runs=inloop_runs))


def apgd_eot(defense, *, eps: float, steps: int, n_eot: int, norm: str = "linf",
             losses: tuple[str, ...] = ("ce", "dlr"), warm_restarts: int = 0,
             decision_samples: int = 0, final_candidate: bool = True, eot_chunk: int = 0,
             initial_step: float = 2.0, restore_best: bool = False):
  """APGD (AutoAttack's rand version) on exact EOT gradients: one run per loss in `losses`
  from a random start (plus warm_restarts from its best point); per example, the candidate
  the defense is furthest from classifying correctly. APGD sets its own step sizes
  (initial_step x eps, halved); decision_samples: forward-only calls added to its decisions'
  loss estimates; restore_best: a halving sends the iterate back to the best point so far
  (AutoAttack's rule; off by default: on a randomized defense's noisy loss it made APGD
  weaker than PGD; see `AttackSettings`)."""
  return jitted("apgd_eot", defense, AttackSettings(
      norm=norm, eps=eps, num_steps=steps, n_eot=n_eot, losses=tuple(losses),
      warm_restarts=warm_restarts, decision_samples=decision_samples,
      final_candidate=final_candidate, eot_chunk=eot_chunk, initial_step=initial_step,
      restore_best=restore_best))


def bpda_eot(defense, *, eps: float, steps: int, n_eot: int, norm: str = "linf",
             step_size: float | None = None, loss: str = "ce", adp_sign: bool = False):
  """BPDA+EOT: the purification's Jacobian taken as the identity, the classifier's gradient
  at the purified points averaged over n_eot purifications. adp_sign: ADP's own variant (l_inf
  only), the sign of the sum of per-sample gradient signs (weaker). Needs the split."""
  name = "bpda_eot_adp" if adp_sign else "bpda_eot"
  _needs_split(name, defense)
  return jitted(name, defense, AttackSettings(
      norm=norm, eps=eps, step_size=_default_step(eps, steps, step_size), num_steps=steps,
      n_eot=n_eot, loss=loss))


def pgd_clf(defense, *, eps: float, steps: int, norm: str = "linf",
            step_size: float | None = None, loss: str = "ce"):
  """PGD on the bare classifier, blind to the purification (the undefended baseline; its
  points are then scored on the whole defense). Needs the split."""
  _needs_split("pgd_clf", defense)
  return jitted("pgd_clf", defense, AttackSettings(
      norm=norm, eps=eps, step_size=_default_step(eps, steps, step_size), num_steps=steps,
      n_eot=1, loss=loss))
