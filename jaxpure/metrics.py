"""Metrics over sharded test batches: classifier accuracy, denoising PSNR.

Batches come from `data.eval_batches`: {"image": [B, H, W, C] in [0, 1], "label": [B],
"mask": [B] bool} with padded examples masked out.
"""

import jax
import jax.numpy as jnp

from jaxpure import sampling


def psnr_db(x: jax.Array, reference: jax.Array) -> jax.Array:
  """Per-example PSNR in dB of x against reference, both [B, H, W, C] with peak 1."""
  mse = jnp.mean(jnp.square(x - reference), axis=(1, 2, 3))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-20))


def classifier_accuracy(logits_fn, variables, batches) -> float:
  """Top-1 accuracy of `logits_fn(variables, x) -> [B, K]` over masked batches."""

  @jax.jit
  def correct(variables, batch):
    pred = jnp.argmax(logits_fn(variables, batch["image"]), axis=-1)
    return jnp.sum((pred == batch["label"]) & batch["mask"]), jnp.sum(batch["mask"])

  hits = total = 0
  for batch in batches:
    c, n = correct(variables, batch)
    hits, total = hits + int(c), total + int(n)
  return hits / max(total, 1)


def denoising_psnr(h, params, batches, key: jax.Array, sigma: float) -> dict[str, float]:
  """Mean PSNR of x~ = x + sigma z and of its Tweedie denoising, and their difference (dB).

  Noise is drawn per batch from fold_in(key, batch index).
  """

  @jax.jit
  def sums(params, batch, key):
    x = batch["image"]
    noisy = x + sigma * jax.random.normal(key, x.shape)
    denoised = sampling.tweedie_denoise(h, params, noisy, sigma)
    m = batch["mask"]
    return (jnp.sum(jnp.where(m, psnr_db(noisy, x), 0.0)),
            jnp.sum(jnp.where(m, psnr_db(denoised, x), 0.0)), jnp.sum(m))

  noisy_sum = den_sum = count = 0.0
  for i, batch in enumerate(batches):
    a, b, n = sums(params, batch, jax.random.fold_in(key, i))
    noisy_sum, den_sum, count = noisy_sum + float(a), den_sum + float(b), count + int(n)
  count = max(count, 1)
  noisy, denoised = noisy_sum / count, den_sum / count
  return {"sigma": sigma, "noisy_psnr_db": noisy, "denoised_psnr_db": denoised,
          "denoise_psnr_gain_db": denoised - noisy}
