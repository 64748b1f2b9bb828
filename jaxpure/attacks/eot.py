"""Gradient estimators of the attack loss: `estimator(params, keys, x, y) -> (loss [B], g)`.

g has x's shape [B, H, W, C] and is the direction the attack ascends. Each estimator draws
its purifications from the per-example keys it is given (the attack folds in the iteration).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxpure.attacks import losses as losses_lib
from jaxpure.defense import Defense
from jaxpure.purifiers import common


def classifier_gradient(defense: Defense, loss: str):
  """The bare classifier's loss gradient (no purifier): the preprocessor-blind attack."""
  loss_fn = losses_lib.resolve(loss)

  def estimator(params, keys, x, y):
    del keys
    per_example = lambda x: loss_fn(defense.classify(params, x), y)
    l, vjp = jax.vjp(per_example, x)
    return l, vjp(jnp.ones_like(l))[0]
  return estimator


def deviation(adv_iterates, clean_iterates):
  """DiffAttack-style deviation loss [B]: the mean over the purifier's intermediate iterates
  (steps 1..T-1 of iterates [T + 1, B, H, W, C]) of the mean squared distance between the
  attacked input's iterates and the clean input's, drawn with the same noise. Maximising it
  pushes the whole purification path away from the clean one, not only its end (Kang et al.,
  NeurIPS 2023, weight their steps; here every intermediate step counts alike)."""
  inner = slice(1, -1) if adv_iterates.shape[0] > 2 else slice(None)
  d = jnp.square(adv_iterates[inner] - jax.lax.stop_gradient(clean_iterates[inner]))
  return jnp.mean(d, axis=(0,) + tuple(range(2, d.ndim)))


