"""ADP (Yoon, Hwang & Lee 2021): noise, then a few score steps with a curvature-adaptive size.

docs/design.md#1-the-method. x0 = clip(x + sigma_n n, 0, 1); for t < T, with g = h(x_t):
- "adp": alpha_t = clip(lam delta / (1 - z), alpha_min, alpha_max), z = <g, h(x_t + delta g)> /
  <g, g> per example; an example stops for good once alpha_t <= tau (alpha 0 from then on);
- "gd": a fixed alpha = step_size;
- "langevin": x + alpha g / sigma_p + sqrt(2 alpha) n (Hill et al. style);
then x_{t+1} = clip(x_t + ..., 0, 1). The three step rules are one family because they share the
randomisation, the scan, the clipping and the trace; only the step differs (`STEP_RULES`).

The network is the unconditional NCSNv2 field h (score = h / sigma); it is called with
t = sigma_n (ignored by an unconditional network). Pixels in [0, 1].

The family's "denoise" mode (`denoise`) is the Tweedie denoiser of a smoothed classifier
(`jaxpure.smoothing`).
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxpure.errors import ConfigError
from jaxpure.purifiers import common
from jaxpure.purifiers import remat as remat_lib

NAME = "adp"
#: The network's time input this family calls it with (see `jaxpure.models.score_function`).
TIME_INPUT = "none"
#: The Settings field holding the number of steps (surrogate-process attacks shorten it).
STEPS_FIELD = "max_iter"


@dataclasses.dataclass(frozen=True)
class Settings:
  """ADP's settings (defaults are ADP's own).

  sigma_n: std of the randomising noise (pixels); noise: "gaussian" or "binary"
  (+-sigma_n sqrt(2/pi)); method: "adp", "gd" or "langevin" (see the module docstring);
  max_iter: T; lam, delta, tau: ADP's lambda, delta and stopping threshold; alpha_min,
  alpha_max: ADP's step bounds; step_size: gd/langevin alpha; sigma_p: langevin's sigma;
  remat: what a gradient through the steps keeps and recomputes: "step", "none",
  "save_convolutions" or "auto" (`jaxpure.purifiers.remat`; a boolean is the old form: True is
  "step", False "none").
  """
  sigma_n: float = 0.25
  noise: str = "gaussian"
  method: str = "adp"
  max_iter: int = 10
  lam: float = 0.05
  delta: float = 1e-3
  tau: float = 1e-3
  alpha_min: float = 1e-5
  alpha_max: float = 1e-1
  step_size: float = 1e-2
  sigma_p: float = 0.25
  remat: str | bool = "step"

  def __post_init__(self):
    problems = []
    try:
      object.__setattr__(self, "remat", remat_lib.normalize(self.remat))
    except ConfigError as e:
      problems.append(str(e))
    if not self.sigma_n >= 0:
      problems.append(f"sigma_n={self.sigma_n} (expected >= 0)")
    if self.noise not in common.NOISE_KINDS:
      problems.append(f"noise={self.noise!r} (expected one of {common.NOISE_KINDS})")
    if self.method not in STEP_RULES:
      problems.append(f"method={self.method!r} (expected one of {tuple(STEP_RULES)})")
    if self.max_iter < 1:
      problems.append(f"max_iter={self.max_iter} (expected >= 1)")
    if not self.lam > 0:
      problems.append(f"lam={self.lam} (expected > 0)")
    if not self.delta > 0:
      problems.append(f"delta={self.delta} (expected > 0)")
    if not 0 < self.alpha_min <= self.alpha_max:
      problems.append(f"alpha_min={self.alpha_min}, alpha_max={self.alpha_max} "
                      "(expected 0 < alpha_min <= alpha_max)")
    if not self.step_size > 0 or not self.sigma_p > 0:
      problems.append(f"step_size={self.step_size}, sigma_p={self.sigma_p} (expected > 0)")
    if problems:
      raise ConfigError("bad purification settings: " + "; ".join(problems))

  def network_evaluations(self) -> int:
    """Network evaluations per restart: 2 per step for "adp" (the field and its probe)."""
    return self.max_iter * (2 if self.method == "adp" else 1)


def adp_step_size(field, x: jax.Array, g: jax.Array, s: Settings) -> jax.Array:
  """ADP's curvature step, [B]: clip(lam delta / (1 - z), alpha_min, alpha_max) per example,
  z = <g, field(x + delta g)> / <g, g>; field(x) -> [B, H, W, C]."""
  z = common.per_example_dot(g, field(x + s.delta * g)) / jnp.maximum(
      common.per_example_dot(g, g), 1e-30)
  curvature = 1.0 - z
  flat = curvature == 0  # divide by a safe value there, so the gradient is 0, not 0 * inf
  alpha = s.lam * s.delta / jnp.where(flat, 1.0, curvature)
  # 1 - z <= 0 (no curvature bound) gives alpha <= 0 or inf: both clip to a bound.
  alpha = jnp.where(flat | ~jnp.isfinite(alpha), s.alpha_max, alpha)
  return jnp.clip(alpha, s.alpha_min, s.alpha_max)


def _bshape(x):
  return (-1,) + (1,) * (x.ndim - 1)


def _adp_rule(field, x_t, g, active, t, step_keys, s):
  alpha = adp_step_size(field, x_t, g, s)
  active = active & (alpha > s.tau)
  alpha = jnp.where(active, alpha, 0.0)
  return x_t + alpha.reshape(_bshape(x_t)) * g, alpha, active


def _gd_rule(field, x_t, g, active, t, step_keys, s):
  alpha = jnp.full(x_t.shape[:1], s.step_size, x_t.dtype)
  return x_t + alpha.reshape(_bshape(x_t)) * g, alpha, active


def _langevin_rule(field, x_t, g, active, t, step_keys, s):
  alpha = jnp.full(x_t.shape[:1], s.step_size, x_t.dtype)
  n = common.normal_like(common.fold(step_keys, t), x_t)
  a = alpha.reshape(_bshape(x_t))
  return x_t + a * g / s.sigma_p + jnp.sqrt(2 * a) * n, alpha, active


#: step(field, x_t, g, active [B], t, step_keys [B], settings) -> (x_next before clipping,
#: alpha [B] the step taken, active [B]).
STEP_RULES = {"adp": _adp_rule, "gd": _gd_rule, "langevin": _langevin_rule}


def run_steps(score_fn, params, x0: jax.Array, step_keys: jax.Array, s: Settings):
  """s.max_iter steps of s.method from x0 [B, H, W, C] in [0, 1] (the field called at level
  s.sigma_n); step_keys [B] (langevin's noise). Returns (x_T [B, H, W, C] in [0, 1], alphas
  [T, B], actives [T, B], iterates [T, B, H, W, C]). The steps are one `lax.scan`; with
  the body rematerialised under the policy s.remat (`remat_lib.wrap`)."""
  level = jnp.full(x0.shape[:1], s.sigma_n, x0.dtype)
  field = lambda y: score_fn(params, y, level)  # noqa: E731
  rule = STEP_RULES[s.method]

  def step(carry, t):
    x_t, active = carry
    x_next, alpha, active = rule(field, x_t, field(x_t), active, t, step_keys, s)
    x_next = jnp.clip(x_next, 0.0, 1.0)
    return (x_next, active), (alpha, active, x_next)

  step = remat_lib.wrap(step, s.remat)
  init = (x0, jnp.ones(x0.shape[:1], bool))
  (x_final, _), (alphas, actives, iterates) = lax.scan(step, init, jnp.arange(s.max_iter))
  return x_final, alphas, actives, iterates


def purify_chain(score_fn, params, x: jax.Array, keys: jax.Array, s: Settings):
  """One restart for a batch: x [B, H, W, C] in [0, 1], keys [B].

  Returns (x_T [B, H, W, C] in [0, 1], trace) with the common trace (`common.make_trace`):
  iterates [T + 1, B, ...], step_scalars {"alpha": [T, B] step taken (0 once stopped)},
  step_mask [T, B] ("active": the example took step t). The steps are `run_steps`.
  """
  noise_keys = jax.vmap(lambda k: jax.random.split(k))(keys)  # [B, 2]
  x0 = common.randomize(x, noise_keys[:, 0], s.sigma_n, s.noise)
  x_final, alphas, actives, iterates = run_steps(score_fn, params, x0, noise_keys[:, 1], s)
  trace = common.make_trace(jnp.concatenate([x0[None], iterates], axis=0),
                            {"alpha": alphas}, actives)
  return x_final, trace


def denoise(score_fn, params, x_noisy: jax.Array, sigma: float, keys: jax.Array, s: Settings,
            steps: int = 0) -> jax.Array:
  """Denoising of x_noisy = x + sigma n (pixels, not clipped; [B, H, W, C]) for a
  randomized-smoothing classifier (DESIGN §6): the Tweedie step x_noisy + sigma h(x_noisy),
  the posterior mean E[x | x_noisy] when h = sigma grad log p_sigma (the NCSNv2 field at a
  level of its training schedule), clipped to [0, 1]; with steps = k > 0, then k steps of ADP's
  s.method from there (`run_steps`, the field at level sigma; langevin noise from keys [B]).
  Returns [B, H, W, C] in [0, 1]."""
  level = jnp.full(x_noisy.shape[:1], sigma, x_noisy.dtype)
  x0 = jnp.clip(x_noisy + sigma * score_fn(params, x_noisy, level), 0.0, 1.0)
  if not steps:
    return x0
  run = dataclasses.replace(s, max_iter=steps, sigma_n=sigma)
  return run_steps(score_fn, params, x0, keys, run)[0]


def purify(score_fn, params, x: jax.Array, keys: jax.Array, settings: Settings):
  """Purifies x [B, H, W, C] in [0, 1] once per restart key.

  keys: [R, B] (restart r of example b uses keys[r, b]; see `common.restart_keys`). Returns
  (purified [R, B, H, W, C] in [0, 1], trace with a leading R axis: iterates
  [R, T + 1, B, H, W, C], step_scalars {"alpha": [R, T, B]}, step_mask [R, T, B]).
  Restarts are a `vmap`; not jitted (jit the caller).
  """
  return jax.vmap(lambda k: purify_chain(score_fn, params, x, k, settings))(keys)
