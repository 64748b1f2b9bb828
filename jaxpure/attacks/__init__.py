"""Attacks with one interface: `attack(params, keys, x, y) -> x_adv`.

x: [B, H, W, C] in [0, 1]; y: [B] int labels; keys: [B] per-example keys (or one key);
params: {"score": score params, "classifier": classifier variables}. x_adv stays in the
settings' eps-ball around x and in [0, 1].

  pgd_clf       PGD on the bare classifier (blind to the purifier)
  bpda_eot      BPDA+EOT: identity Jacobian for the purifier, sign of the mean gradient
  bpda_eot_adp  ADP's BPDA+EOT: sign of the sum of per-sample gradient signs
  pgd_eot_full  PGD with exact gradients through the whole purifier, averaged over EOT
  apgd_eot      APGD-CE then APGD-DLR (on points CE did not break), exact EOT gradients
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
    return _apgd_ce_then_dlr(defense, s)
  else:
    raise ConfigError(f"unknown attack {name!r}; expected one of {ATTACKS}")
  return lambda params, keys, x, y: pgd_lib.pgd(est, params, keys, x, y, s)


def _apgd_ce_then_dlr(defense: Defense, s: AttackSettings):
  ce = eot.exact_eot_gradient(defense, "ce", s.n_eot)
  dlr = eot.exact_eot_gradient(defense, "dlr", s.n_eot)

  def run(params, keys, x, y):
    keys = per_example_keys(keys, x.shape[0])
    x_ce = apgd_lib.apgd(ce, params, fold(keys, 1), x, y, s)
    x_dlr = apgd_lib.apgd(dlr, params, fold(keys, 2), x, y, s)
    # Per example, keep the candidate the defense (R purifications drawn from the attack's
    # own keys, the same ones for both) is furthest from classifying correctly: the margin
    # of its mean softmax, true class minus the best other class. A few EOT samples would
    # pick by noise.
    select_keys = fold(keys, 3)
    margin = lambda xc: -losses_lib.cw_margin(jnp.mean(jax.nn.softmax(
        defense.logits(params, xc, select_keys, defense.purify.restarts), -1), 0), y)
    use_dlr = margin(x_dlr) < margin(x_ce)
    return jnp.where(use_dlr[:, None, None, None], x_dlr, x_ce)
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
