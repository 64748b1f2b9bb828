"""Attacks. For scripts: `pgd_eot(defense, eps=..., steps=..., n_eot=...)`, `apgd_eot`,
`bpda_eot`, `pgd_clf` return `attack(params, key, x, y) -> x_adv` (`functions.py`).

Inside, attacks have one interface:
`attack(params, keys, x, y, eps=None, step_size=None, num_steps=None) -> x_adv`.

x: [B, H, W, C] in [0, 1]; y: [B] int labels; keys: [B] per-example keys (or one key);
params: {"score": score network variables, "classifier": classifier variables}; eps,
step_size, num_steps: optional (traced) overrides of the settings' values
(`dynamic_settings`), so that one compiled attack serves an attack and its eps sweep. x_adv
stays in the eps-ball around x and in [0, 1].

Each attack is a gradient estimator `(params, keys, x, y) -> (loss [B], g)` (`eot.py`)
driven by a step rule (`pgd.py`, `apgd.py`):

  pgd_clf       PGD on the bare classifier (blind to the purifier)
  bpda_eot      BPDA+EOT: identity Jacobian for the purifier, sign of the mean gradient
  bpda_eot_adp  ADP's BPDA+EOT: sign of the sum of per-sample gradient signs
  pgd_eot_full  PGD with exact gradients through the whole purifier, averaged over EOT
  apgd_eot      APGD on exact EOT gradients, one run per loss (CE, DLR) plus optional warm
                restarts from the best point; per example the candidate (best points,
                optionally final iterates) the defense (R purifications) is furthest
                from classifying correctly; optional
                forward-only decision samples for its noisy decisions
  pgd_eot_surrogate  PGD with exact gradients through a shorter purification (surrogate_steps
                steps), scored on the full defense (Lee & Kim 2023's surrogate process)
  pgd_eot_inloop  PGD with exact EOT gradients whose every iterate is scored inside the loop
                by inloop_runs runs of the defense; per example the iterate wrong in the most
                runs (DiffHammer's selection, for the resubmission threat model)

The attacks through the purifier can add a DiffAttack-style deviation loss
(`eot.deviation`, settings.deviation_weight).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpure import parallel
from jaxpure.attacks import apgd as apgd_lib
from jaxpure.attacks import eot, inloop, losses as losses_lib, pgd as pgd_lib
from jaxpure.attacks.common import (AttackSettings, fold, per_example_keys, project,
                                    random_start)
from jaxpure.defense import Defense
from jaxpure.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """What the evaluation needs to know of an attack besides running it.

  exact_gradient: differentiates through the whole purifier (the reference for the
  "an attack beats the exact-gradient ones" check); blind: ignores the purifier, so it is also
  the undefended baseline (its points are scored on the bare classifier too);
  through_purifier: differentiates a purification (the defense's or a surrogate's), so the
  deviation loss and EOT chunking apply; start_gradient: evaluates the gradient at its start
  point too (APGD), so num_steps + 1 gradients per run; trajectory: a fixed-step-size attack
  returning its last iterate, so its k-step run is the k-th point of a longer run's
  trajectory (`attack_trajectory`: budget curves and the budget search); dynamic: the
  settings it takes as traced arguments (`dynamic_settings`); build(defense, s) -> its
  function (`attack_function`; None: PGD on its gradient estimator); cost(s, restarts,
  per_gradient) -> its purifications per example (`purifications`; None: one gradient per
  step)."""
  name: str
  exact_gradient: bool = False
  blind: bool = False
  through_purifier: bool = False
  start_gradient: bool = False
  trajectory: bool = True
  dynamic: tuple[str, ...] = ("eps", "step_size", "num_steps")
  build: Callable | None = None
  cost: Callable | None = None


def _check(name: str, s: AttackSettings, defense: Defense) -> None:
  """Raises ConfigError (one line) if attack `name` cannot run with settings `s` against
  `defense`."""
  if name not in SPECS:
    raise ConfigError(f"unknown attack {name!r}; expected one of {ATTACKS}")
  if name == "bpda_eot_adp" and s.norm != "linf":
    raise ConfigError("bpda_eot_adp (ADP's sign-of-signs step) is defined for norm='linf' only")
  if name == "pgd_eot_surrogate":
    if s.surrogate_steps < 1:
      raise ConfigError("pgd_eot_surrogate needs surrogate_steps >= 1 (the purifier steps its "
                        "gradient goes through)")
    defense.with_steps(s.surrogate_steps)  # refuses a family without a steps field


def _estimator(name: str, defense: Defense, s: AttackSettings, x_clean=None):
  """The gradient estimator of attack `name` (checked by `_check`); x_clean: the unattacked
  input (for the deviation loss of the exact-gradient attacks)."""
  _check(name, s, defense)
  if name == "pgd_clf":
    return eot.classifier_gradient(defense, s.loss)
  if name == "bpda_eot":
    return eot.bpda_eot_gradient(defense, s.loss, s.n_eot)
  if name == "bpda_eot_adp":
    return eot.bpda_eot_adp_direction(defense, s.loss, s.n_eot)
  if name in ("pgd_eot_full", "pgd_eot_inloop"):
    return eot.exact_eot_gradient(defense, s.loss, s.n_eot, s.eot_chunk, s.deviation_weight,
                                  x_clean)
  if name == "pgd_eot_surrogate":
    return eot.exact_eot_gradient(defense.with_steps(s.surrogate_steps), s.loss, s.n_eot,
                                  s.eot_chunk, s.deviation_weight, x_clean)
  raise ConfigError(f"attack {name!r} has no PGD-type gradient estimator")


#: The cost of one exact gradient through the purifier in forward purifications: the forward
#: pass, its rematerialisation in the backward pass and the backward pass itself.
EXACT_GRADIENT_COST = 3.0


def purifications(name: str, s: AttackSettings, restarts: int) -> float:
  """Estimated purifications (of one image, one restart; an exact gradient counts as
  EXACT_GRADIENT_COST of them) that attack `name` runs per attacked example. An estimate of
  its relative cost (e.g. for an ETA), not a measurement; the blind attack counts 0."""
  spec = SPECS[name]
  if spec.blind:
    return 0.0
  per_gradient = s.n_eot * (EXACT_GRADIENT_COST if spec.through_purifier else 1.0)
  if spec.cost is not None:
    return spec.cost(s, restarts, per_gradient)
  return s.num_steps * per_gradient


def _apgd_cost(s: AttackSettings, restarts: int, per_gradient: float) -> float:
  """APGD's runs, each with a start evaluation, then the candidate choice."""
  runs = len(s.losses) * (1 + s.warm_restarts)
  candidates = runs * (2 if s.final_candidate else 1)
  choice = candidates * restarts if candidates > 1 else 0  # one candidate: no choice
  return runs * (s.num_steps + 1) * (per_gradient + s.decision_samples) + choice


