"""Shared pieces of the attacks: settings, projections, random starts.

Pixels in [0, 1]; threat models are l_inf and l_2 balls of radius eps around x, intersected
with the image box [0, 1]. Each example has its own key ([B] keys), so an attack never
couples examples of a batch and gives the same result however the data is batched.
"""

import dataclasses
import jax
import jax.numpy as jnp

from jaxpure.errors import ConfigError
from jaxpure.purifiers.common import fold, per_example_keys  # noqa: F401  (re-exported)

NORMS = ("linf", "l2")
LOSS_NAMES = ("ce", "cw", "dlr")


@dataclasses.dataclass(frozen=True)
class AttackSettings:
  """norm: "linf" or "l2"; eps, step_size: in [0, 1] pixel units; num_steps: iterations;
  n_eot: purifications averaged per gradient (EOT); loss: "ce", "cw" or "dlr" (PGD, BPDA);
  random_start: start uniformly inside the ball.
  APGD only: losses: one run per loss from a random start (AutoAttack's rand version: "ce",
  "dlr"); warm_restarts: further runs per loss, each from the best point of that loss's
  previous run with the step size reset to 2 eps; decision_samples: forward-only
  purifications (no gradient) added to each iteration's loss estimate for APGD's decisions (the
  best point and the step halving compare means over n_eot + decision_samples purifications
  instead of the gradient's n_eot: a noisy EOT loss otherwise keeps lucky points and halves on
  noise); final_candidate (default True): each run also offers its final iterate to the
  candidate choice beside its best point (the best point is picked by the noisy estimates it
  saw, the winner's curse; the choice judges both with R fresh purifications of the defense;
  on DiffPure digits it made APGD as strong as PGD, benchmarks/RESULTS.md).
  surrogate_steps: pgd_eot_surrogate only: the purifier steps its gradient goes through (the
  defense that scores the points keeps its own; Lee & Kim 2023's surrogate process).
  deviation_weight: exact-gradient attacks: adds this weight times a DiffAttack-style
  deviation loss to the classification loss (`eot.deviation`); 0: none.
  inloop_runs: pgd_eot_inloop only: N, the runs of the defense (R purifications each, forward
  only) that score every iterate inside the loop (DiffHammer's selection).
  initial_step: APGD only: its first step size in units of eps (AutoAttack's 2: every step
  reaches a corner of the l_inf ball; on a noisy EOT gradient a smaller one lets the iterate
  average the gradient over steps). restore_best: APGD only: a halving sends the iterate back
  to the best point so far (AutoAttack's rule: True, as the comparison with AutoAttack's code
  sets it). Default False: on a randomized defense's noisy loss the best point is partly the
  luckiest estimate, and going back to it made APGD weaker than PGD on the digits defenses
  (benchmarks/RESULTS.md, "APGD on randomized defenses"); False keeps the iterate where it
  is and only shrinks the step."""
  norm: str = "linf"
  eps: float = 8 / 255
  step_size: float = 2 / 255
  num_steps: int = 40
  n_eot: int = 1
  loss: str = "ce"
  random_start: bool = True
  losses: tuple[str, ...] = ("ce", "dlr")
  warm_restarts: int = 0
  eot_chunk: int = 0
  decision_samples: int = 0
  final_candidate: bool = True
  surrogate_steps: int = 0
  deviation_weight: float = 0.0
  inloop_runs: int = 4
  initial_step: float = 2.0
  restore_best: bool = False

  def __post_init__(self):
    problems = []
    if self.norm not in NORMS:
      problems.append(f"norm={self.norm!r} (expected one of {NORMS})")
    if not self.eps >= 0:
      problems.append(f"eps={self.eps} (expected >= 0)")
    if not self.step_size > 0:
      problems.append(f"step_size={self.step_size} (expected > 0)")
    if self.num_steps < 1 or self.n_eot < 1:
      problems.append(f"num_steps={self.num_steps}, n_eot={self.n_eot} (expected >= 1)")
    if self.loss not in LOSS_NAMES:
      problems.append(f"loss={self.loss!r} (expected one of {LOSS_NAMES})")
    if not self.losses or any(l not in LOSS_NAMES for l in self.losses):
      problems.append(f"losses={self.losses!r} (expected a non-empty tuple of {LOSS_NAMES})")
    if self.eot_chunk < 0 or (self.eot_chunk and self.n_eot % self.eot_chunk):
      problems.append(f"eot_chunk={self.eot_chunk} (expected 0 or a divisor of "
                      f"n_eot={self.n_eot})")
    if self.warm_restarts < 0:
      problems.append(f"warm_restarts={self.warm_restarts} (expected >= 0)")
    if self.decision_samples < 0:
      problems.append(f"decision_samples={self.decision_samples} (expected >= 0)")
    if self.surrogate_steps < 0:
      problems.append(f"surrogate_steps={self.surrogate_steps} (expected >= 0)")
    if not self.initial_step > 0:
      problems.append(f"initial_step={self.initial_step} (expected > 0, in units of eps)")
    if self.inloop_runs < 1:
      problems.append(f"inloop_runs={self.inloop_runs} (expected >= 1)")
    if not self.deviation_weight >= 0:
      problems.append(f"deviation_weight={self.deviation_weight} (expected >= 0)")
    if problems:
      raise ConfigError("bad attack settings: " + "; ".join(problems))


def _norms(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def project(x_adv: jax.Array, x: jax.Array, norm: str, eps: float) -> jax.Array:
  """Projects x_adv onto the eps-ball around x (per example), then onto [0, 1]. The l_2
  projection is AutoAttack's, delta / (||delta|| + 1e-12) * min(eps, ||delta||)."""
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    n = _norms(delta)
    delta = delta / (n + 1e-12) * jnp.minimum(eps, n)
  return jnp.clip(x + delta, 0.0, 1.0)  # box clipping only shrinks |delta|: still in the ball


def ascent_direction(g: jax.Array, norm: str) -> jax.Array:
  """Steepest-ascent direction of unit norm: sign(g) for l_inf, g / (||g||_2 + 1e-12) for l_2
  (AutoAttack's normalisation)."""
  if norm == "linf":
    return jnp.sign(g)
  return g / (_norms(g) + 1e-12)


def random_start(keys: jax.Array, x: jax.Array, norm: str, eps: float) -> jax.Array:
  """A uniform point of the l_inf ball, or a random point of the l_2 ball, inside [0, 1]."""
  shape = x.shape[1:]
  if norm == "linf":
    delta = jax.vmap(lambda k: jax.random.uniform(k, shape, x.dtype, -eps, eps))(keys)
  else:
    def one(k):
      kd, kr = jax.random.split(k)
      d = jax.random.normal(kd, shape, x.dtype)
      return d / jnp.linalg.norm(d) * eps * jax.random.uniform(kr, (), x.dtype)
    delta = jax.vmap(one)(keys)
  return project(x + delta, x, norm, eps)
