"""Attacks with one interface: `attack(params, keys, x, y) -> x_adv`.

x: [B, H, W, C] in [0, 1]; y: [B] int labels; keys: [B] per-example keys (or one key);
params: {"score": score params, "classifier": classifier variables}. x_adv stays in the
settings' eps-ball around x and in [0, 1].

  pgd_clf       PGD on the bare classifier (blind to the purifier)
  bpda_eot      BPDA+EOT: identity Jacobian for the purifier, sign of the mean gradient
  bpda_eot_adp  ADP's BPDA+EOT: sign of the sum of per-sample gradient signs
  pgd_eot_full  PGD with exact gradients through the whole purifier, averaged over EOT
  apgd_eot      APGD on exact EOT gradients, one run per loss (CE, DLR) plus optional warm
                restarts from the best point; per example the candidate the defense
                (R purifications) is furthest from classifying correctly
"""


import jax
import jax.numpy as jnp

from jaxpure import parallel
from jaxpure.attacks import apgd as apgd_lib
from jaxpure.attacks import eot, losses as losses_lib, pgd as pgd_lib
from jaxpure.attacks.common import AttackSettings, Defense, per_example_keys, fold, project
from jaxpure.errors import ConfigError

ATTACKS = ("pgd_clf", "bpda_eot", "bpda_eot_adp", "pgd_eot_full", "apgd_eot")
EXACT_GRADIENT_ATTACKS = ("pgd_eot_full", "apgd_eot")


def attack_function(name: str, defense: Defense, s: AttackSettings):
  """The (unjitted) attack `name` as `fn(params, keys, x, y) -> x_adv`."""
  if name == "pgd_clf":
    est = eot.classifier_gradient(defense, s.loss)
  elif name == "bpda_eot":
    est = eot.bpda_eot_gradient(defense, s.loss, s.n_eot)
  elif name == "bpda_eot_adp":
    if s.norm != "linf":
      raise ConfigError("bpda_eot_adp (ADP's sign-of-signs step) is defined for norm='linf' only")
    est = eot.bpda_eot_adp_direction(defense, s.loss, s.n_eot)
  elif name == "pgd_eot_full":
    est = eot.exact_eot_gradient(defense, s.loss, s.n_eot)
  elif name == "apgd_eot":
    return _apgd_runs(defense, s)
  else:
    raise ConfigError(f"unknown attack {name!r}; expected one of {ATTACKS}")
  return lambda params, keys, x, y: pgd_lib.pgd(est, params, keys, x, y, s)


def _apgd_runs(defense: Defense, s: AttackSettings):
  """APGD on exact EOT gradients: per loss in s.losses a run from a random start, then
  s.warm_restarts runs from that loss's latest best point; per example, the candidate the
  defense is furthest from classifying correctly."""
  estimators = {loss: eot.exact_eot_gradient(defense, loss, s.n_eot) for loss in s.losses}

  def run(params, keys, x, y):
    keys = per_example_keys(keys, x.shape[0])
    candidates = []  # run j draws its noise from fold(keys, 100 + j)
    for loss in s.losses:
      best = None  # None: a random start
      for _ in range(1 + s.warm_restarts):
        best = apgd_lib.apgd(estimators[loss], params, fold(keys, 100 + len(candidates)),
                             x, y, s, best)
        candidates.append(best)
    # Per example, keep the candidate the defense (R purifications drawn from the attack's
    # own keys, the same ones for every candidate) is furthest from classifying correctly:
    # the margin of its mean softmax, true class minus the best other class. A few EOT
    # samples would pick by noise.
    select_keys = fold(keys, 3)
    margin = lambda xc: -losses_lib.cw_margin(jnp.mean(jax.nn.softmax(
        defense.logits(params, xc, select_keys, defense.purify.restarts), -1), 0), y)
    stacked = jnp.stack(candidates)  # [K, B, H, W, C]
    pick = jnp.argmin(jnp.stack([margin(c) for c in candidates]), axis=0)  # [B]
    return jnp.take_along_axis(stacked, pick[None, :, None, None, None], axis=0)[0]
  return run


def make_attack(name: str, defense: Defense, s: AttackSettings, mesh=None):
  """Jitted attack; with a mesh, x, y, keys and x_adv are sharded over `data`."""
  fn = attack_function(name, defense, s)
  if mesh is None:
    return jax.jit(fn)
  data, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(fn, in_shardings=(rep, data, data, data), out_shardings=data)


__all__ = ["ATTACKS", "EXACT_GRADIENT_ATTACKS", "AttackSettings", "Defense", "attack_function",
           "make_attack", "project"]
