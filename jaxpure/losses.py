"""Losses as pure functions of (params, batch, key).

`h(params, x)` is the unconditional network of DESIGN §1: the score at noise level sigma is
s(x, sigma) = h(x) / sigma. Images x are [B, H, W, C] float32 in [0, 1].
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

HFn = Callable[[object, jax.Array], jax.Array]


def noise_levels(sigma_max: float, sigma_min: float, num_levels: int) -> jax.Array:
  """Geometric noise schedule, [L] float32, from sigma_max down to sigma_min (pixel units)."""
  if not 0 < sigma_min <= sigma_max or num_levels < 1:
    raise ValueError(f"need 0 < sigma_min <= sigma_max and num_levels >= 1; got "
                     f"sigma_max={sigma_max}, sigma_min={sigma_min}, num_levels={num_levels}")
  return jnp.geomspace(sigma_max, sigma_min, num_levels, dtype=jnp.float32)


def sample_dsm_noise(key: jax.Array, shape: tuple[int, ...], num_levels: int, dtype=jnp.float32):
  """Draws the DSM noise for a batch of `shape` [B, H, W, C].

  Returns (level index [B] int32, uniform over the L levels; z [B, H, W, C] ~ N(0, I)).
  """
  k_level, k_z = jax.random.split(key)
  levels = jax.random.randint(k_level, (shape[0],), 0, num_levels)
  return levels, jax.random.normal(k_z, shape, dtype)


def dsm_loss_given_noise(h: HFn, params, x: jax.Array, sigma: jax.Array, z: jax.Array) -> jax.Array:
  """Annealed DSM loss (power 2) for fixed noise: mean_batch 1/2 ||h(x + sigma z) + z||^2.

  x, z: [B, H, W, C]; sigma: [B] noise level of each example. Equals
  1/2 sigma^2 ||s(x~, sigma) + (x~ - x) / sigma^2||^2 with s = h / sigma. Returns a scalar.
  """
  x_noisy = x + sigma[:, None, None, None] * z
  residual = h(params, x_noisy) + z
  return 0.5 * jnp.mean(jnp.sum(jnp.square(residual), axis=(1, 2, 3)))


def dsm_loss(h: HFn, params, x: jax.Array, key: jax.Array, sigmas: jax.Array) -> jax.Array:
  """Annealed DSM loss with sigma drawn per example from `sigmas` [L]; x in [0, 1]."""
  levels, z = sample_dsm_noise(key, x.shape, sigmas.shape[0], x.dtype)
  return dsm_loss_given_noise(h, params, x, sigmas[levels].astype(x.dtype), z)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy; logits [B, K] float, labels [B] int in [0, K)."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
