"""The VP-SDE of Score SDE (Song et al. 2021), docs/design.md#1-the-method: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,
beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1], in the network's space x in [-1, 1].

Marginal: x_t = sqrt(abar(t)) x_0 + sqrt(1 - abar(t)) eps, abar(t) = exp(-1/2 (beta_max -
beta_min) t^2 - beta_min t). A time-conditioned eps-network gives the score
s(x, t) = -eps_hat(x, t) / std(t). Pure functions of t (scalars or arrays).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class VPSDE:
  """beta_min, beta_max: the linear beta schedule (DDPM++ / DiffPure: 0.1, 20)."""
  beta_min: float = 0.1
  beta_max: float = 20.0

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t):
    """log sqrt(abar(t)) = -1/4 (beta_max - beta_min) t^2 - 1/2 beta_min t."""
    return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def alpha_bar(self, t):
    return jnp.exp(2.0 * self.log_mean_coeff(t))

  def marginal(self, t):
    """(mean coefficient sqrt(abar(t)), std sqrt(1 - abar(t))) of x_t given x_0."""
    return jnp.exp(self.log_mean_coeff(t)), jnp.sqrt(-jnp.expm1(2.0 * self.log_mean_coeff(t)))

  def diffuse(self, x0: jax.Array, t, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(abar(t)) x0 + sqrt(1 - abar(t)) noise; t scalar or [B]."""
    mean, std = self.marginal(jnp.asarray(t, x0.dtype))
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return jnp.reshape(mean, shape) * x0 + jnp.reshape(std, shape) * noise

  def score_from_eps(self, eps_hat: jax.Array, t) -> jax.Array:
    """s(x, t) = -eps_hat / std(t); t scalar or [B]."""
    _, std = self.marginal(jnp.asarray(t, eps_hat.dtype))
    return -eps_hat / jnp.reshape(std, (-1,) + (1,) * (eps_hat.ndim - 1))

  def time_for_noise_ratio(self, ratio: float) -> float:
    """The time t with sqrt((1 - abar(t)) / abar(t)) = ratio (> 0), in closed form: abar(t) =
    1 / (1 + ratio^2), i.e. 1/2 (beta_max - beta_min) t^2 + beta_min t = log(1 + ratio^2), the
    positive root of that quadratic. A Python float (the exact continuous-schedule time, not
    the first discrete timestep reaching it). Raises ValueError when t > 1 (more noise than
    the schedule reaches) or ratio <= 0."""
    if not ratio > 0:
      raise ValueError(f"noise ratio {ratio} must be > 0")
    a, b, c = 0.5 * (self.beta_max - self.beta_min), self.beta_min, math.log1p(ratio ** 2)
    t = 2 * c / (b + math.sqrt(b * b + 4 * a * c))  # the positive root, without cancellation
    if t > 1:
      raise ValueError(f"noise ratio {ratio} needs t = {t:.4g} > 1 on the VP schedule "
                       f"beta {self.beta_min} -> {self.beta_max}")
    return t