def _inloop_cost(s: AttackSettings, restarts: int, per_gradient: float) -> float:
  """The in-loop attack: each iterate also scored by the defense's runs."""
  return s.num_steps * (per_gradient + s.inloop_runs * restarts)


def with_gradient_budget(name: str, s: AttackSettings, num_steps: int,
                         n_eot: int) -> AttackSettings:
  """Attack `name`'s settings spending the gradient samples per image (per run) of num_steps
  PGD steps at n_eot EOT samples: an attack that also evaluates its start point (APGD) takes
  one step fewer."""
  steps = num_steps - (1 if SPECS[name].start_gradient else 0)
  return dataclasses.replace(s, num_steps=max(steps, 1), n_eot=n_eot)


def dynamic_settings(name: str) -> tuple[str, ...]:
  """The settings attack `name` takes as (traced) arguments (`attack_function`), so that one
  compiled program serves any of their values. APGD's schedule depends on its number of
  steps, so its num_steps is not one of them; its step_size is passed and ignored."""
  return SPECS[name].dynamic


def attack_function(name: str, defense: Defense, s: AttackSettings):
  """The (unjitted) attack `name` as `fn(params, keys, x, y, eps=None, step_size=None,
  num_steps=None)`; the overrides (traced or not) replace the settings' values. APGD sets its
  own step sizes (step_size is ignored) and refuses num_steps."""
  spec = SPECS.get(name)
  if spec is not None and spec.build is not None:
    return spec.build(defense, s)
  _check(name, s, defense)
  return lambda params, keys, x, y, eps=None, step_size=None, num_steps=None: pgd_lib.pgd(
      _estimator(name, defense, s, x), params, keys, x, y, s, eps, step_size,
      num_steps=num_steps)