def exact_eot_gradient(defense: Defense, loss: str | Callable, n_eot: int, chunk: int = 0,
                       deviation_weight: float = 0.0, x_clean=None):
  """Exact gradient, by jax.grad through the whole purifier (noise, every scan step, the
  adaptive step size and the stopping mask), of the loss averaged over n_eot purifications.

  chunk: 0 differentiates all n_eot purifications at once; a divisor of n_eot differentiates
  them `chunk` at a time in a `lax.scan` and averages (the same samples and value, the memory
  of `chunk` samples: Croce et al.'s EOT 200 on CIFAR-10).
  deviation_weight > 0 (needs x_clean [B, H, W, C], the unattacked input): the loss also
  counts that weight times `deviation` of each sample's iterates from x_clean's, purified with
  the same keys. loss: a name in `losses.LOSSES` or a function (logits [..., B, K], y [B])
  -> [..., B]."""
  loss_fn = losses_lib.resolve(loss)
  if chunk and n_eot % chunk:
    raise ValueError(f"eot_chunk={chunk} must divide n_eot={n_eot}")
  if deviation_weight and x_clean is None:
    raise ValueError("a deviation loss needs the clean input x_clean")

  def mean_loss(params, x, y, restart_keys):
    logits, trace = defense.logits_with_restart_keys(params, x, restart_keys)
    per_sample = loss_fn(logits, y)  # [n, B]
    if deviation_weight:
      clean = jax.lax.stop_gradient(defense.purify_with_restart_keys(
          params, x_clean, restart_keys)[1]["iterates"])
      per_sample = per_sample + deviation_weight * jax.vmap(deviation)(
          trace["iterates"], clean)
    return jnp.mean(per_sample, 0)

  def estimator(params, keys, x, y):
    keys = common.per_example_keys(keys, x.shape[0])
    rkeys = common.restart_keys(keys, n_eot)  # [n_eot, B]
    if not chunk or chunk == n_eot:
      l, vjp = jax.vjp(lambda x: mean_loss(params, x, y, rkeys), x)
      return l, vjp(jnp.ones_like(l))[0]

    def one(carry, ks):
      l, vjp = jax.vjp(lambda x: mean_loss(params, x, y, ks), x)
      return jax.tree.map(jnp.add, carry, (l, vjp(jnp.ones_like(l))[0])), None
    chunks = rkeys.reshape((n_eot // chunk, chunk) + rkeys.shape[1:])
    (l, g), _ = jax.lax.scan(one, (jnp.zeros(x.shape[:1], x.dtype), jnp.zeros_like(x)), chunks)
    return l / chunks.shape[0], g / chunks.shape[0]
  return estimator


def eot_loss(defense: Defense, loss: str | Callable, n: int):
  """Forward only: `fn(params, keys, x, y)` -> the loss [B] averaged over n purifications
  drawn from keys (no gradient; APGD's decision samples). loss: a name or a function, as in
  `exact_eot_gradient`."""
  loss_fn = losses_lib.resolve(loss)

  def fn(params, keys, x, y):
    logits = defense.logits(params, jax.lax.stop_gradient(x), keys, n)  # [n, B, K]
    return jnp.mean(loss_fn(logits, y), 0)
  return fn


def defense_runs(defense: Defense, loss: str | Callable, runs: int):
  """Forward only: `fn(params, keys, x, y)` -> (wrong [B] int32: of `runs` independent runs of
  the defense (each `defense.restarts` purifications drawn from keys, mean-softmax read-out),
  how many misclassify; the loss [B] of the runs' mean softmax, log-probabilities as logits).
  The in-loop attack's scoring (`inloop.pgd_inloop`)."""
  loss_fn = losses_lib.resolve(loss)

  def fn(params, keys, x, y):
    r = defense.restarts
    logits = defense.logits(params, jax.lax.stop_gradient(x), keys, runs * r)  # [N R, B, K]
    probs = jnp.mean(jax.nn.softmax(logits.reshape((runs, r) + logits.shape[1:]), -1), 1)
    wrong = jnp.sum(jnp.argmax(probs, -1) != y, 0).astype(jnp.int32)
    return wrong, loss_fn(jnp.log(jnp.mean(probs, 0) + 1e-30), y)
  return fn


def fixed_noise_gradient(defense: Defense, loss: str | Callable, restart_keys):
  """The fixed-noise (white-box randomness) threat model's estimator: the defense's random
  draws are fixed and known, so the attacked function is deterministic: x -> the mean softmax
  of its R purifications drawn from restart_keys [R, B] (the keys the defense will score
  with). Returns `estimator(params, keys, x, y) -> (loss [B], exact gradient)`, the loss of
  the mean softmax (log-probabilities as logits); the keys it is given are ignored."""
  loss_fn = losses_lib.resolve(loss)

  def estimator(params, keys, x, y):
    del keys  # the noise is fixed

    def mean_loss(x):
      purified, _ = defense.purify_with_restart_keys(params, x, restart_keys)
      probs = jnp.mean(jax.nn.softmax(defense.classify(params, purified), -1), 0)
      return loss_fn(jnp.log(probs + 1e-30), y)
    l, vjp = jax.vjp(mean_loss, x)
    return l, vjp(jnp.ones_like(l))[0]
  return estimator


def _bpda_per_sample(defense: Defense, loss_fn, params, keys, x, y, n_eot):
  """Per-EOT-sample losses [n, B] and gradients [n, B, ...] of the classifier at the purified
  points: the purifier's Jacobian is taken as the identity (BPDA)."""
  purified = jax.lax.stop_gradient(defense.purified(params, x, keys, n_eot))
  l, vjp = jax.vjp(lambda p: loss_fn(defense.classify(params, p), y), purified)
  return l, vjp(jnp.ones_like(l))[0]


def bpda_eot_gradient(defense: Defense, loss: str, n_eot: int):
  """BPDA+EOT: the mean over n_eot purifications of the classifier's gradient at the purified
  point (identity Jacobian); the attack steps along the sign of this mean."""
  loss_fn = losses_lib.resolve(loss)

  def estimator(params, keys, x, y):
    l, g = _bpda_per_sample(defense, loss_fn, params, keys, x, y, n_eot)
    return jnp.mean(l, 0), jnp.mean(g, 0)
  return estimator


def bpda_eot_adp_direction(defense: Defense, loss: str, n_eot: int):
  """ADP's own BPDA+EOT: one chain per EOT sample and the *sum of per-sample gradient signs*
  (the l_inf step then takes the sign of that sum) — weaker than the sign of the mean."""
  loss_fn = losses_lib.resolve(loss)

  def estimator(params, keys, x, y):
    l, g = _bpda_per_sample(defense, loss_fn, params, keys, x, y, n_eot)
    return jnp.mean(l, 0), jnp.sum(jnp.sign(g), 0)
  return estimator
