"""What every purifier family shares: per-example keys, the restart keys, the randomising noise,
and the trace's common part.

Every example has its own key, folded from its global index, so a batch purifies exactly as
its examples would one by one, however a data set is cut into batches or devices.
"""

import math

import jax
import jax.numpy as jnp

NOISE_KINDS = ("gaussian", "binary")


def example_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  """One key per example, [B], from the example's global index [B]."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def per_example_keys(keys: jax.Array, batch: int) -> jax.Array:
  """A single key is split into `batch` keys; a [B] array of keys is returned as is."""
  return jax.random.split(keys, batch) if keys.ndim == 0 else keys


def restart_keys(keys: jax.Array, n: int) -> jax.Array:
  """[n, B] keys, one per restart (or EOT sample) and example, from per-example keys [B]."""
  return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, n))(keys), 0, 1)


def fold(keys: jax.Array, data) -> jax.Array:
  """fold_in every per-example key [B] with the same data (a step number, a tag)."""
  return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def normal_like(keys: jax.Array, x: jax.Array) -> jax.Array:
  """Standard normal noise of x's shape [B, ...], example b drawn from keys[b]."""
  return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)


def randomize(x: jax.Array, keys: jax.Array, sigma_n: float, noise: str = "gaussian"):
  """x0 = clip(x + noise, 0, 1); x [B, H, W, C] in [0, 1], keys [B].

  noise: "gaussian" (sigma_n n, n ~ N(0, I)) or "binary" (+-sigma_n sqrt(2/pi), the same
  mean absolute value).
  """
  if noise == "gaussian":
    delta = sigma_n * normal_like(keys, x)
  elif noise == "binary":
    signs = jax.vmap(lambda k: jax.random.rademacher(k, x.shape[1:], x.dtype))(keys)
    delta = sigma_n * math.sqrt(2 / math.pi) * signs
  else:
    raise ValueError(f"noise={noise!r}; expected one of {NOISE_KINDS}")
  return jnp.clip(x + delta, 0.0, 1.0)


def per_example_dot(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-example inner product of [B, ...] arrays -> [B]."""
  return jnp.sum(a * b, axis=tuple(range(1, a.ndim)))


def make_trace(iterates: jax.Array, step_scalars: dict | None = None, step_mask=None) -> dict:
  """The common part of a purifier's trace (one restart; `purify` adds a leading R axis):

  iterates: [T + 1, B, H, W, C] in [0, 1], iterate 0 being the randomised input (so evaluation
    can score every step, step 0 = noise only);
  step_scalars: {name: [T, B] float}, per-step numbers the family defines (ADP: "alpha");
  step_mask: [T, B] bool, which examples took step t (all True for fixed-length families).
  """
  t, b = iterates.shape[0] - 1, iterates.shape[1]
  return {"iterates": iterates, "step_scalars": dict(step_scalars or {}),
          "step_mask": jnp.ones((t, b), bool) if step_mask is None else step_mask}