def attack_trajectory(name: str, defense: Defense, s: AttackSettings, record: tuple[int, ...]):
  """`fn(params, keys, x, y)` -> [len(record), B, H, W, C]: the points of a PGD-type attack
  `name` after k steps for each k in `record`, from one run (what k-step runs with the same keys
  return; `pgd_lib.pgd`). Not for APGD, whose step sizes depend on its total budget."""
  _check(name, s, defense)
  if not SPECS[name].trajectory:
    raise ConfigError(f"budget curves need a fixed-step-size attack whose k-step run is its "
                      f"trajectory's k-th point; {name} is not one")
  return lambda params, keys, x, y: pgd_lib.pgd(_estimator(name, defense, s, x), params, keys,
                                                x, y, s, record=record)


def _inloop_attack(defense: Defense, s: AttackSettings):
  """The in-loop attack (`inloop.pgd_inloop`): exact-gradient PGD whose iterates are scored
  by s.inloop_runs runs of the defense."""
  name = "pgd_eot_inloop"
  _check(name, s, defense)
  score = eot.defense_runs(defense, s.loss, s.inloop_runs)
  return lambda params, keys, x, y, eps=None, step_size=None, num_steps=None: (
      inloop.pgd_inloop(_estimator(name, defense, s, x), score, params, keys, x, y, s, eps,
                        step_size, num_steps))


def _apgd_runs(defense: Defense, s: AttackSettings):
  """APGD on exact EOT gradients: per loss in s.losses a run from a random start, then
  s.warm_restarts runs from that loss's latest best point; per example, the candidate (each
  run's best point, and its final iterate with s.final_candidate) the defense is furthest from
  classifying correctly.

  The L (1 + warm_restarts) runs are one `lax.scan` whose step is one APGD run, and the runs'
  losses are one loss head picked by `lax.switch` on the logits (`losses.switched`): the
  program differentiates the purifier once, however many losses, runs and warm restarts there
  are (APGD's start evaluation is iteration -1 of its step scan). Run j draws its noise from
  fold(keys, 100 + j), as when the runs are unrolled."""
  names = tuple(dict.fromkeys(s.losses))  # distinct, in order
  runs = [(names.index(loss), r == 0) for loss in s.losses for r in range(1 + s.warm_restarts)]
  loss_index = jnp.asarray([i for i, _ in runs], jnp.int32)
  first = jnp.asarray([f for _, f in runs])

  def run(params, keys, x, y, eps=None, step_size=None, num_steps=None):
    del step_size  # APGD sets its own (2 eps, halved)
    if num_steps is not None:
      raise ValueError("apgd_eot's schedule needs its settings' own num_steps")
    keys = per_example_keys(keys, x.shape[0])
    radius = s.eps if eps is None else eps

    def one_run(best, xs):
      j, index, is_first = xs
      run_keys = fold(keys, 100 + j)
      loss = losses_lib.switched(names, index)
      estimator = eot.exact_eot_gradient(defense, loss, s.n_eot, s.eot_chunk,
                                         s.deviation_weight, x)
      judge = eot.eot_loss(defense, loss, s.decision_samples) if s.decision_samples else None
      # A loss's first run starts where apgd's own random start (x_start=None) would.
      start = (random_start(fold(run_keys, jnp.uint32(2**32 - 1)), x, s.norm, radius)
               if s.random_start else x)
      best, final = apgd_lib.apgd(estimator, params, run_keys, x, y, s,
                                  jnp.where(is_first, start, best), eps, judge=judge,
                                  with_final=True)
      return best, (jnp.stack([best, final]) if s.final_candidate else best[None])

    _, candidates = jax.lax.scan(
        one_run, x, (jnp.arange(len(runs), dtype=jnp.uint32), loss_index, first))
    candidates = candidates.reshape((-1,) + x.shape)  # [runs * (1 or 2), B, H, W, C]
    return select_candidate(defense, params, fold(keys, 3), candidates, y)
  return run


