"""Diffusion purification (DiffPure, Nie et al. 2022) on the VP-SDE of Score SDE, docs/design.md#1-the-method.

For x in [0, 1]: map to 2x - 1; diffuse to t* with the VP marginal,
x_t* = sqrt(abar(t*)) x + sqrt(1 - abar(t*)) n; run the reverse process from t* to 0 in N steps
of dt = t* / N with one of three samplers on the same `lax.scan`:
- "sde": Euler-Maruyama on the reverse SDE (DiffPure: t* 0.1, dt 1e-3, N 100),
  x <- x + [1/2 beta(t) x + beta(t) s(x, t)] dt + sqrt(beta(t) dt) z;
- "ddpm": ancestral sampling of the discretised chain, with alpha_i = abar(t) / abar(t - dt),
  x <- (x - (1 - alpha_i) / sqrt(1 - abar(t)) eps) / sqrt(alpha_i) + sigma_i z,
  sigma_i^2 = (1 - alpha_i)(1 - abar(t - dt)) / (1 - abar(t)) (0 at the last step);
- "ddim": the deterministic DDIM step (eta 0) between the same times;
then map back with (x + 1) / 2 and clip to [0, 1]. s(x, t) = -eps_hat(x, t) / std(t) from the
time-conditioned network (DDPM++). Every step's noise is drawn from the example's own key, so
examples never interact; under jax.grad the steps are rematerialised by the policy
`settings.remat` ("step", the default: each step `jax.checkpoint`ed, memory flat in N).

The family's "denoise" mode (`denoise`) is the one-shot diffusion denoiser of a smoothed
classifier (Carlini et al. 2023; `jaxpure.smoothing`).
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxpure.errors import ConfigError
from jaxpure.purifiers import common
from jaxpure.purifiers import remat as remat_lib
from jaxpure.sde import VPSDE

NAME = "diffpure"
TIME_INPUT = "vp_time"
#: The Settings field holding the number of steps (surrogate-process attacks shorten it).
STEPS_FIELD = "num_steps"
SAMPLERS = ("sde", "ddpm", "ddim")


@dataclasses.dataclass(frozen=True)
class Settings:
  """t_star: diffusion time t* in (0, 1]; num_steps: reverse steps N (dt = t* / N); sampler:
  "sde", "ddpm" or "ddim"; beta_min, beta_max: the VP-SDE the network was trained on; remat:
  the gradient's rematerialisation policy of the reverse steps (`jaxpure.purifiers.remat`;
  True is "step", False "none")."""
  t_star: float = 0.1
  num_steps: int = 100
  sampler: str = "sde"
  beta_min: float = 0.1
  beta_max: float = 20.0
  remat: str | bool = "step"

  def __post_init__(self):
    problems = []
    try:
      object.__setattr__(self, "remat", remat_lib.normalize(self.remat))
    except ConfigError as e:
      problems.append(str(e))
    if not 0 < self.t_star <= 1:
      problems.append(f"t_star={self.t_star} (expected in (0, 1])")
    if self.num_steps < 1:
      problems.append(f"num_steps={self.num_steps} (expected >= 1)")
    if self.sampler not in SAMPLERS:
      problems.append(f"sampler={self.sampler!r} (expected one of {SAMPLERS})")
    if not 0 < self.beta_min < self.beta_max:
      problems.append(f"beta_min={self.beta_min}, beta_max={self.beta_max} "
                      "(expected 0 < beta_min < beta_max)")
    if problems:
      raise ConfigError("bad diffpure settings: " + "; ".join(problems))

  @property
  def sde(self) -> VPSDE:
    return VPSDE(self.beta_min, self.beta_max)

  def network_evaluations(self) -> int:
    """Network evaluations per restart: one per reverse step."""
    return self.num_steps


def _bcast(v, x):
  return jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def _sde_step(sde, x, eps_hat, t, dt, z):
  beta = _bcast(sde.beta(t), x)
  score = sde.score_from_eps(eps_hat, t)
  return x + (0.5 * beta * x + beta * score) * dt + jnp.sqrt(beta * dt) * z


def _ddpm_step(sde, x, eps_hat, t, dt, z):
  s = jnp.maximum(t - dt, 0.0)
  abar_t, abar_s = _bcast(sde.alpha_bar(t), x), _bcast(sde.alpha_bar(s), x)
  alpha = abar_t / abar_s
  mean = (x - (1.0 - alpha) / jnp.sqrt(1.0 - abar_t) * eps_hat) / jnp.sqrt(alpha)
  var = (1.0 - alpha) * (1.0 - abar_s) / (1.0 - abar_t)
  return mean + jnp.sqrt(jnp.maximum(var, 0.0)) * z


def _ddim_step(sde, x, eps_hat, t, dt, z):
  del z
  s = jnp.maximum(t - dt, 0.0)
  abar_t, abar_s = _bcast(sde.alpha_bar(t), x), _bcast(sde.alpha_bar(s), x)
  x0 = (x - jnp.sqrt(1.0 - abar_t) * eps_hat) / jnp.sqrt(abar_t)
  return jnp.sqrt(abar_s) * x0 + jnp.sqrt(1.0 - abar_s) * eps_hat


#: step(sde, x_t, eps_hat, t [B], dt, z) -> x at t - dt.
STEPS = {"sde": _sde_step, "ddpm": _ddpm_step, "ddim": _ddim_step}


def to_pixels(x: jax.Array) -> jax.Array:
  """[-1, 1] network space -> [0, 1] pixels, clipped."""
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def reverse(score_fn, params, x_t: jax.Array, step_keys: jax.Array, s: Settings):
  """The reverse process from t* = s.t_star to 0 in s.num_steps steps of s.sampler, in network
  space: x_t [B, H, W, C] (about [-1, 1]), step_keys [B] (step i draws from fold_in(key, i)).

  Returns (x_0 [B, H, W, C] in network space, iterates [N, B, ...] in [0, 1] pixels after each
  step, times [N, B] the time each step starts from)."""
  sde, dt = s.sde, s.t_star / s.num_steps
  rule = STEPS[s.sampler]

  def step(x_t, i):
    t = jnp.full(x_t.shape[:1], s.t_star - i * dt, x_t.dtype)
    eps_hat = score_fn(params, x_t, t)
    z = common.normal_like(common.fold(step_keys, i), x_t)
    x_next = rule(sde, x_t, eps_hat, t, dt, z)
    return x_next, (to_pixels(x_next), t)

  step = remat_lib.wrap(step, s.remat)
  x_0, (iterates, times) = lax.scan(step, x_t, jnp.arange(s.num_steps))
  return x_0, iterates, times


def purify_chain(score_fn, params, x: jax.Array, keys: jax.Array, s: Settings):
  """One restart for a batch: x [B, H, W, C] in [0, 1], keys [B].

  Returns (purified [B, H, W, C] in [0, 1], trace): iterates [N + 1, B, ...] in [0, 1] (0: the
  input diffused to t*, i.e. the noise-only ablation), step_scalars {"t": [N, B] the time each
  step starts from}.
  """
  k_diffuse, k_steps = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  x_t = s.sde.diffuse(2.0 * x - 1.0, jnp.full(x.shape[:1], s.t_star, x.dtype),
                      common.normal_like(k_diffuse, x))
  x_0, iterates, times = reverse(score_fn, params, x_t, k_steps, s)
  trace = common.make_trace(jnp.concatenate([to_pixels(x_t)[None], iterates], axis=0),
                            {"t": times})
  return to_pixels(x_0), trace


def denoise_time(sigma: float, s: Settings = Settings()) -> float:
  """t* for pixel noise sigma (> 0): pixels x in [0, 1] are u = 2x - 1 in network space, so
  the noise is 2 sigma there and t* solves sqrt((1 - abar(t*)) / abar(t*)) = 2 sigma exactly on
  the continuous VP schedule of s (Carlini et al. 2023, DESIGN §6)."""
  return s.sde.time_for_noise_ratio(2.0 * sigma)


def denoise(score_fn, params, x_noisy: jax.Array, sigma: float, keys: jax.Array, s: Settings,
            steps: int = 0) -> jax.Array:
  """Diffusion denoising of x_noisy = x + sigma n (pixels, not clipped; [B, H, W, C]) for a
  randomized-smoothing classifier (DESIGN §6). u_t = sqrt(abar(t*)) (2 x_noisy - 1) has exactly
  the VP marginal at t* = `denoise_time(sigma, s)`; then
  - steps = 0: the one-shot estimate u0 = (u_t - sqrt(1 - abar) eps_hat(u_t, t*)) / sqrt(abar)
    (one network evaluation);
  - steps = k > 0: k reverse steps of s.sampler from t* to 0 instead (`reverse`; step noise, if
    any, from keys [B]).
  Returns the denoised images [B, H, W, C] in [0, 1] ((u0 + 1) / 2, clipped)."""
  t_star = denoise_time(sigma, s)
  mean, std = s.sde.marginal(jnp.asarray(t_star, x_noisy.dtype))
  u_t = mean * (2.0 * x_noisy - 1.0)
  if steps:
    run = dataclasses.replace(s, t_star=t_star, num_steps=steps)
    return to_pixels(reverse(score_fn, params, u_t, keys, run)[0])
  eps_hat = score_fn(params, u_t, jnp.full(x_noisy.shape[:1], t_star, x_noisy.dtype))
  return to_pixels((u_t - std * eps_hat) / mean)


def purify(score_fn, params, x: jax.Array, keys: jax.Array, settings: Settings):
  """Purifies x [B, H, W, C] in [0, 1] once per restart key; keys [R, B]. Returns (purified
  [R, B, H, W, C] in [0, 1], trace with a leading R axis)."""
  return jax.vmap(lambda k: purify_chain(score_fn, params, x, k, settings))(keys)
