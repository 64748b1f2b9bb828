"""Losses as pure functions of (params, batch, key).

`h(params, x, t)` is the network field (`models.score_function`); for NCSNv2 (docs/design.md#1-the-method) it is
unconditional (t ignored; it is given the example's sigma) and the score at noise level sigma
is s(x, sigma) = h(x) / sigma. Images x are [B, H, W, C] float32 in [0, 1].
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

HFn = Callable[[object, jax.Array, jax.Array], jax.Array]


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
  residual = h(params, x_noisy, sigma) + z
  return 0.5 * jnp.mean(jnp.sum(jnp.square(residual), axis=(1, 2, 3)))


def dsm_loss(h: HFn, params, x: jax.Array, key: jax.Array, sigmas: jax.Array) -> jax.Array:
  """Annealed DSM loss with sigma drawn per example from `sigmas` [L]; x in [0, 1]."""
  levels, z = sample_dsm_noise(key, x.shape, sigmas.shape[0], x.dtype)
  return dsm_loss_given_noise(h, params, x, sigmas[levels].astype(x.dtype), z)


def mean_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy; logits [B, K] float, labels [B] int in [0, K)."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def vp_dsm_loss_given_noise(eps_fn, params, x: jax.Array, t: jax.Array, z: jax.Array,
                            sde) -> jax.Array:
  """Score SDE's continuous-time VP DSM loss (reduce_mean, no likelihood weighting) for fixed
  noise: mean_batch mean_dims (s(x_t, t) std(t) + z)^2 with s = -eps_hat / std, i.e.
  mean (z - eps_hat(x_t, t))^2, where x_t = sqrt(abar(t)) x + std(t) z.

  eps_fn(params, x, t) -> [B, H, W, C]; x, z: [B, H, W, C] in the network's space [-1, 1];
  t: [B]; sde: `jaxpure.sde.VPSDE`. Returns a scalar.
  """
  x_t = sde.diffuse(x, t, z)
  residual = sde.score_from_eps(eps_fn(params, x_t, t), t) * sde.marginal(t)[1].reshape(
      (-1,) + (1,) * (x.ndim - 1)) + z
  return jnp.mean(jnp.mean(jnp.square(residual).reshape(x.shape[0], -1), axis=-1))


def vp_dsm_loss(eps_fn, params, x01: jax.Array, key: jax.Array, sde,
                t_eps: float = 1e-5) -> jax.Array:
  """The VP DSM loss on images x01 [B, H, W, C] in [0, 1] (mapped to 2x - 1), with t ~ U(t_eps,
  1) and z ~ N(0, I) drawn per example from key."""
  k_t, k_z = jax.random.split(key)
  t = jax.random.uniform(k_t, (x01.shape[0],), x01.dtype) * (1.0 - t_eps) + t_eps
  z = jax.random.normal(k_z, x01.shape, x01.dtype)
  return vp_dsm_loss_given_noise(eps_fn, params, 2.0 * x01 - 1.0, t, z, sde)
