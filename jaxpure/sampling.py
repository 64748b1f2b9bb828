"""Sampling from an NCSNv2-type field h(params, x, t) (score at sigma = h / sigma): the one-step
Tweedie denoiser and annealed Langevin dynamics, for looking at what a network learned."""

import jax
import jax.numpy as jnp
from jax import lax


def _levels(x: jax.Array, sigma) -> jax.Array:
  return jnp.full(x.shape[:1], sigma, x.dtype)


def tweedie_denoise(h, params, x_noisy: jax.Array, sigma: float) -> jax.Array:
  """One-step (Tweedie) denoising x~ + sigma^2 s(x~, sigma) = x~ + sigma h(x~, sigma); not
  clipped. x_noisy: [B, H, W, C]."""
  return x_noisy + sigma * h(params, x_noisy, _levels(x_noisy, sigma))


def annealed_langevin(h, params, key: jax.Array, shape: tuple[int, ...], sigmas: jax.Array,
                      n_steps_each: int, step_lr: float, denoise: bool = True) -> jax.Array:
  """Samples [N, H, W, C] in [0, 1] (clipped) by annealed Langevin dynamics.

  Starts from U[0, 1]; at level i takes `n_steps_each` steps
  x <- x + a_i s(x, sigma_i) + sqrt(2 a_i) z with a_i = step_lr sigma_i^2 / sigma_L^2 and
  s = h / sigma; ends with one denoising step x + sigma_L h(x) (Tweedie) when `denoise`.
  One `lax.scan` over levels x steps; jit the caller.
  """
  k_init, k_run = jax.random.split(key)
  x = jax.random.uniform(k_init, shape)
  level_sigmas = jnp.repeat(sigmas, n_steps_each)
  keys = jax.random.split(k_run, level_sigmas.shape[0])

  def step(x, inputs):
    sigma, k = inputs
    alpha = step_lr * (sigma / sigmas[-1]) ** 2
    x = x + alpha * h(params, x, _levels(x, sigma)) / sigma + jnp.sqrt(2 * alpha) * jax.random.normal(
        k, x.shape)
    return x, None

  x, _ = lax.scan(step, x, (level_sigmas, keys))
  if denoise:
    x = tweedie_denoise(h, params, x, sigmas[-1])
  return jnp.clip(x, 0.0, 1.0)
