"""Network types: what a score network's time input and output mean, in one object per type
(as Score SDE's SDE owns the conversion of a network's output to a score).

A score network module names its type by its `time_input` class attribute; `time_input(m)`
reads it and `of(m)` or `for_config(config)` give the type object, which alone knows:
- the network's time input (`apply`: how t of `models.ScoreFn` enters the module; `init`);
- the score from the network's output (`score`);
- its DSM training loss (`dsm_loss`);
- its one-step denoiser of pixel noise sigma (`denoise`).
Everything else asks this module, never "which network is this?".

Types (TYPES, keyed by their time input):
- `Unconditional` ("none", NCSNv2): h(x) with x in about [0, 1], t ignored; the score at noise
  level sigma is h / sigma (docs/design.md#1-the-method).
- `VPTime` ("vp_time", DDPM++): eps_hat(x, t) with x in [-1, 1] and t in (0, 1] the VP-SDE
  time, given to the network as labels 999 t; the score is -eps_hat / std(t) (`jaxpure.sde`).
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxpure import losses, sampling
from jaxpure.sde import VPSDE


@dataclasses.dataclass(frozen=True)
class Unconditional:
  """An unconditional field h(x) (NCSNv2's trick: one network for all noise levels).
  sigma_max, sigma_min, num_sigmas: the geometric DSM noise schedule it is trained on."""
  sigma_max: float = 1.0
  sigma_min: float = 0.01
  num_sigmas: int = 10
  TIME_INPUT: ClassVar[str] = "none"

  @classmethod
  def from_config(cls, config) -> "Unconditional":
    """The noise schedule of config.score."""
    s = config.score
    return cls(s.sigma_max, s.sigma_min, s.num_sigmas)

  def apply(self, module, variables, x: jax.Array, t: jax.Array, **kwargs) -> jax.Array:
    """The module's output on x [B, H, W, C]; t [B] is ignored."""
    del t
    return module.apply(variables, x, **kwargs)

  def init(self, module, key: jax.Array, x: jax.Array):
    return module.init(key, x)

  def score(self, h: jax.Array, sigma: jax.Array) -> jax.Array:
    """s(x, sigma) = h(x) / sigma; h [B, H, W, C], sigma [B]."""
    return h / jnp.reshape(sigma, (-1,) + (1,) * (h.ndim - 1))

  def noise_levels(self) -> jax.Array:
    """The DSM noise schedule [L], sigma_max down to sigma_min (`losses.noise_levels`)."""
    return losses.noise_levels(self.sigma_max, self.sigma_min, self.num_sigmas)

  def dsm_loss(self, module, params, model_state, x: jax.Array, key: jax.Array) -> jax.Array:
    """The annealed DSM loss (`losses.dsm_loss`) of images x [B, H, W, C] in [0, 1], sigma
    drawn per example from `noise_levels`."""
    del model_state
    from jaxpure import models
    h = models.score_function(module)
    return losses.dsm_loss(lambda p, x, t: h({"params": p}, x, t), params, x, key,
                           self.noise_levels())

  def denoise(self, field, params, x_noisy: jax.Array, sigma: float) -> jax.Array:
    """The one-step (Tweedie) denoising x~ + sigma h(x~) of x~ = x + sigma z (pixels, [B, H,
    W, C], not clipped); field: `models.score_function` of the module."""
    return sampling.tweedie_denoise(field, params, x_noisy, sigma)


@dataclasses.dataclass(frozen=True)
class VPTime:
  """A time-conditioned eps-network on the VP-SDE `sde`; t_eps: the smallest time of its DSM
  loss."""
  sde: VPSDE = VPSDE()
  t_eps: float = 1e-5
  TIME_INPUT: ClassVar[str] = "vp_time"

  @classmethod
  def from_config(cls, config) -> "VPTime":
    """The VP-SDE of config.sde (the one VP-SDE setting) and its t_eps."""
    return cls(VPSDE(config.sde.beta_min, config.sde.beta_max), config.sde.t_eps)

  @staticmethod
  def labels(t: jax.Array) -> jax.Array:
    """The network's time input for VP times t: 999 t (score_sde's DDPM++ convention)."""
    return 999.0 * t

  def apply(self, module, variables, x: jax.Array, t: jax.Array, **kwargs) -> jax.Array:
    """eps_hat(x, t) [B, H, W, C] of x [B, H, W, C] in [-1, 1] at VP times t [B]."""
    return module.apply(variables, x, self.labels(t), **kwargs)

  def init(self, module, key: jax.Array, x: jax.Array):
    return module.init(key, x, jnp.ones(x.shape[:1], x.dtype))

  def score(self, eps_hat: jax.Array, t) -> jax.Array:
    """s(x, t) = -eps_hat / std(t)."""
    return self.sde.score_from_eps(eps_hat, t)

  def dsm_loss(self, module, params, model_state, x: jax.Array, key: jax.Array) -> jax.Array:
    """Score SDE's continuous VP DSM loss (`losses.vp_dsm_loss`) of images x [B, H, W, C] in
    [0, 1], with the network in training mode (dropout from key)."""
    k_loss, k_drop = jax.random.split(key)
    eps_fn = lambda p, x, t: self.apply(module, {"params": p, **model_state}, x, t,  # noqa
                                        train=True, rngs={"dropout": k_drop})
    return losses.vp_dsm_loss(eps_fn, params, x, k_loss, self.sde, self.t_eps)

  def time_for_pixel_sigma(self, sigma: float) -> float:
    """The VP time t at which x_t / sqrt(abar(t)), read in pixels, is x + sigma z: std(t) /
    mean(t) = 2 sigma (the pixel range [0, 1] is half the VP space's [-1, 1]), in closed form
    (`sde.VPSDE.time_for_noise_ratio`)."""
    return self.sde.time_for_noise_ratio(2.0 * sigma)

  def pixel_field(self, eps_fn, t: float, params, x_noisy: jax.Array) -> jax.Array:
    """h with x~ + sigma h(x~) = the eps-network's one-step denoising of x~ = x + sigma z
    (pixels), seen as x_t = mean(t) (2 x~ - 1) in the VP space at t = time_for_pixel_sigma."""
    mean, _ = self.sde.marginal(t)
    ts = jnp.full(x_noisy.shape[:1], t, x_noisy.dtype)
    # x0 = x_t / mean - (std / mean) eps in [-1, 1], i.e. x~ - sigma eps in pixels
    return -eps_fn(params, mean * (2 * x_noisy - 1), ts)

  def denoise(self, field, params, x_noisy: jax.Array, sigma: float) -> jax.Array:
    """The one-step denoising x~ - sigma eps_hat of x~ = x + sigma z (pixels, [B, H, W, C], not
    clipped), at the VP time whose noise is sigma; field: `models.score_function`."""
    t = self.time_for_pixel_sigma(sigma)
    return sampling.tweedie_denoise(lambda p, x, level: self.pixel_field(field, t, p, x),
                                    params, x_noisy, sigma)


#: The network types by their time input.
TYPES = {t.TIME_INPUT: t for t in (Unconditional, VPTime)}


def time_input(module) -> str:
  """The time input a module (or module class) declares ("none" when it declares none)."""
  return getattr(module, "time_input", Unconditional.TIME_INPUT)


def _type(module):
  name = time_input(module)
  if name not in TYPES:
    what = module.__name__ if isinstance(module, type) else type(module).__name__
    raise ValueError(f"unknown time_input {name!r} on {what}; expected one of {sorted(TYPES)}")
  return TYPES[name]


def of(module, **settings):
  """The type object of a module (or module class), with its settings (`Unconditional`'s
  noise schedule, `VPTime`'s SDE) where given. Raises ValueError for an unknown time input."""
  return _type(module)(**settings)


def for_config(config, module):
  """The type object of the config's score network `module`, with its settings from the
  config (`from_config` of its type: config.score's noise schedule or config.sde)."""
  return _type(module).from_config(config)
