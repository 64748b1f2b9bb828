"""Attacks with one interface: `attack(params, keys, x, y, eps=None, step_size=None) -> x_adv`.

x: [B, H, W, C] in [0, 1]; y: [B] int labels; keys: [B] per-example keys (or one key);
params: {"score": score network variables, "classifier": classifier variables}; eps,
step_size: optional (traced) overrides of the settings' values (one compiled attack for an eps
sweep). x_adv stays in the eps-ball around x and in [0, 1].

Each attack is a gradient estimator `(params, keys, x, y) -> (loss [B], g)` (`eot.py`)
driven by a step rule (`pgd.py`, `apgd.py`):

  pgd_clf       PGD on the bare classifier (blind to the purifier)
  bpda_eot      BPDA+EOT: identity Jacobian for the purifier, sign of the mean gradient
  bpda_eot_adp  ADP's BPDA+EOT: sign of the sum of per-sample gradient signs
  pgd_eot_full  PGD with exact gradients through the whole purifier, averaged over EOT
  apgd_eot      APGD on exact EOT gradients, one run per loss (CE, DLR) plus optional warm
                restarts from the best point; per example the candidate the defense
                (R purifications) is furthest from classifying correctly
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxpure import parallel
from jaxpure.attacks import apgd as apgd_lib
from jaxpure.attacks import eot, losses as losses_lib, pgd as pgd_lib
from jaxpure.attacks.common import (AttackSettings, fold, per_example_keys, project,
                                    random_start)
from jaxpure.defense import Defense
from jaxpure.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """What the evaluation needs to know of an attack besides running it.

  exact_gradient: differentiates through the whole purifier (the reference for the
  "an attack beats the exact-gradient ones" check); blind: ignores the purifier, so it is also
  the undefended baseline (its points are scored on the bare classifier too)."""
  name: str
  exact_gradient: bool = False
  blind: bool = False


SPECS = {s.name: s for s in (
    AttackSpec("pgd_clf", blind=True),
    AttackSpec("bpda_eot"),
    AttackSpec("bpda_eot_adp"),
    AttackSpec("pgd_eot_full", exact_gradient=True),
    AttackSpec("apgd_eot", exact_gradient=True),
)}
ATTACKS = tuple(SPECS)
EXACT_GRADIENT_ATTACKS = tuple(n for n, s in SPECS.items() if s.exact_gradient)
#: The attack that measures the bare classifier's robustness (the undefended baseline).
UNDEFENDED_BASELINE = next(n for n, s in SPECS.items() if s.blind)


def _estimator(name: str, defense: Defense, s: AttackSettings):
  if name == "pgd_clf":
    return eot.classifier_gradient(defense, s.loss)
  if name == "bpda_eot":
    return eot.bpda_eot_gradient(defense, s.loss, s.n_eot)
  if name == "bpda_eot_adp":
    if s.norm != "linf":
      raise ConfigError("bpda_eot_adp (ADP's sign-of-signs step) is defined for norm='linf' only")
    return eot.bpda_eot_adp_direction(defense, s.loss, s.n_eot)
  if name == "pgd_eot_full":
    return eot.exact_eot_gradient(defense, s.loss, s.n_eot, s.eot_chunk)
  raise ConfigError(f"unknown attack {name!r}; expected one of {ATTACKS}")


def attack_function(name: str, defense: Defense, s: AttackSettings):
  """The (unjitted) attack `name` as `fn(params, keys, x, y, eps=None, step_size=None)`."""
  if name == "apgd_eot":
    return _apgd_runs(defense, s)
  est = _estimator(name, defense, s)
  return lambda params, keys, x, y, eps=None, step_size=None: pgd_lib.pgd(
      est, params, keys, x, y, s, eps, step_size)


def _apgd_runs(defense: Defense, s: AttackSettings):
  """APGD on exact EOT gradients: per loss in s.losses a run from a random start, then
  s.warm_restarts runs from that loss's latest best point; per example, the candidate the
  defense is furthest from classifying correctly.

  The L (1 + warm_restarts) runs are one `lax.scan` whose step is one APGD run, its loss's
  gradient picked by `lax.switch`: each distinct loss's gradient is traced and compiled twice
  (APGD's start evaluation and its step), however many runs and warm restarts there are.
  Run j draws its noise from fold(keys, 100 + j), as when the runs are unrolled."""
  names = tuple(dict.fromkeys(s.losses))  # distinct, in order
  estimators = [eot.exact_eot_gradient(defense, name, s.n_eot, s.eot_chunk) for name in names]
  runs = [(names.index(loss), r == 0) for loss in s.losses for r in range(1 + s.warm_restarts)]
  loss_index = jnp.asarray([i for i, _ in runs], jnp.int32)
  first = jnp.asarray([f for _, f in runs])

  def run(params, keys, x, y, eps=None, step_size=None):
    del step_size  # APGD sets its own (2 eps, halved)
    keys = per_example_keys(keys, x.shape[0])
    radius = s.eps if eps is None else eps

    def one_run(best, xs):
      j, index, is_first = xs
      run_keys = fold(keys, 100 + j)
      estimator = lambda *args: jax.lax.switch(index, estimators, *args)  # noqa: E731
      # A loss's first run starts where apgd's own random start (x_start=None) would.
      start = (random_start(fold(run_keys, jnp.uint32(2**32 - 1)), x, s.norm, radius)
               if s.random_start else x)
      best = apgd_lib.apgd(estimator, params, run_keys, x, y, s,
                           jnp.where(is_first, start, best), eps)
      return best, best

    _, candidates = jax.lax.scan(
        one_run, x, (jnp.arange(len(runs), dtype=jnp.uint32), loss_index, first))
    return select_candidate(defense, params, fold(keys, 3), candidates, y)
  return run


def select_candidate(defense: Defense, params, keys, candidates, y):
  """Per example, the candidate of candidates [K, B, H, W, C] with the lowest defense margin:
  the mean softmax over R purifications (drawn from `keys`, the same for every candidate),
  true class minus the best other class. A few EOT samples would pick by noise."""
  margin = lambda xc: -losses_lib.cw_margin(jnp.mean(jax.nn.softmax(  # noqa: E731
      defense.logits(params, xc, keys, defense.restarts), -1), 0), y)
  pick = jnp.argmin(jnp.stack([margin(c) for c in candidates]), axis=0)  # [B]
  return jnp.take_along_axis(candidates, pick[None, :, None, None, None], axis=0)[0]


def make_attack(name: str, defense: Defense, s: AttackSettings, mesh=None):
  """Jitted attack `(params, keys, x, y)`; with a mesh, x, y, keys and x_adv are sharded over
  `data`."""
  fn = attack_function(name, defense, s)
  run = lambda params, keys, x, y: fn(params, keys, x, y)  # noqa: E731
  if mesh is None:
    return jax.jit(run)
  data, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(run, in_shardings=(rep, data, data, data), out_shardings=data)


__all__ = ["ATTACKS", "EXACT_GRADIENT_ATTACKS", "UNDEFENDED_BASELINE", "SPECS", "AttackSettings",
           "AttackSpec", "attack_function", "make_attack", "project", "select_candidate"]