def select_candidate(defense: Defense, params, keys, candidates, y):
  """Per example, the candidate of candidates [K, B, H, W, C] with the lowest defense margin:
  the mean softmax over R purifications (drawn from `keys`, the same for every candidate),
  true class minus the best other class. A few EOT samples would pick by noise. The
  candidates go through one `lax.map` (one compiled copy of the defense, whatever K); a single
  candidate is returned as it is."""
  if candidates.shape[0] == 1:
    return candidates[0]
  margin = lambda xc: -losses_lib.cw_margin(jnp.mean(jax.nn.softmax(  # noqa: E731
      defense.logits(params, xc, keys, defense.restarts), -1), 0), y)
  pick = jnp.argmin(jax.lax.map(margin, candidates), axis=0)  # [B]
  return jnp.take_along_axis(candidates, pick[None, :, None, None, None], axis=0)[0]


SPECS = {s.name: s for s in (
    AttackSpec("pgd_clf", blind=True),
    AttackSpec("bpda_eot"),
    AttackSpec("bpda_eot_adp"),
    AttackSpec("pgd_eot_full", exact_gradient=True, through_purifier=True),
    # APGD sets its own step sizes from its total number of steps: num_steps is static
    AttackSpec("apgd_eot", exact_gradient=True, through_purifier=True, start_gradient=True,
               trajectory=False, dynamic=("eps", "step_size"),
               build=lambda defense, s: _apgd_runs(defense, s), cost=_apgd_cost),
    # exact gradient of a shorter purification (settings.surrogate_steps): not the defense's
    AttackSpec("pgd_eot_surrogate", through_purifier=True),
    AttackSpec("pgd_eot_inloop", exact_gradient=True, through_purifier=True, trajectory=False,
               build=lambda defense, s: _inloop_attack(defense, s), cost=_inloop_cost),
)}
ATTACKS = tuple(SPECS)
EXACT_GRADIENT_ATTACKS = tuple(n for n, s in SPECS.items() if s.exact_gradient)
#: The attack that measures the bare classifier's robustness (the undefended baseline).
UNDEFENDED_BASELINE = next(n for n, s in SPECS.items() if s.blind)


def make_attack(name: str, defense: Defense, s: AttackSettings, mesh=None):
  """Jitted attack `(params, keys, x, y)`; with a mesh, x, y, keys and x_adv are sharded over
  `data`."""
  fn = attack_function(name, defense, s)
  run = lambda params, keys, x, y: fn(params, keys, x, y)  # noqa: E731
  if mesh is None:
    return jax.jit(run)
  data, rep = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(run, in_shardings=(rep, data, data, data), out_shardings=data)


# The attacks as functions of a defense, `attack(params, key, x, y) -> x_adv` (the public API).
from jaxpure.attacks.functions import (apgd_eot, bpda_eot, pgd_clf, pgd_eot,  # noqa: E402
                                       pgd_eot_inloop)

__all__ = ["ATTACKS", "apgd_eot", "bpda_eot", "pgd_clf", "pgd_eot", "pgd_eot_inloop", "EXACT_GRADIENT_ATTACKS", "EXACT_GRADIENT_COST", "UNDEFENDED_BASELINE",
           "SPECS", "AttackSettings", "AttackSpec", "attack_function", "attack_trajectory",
           "dynamic_settings", "make_attack", "project", "purifications", "select_candidate",
           "with_gradient_budget"]
