"""Accuracy and denoising loops over sharded test batches.

Batches come from `data.eval_batches`: {"image": [B, H, W, C] in [0, 1], "label": [B],
"mask": [B] bool} with padded examples masked out.
"""

import jax
import jax.numpy as jnp


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


def tweedie_denoise(h, params, x_noisy: jax.Array, sigma: float) -> jax.Array:
  """One-step (Tweedie) denoising x~ + sigma^2 s(x~, sigma) = x~ + sigma h(x~); not clipped."""
  return x_noisy + sigma * h(params, x_noisy)


def denoising_psnr(h, params, batches, key: jax.Array, sigma: float) -> dict[str, float]:
  """Mean PSNR of x~ = x + sigma z and of its Tweedie denoising, and their difference (dB).

  Noise is drawn per batch from fold_in(key, batch index).
  """

  @jax.jit
  def sums(params, batch, key):
    x = batch["image"]
    noisy = x + sigma * jax.random.normal(key, x.shape)
    denoised = tweedie_denoise(h, params, noisy, sigma)
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


def defense_batch_stats(h, logits_fn, settings):
  """Builds `stats(score_params, clf_variables, batch, key)` for one evaluation batch.

  batch: {"image": [B, H, W, C] in [0, 1], "label": [B], "index": [B] global example
  indices (their keys are fold_in(key, index))}. Returns per-example correctness (bool,
  last axis B): "clean" (bare classifier), each ensemble read-out of the purified images,
  "single_restart", "by_step" [T + 1, B] (mean-softmax ensemble after each step; step 0 is
  the noise-only ablation), and the step sizes "alpha" and "active" masks [R, T, B].
  """
  from jaxpure import purify as purify_lib

  def stats(score_params, clf_variables, batch, key):
    x, y = batch["image"], batch["label"]
    keys = purify_lib.example_keys(key, batch["index"])
    _, trace = purify_lib.purify(h, score_params, x, keys, settings, return_trace=True)
    iterates = jnp.swapaxes(trace["iterates"], 0, 1)  # [T + 1, R, B, H, W, C]
    r, b = iterates.shape[1:3]
    logits = jax.lax.map(
        lambda xs: logits_fn(clf_variables, xs.reshape((r * b,) + xs.shape[2:])).reshape(r, b, -1),
        iterates)  # [T + 1, R, B, K]
    out = {"clean": jnp.argmax(logits_fn(clf_variables, x), -1) == y,
           "single_restart": jnp.argmax(logits[-1, 0], -1) == y,
           "by_step": jax.vmap(lambda l: purify_lib.ensemble(l)["mean_softmax"] == y)(logits),
           "alpha": trace["alpha"], "active": trace["active"]}
    for name, pred in purify_lib.ensemble(logits[-1]).items():
      out[name] = pred == y
    return out

  return stats
