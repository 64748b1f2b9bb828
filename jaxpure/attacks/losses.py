"""Per-example attack losses on logits [..., B, K] with labels [B] (higher = more adversarial)."""

import jax
import jax.numpy as jnp
import optax


def per_example_cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example, [..., B]."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.broadcast_to(y, logits.shape[:-1]))


def _true_and_best_other(logits, y):
  k = logits.shape[-1]
  onehot = jax.nn.one_hot(y, k, dtype=bool)
  true = jnp.sum(jnp.where(onehot, logits, 0.0), -1)
  other = jnp.max(jnp.where(onehot, -jnp.inf, logits), -1)
  return true, other


def cw_margin(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Carlini-Wagner margin max_{j != y} z_j - z_y per example (> 0 means misclassified)."""
  true, other = _true_and_best_other(logits, y)
  return other - true


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Croce & Hein's difference-of-logits ratio (negated, to maximise):
  -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), with z_pi sorted descending."""
  true, other = _true_and_best_other(logits, y)
  top = jax.lax.top_k(logits, 3)[0]
  return -(true - other) / (top[..., 0] - top[..., 2] + 1e-12)


LOSSES = {"ce": per_example_cross_entropy, "cw": cw_margin, "dlr": dlr}


def resolve(loss):
  """The loss function `fn(logits [..., B, K], y [B]) -> [..., B]` that `loss` names: `loss`
  itself if it is callable, else LOSSES[loss]."""
  return loss if callable(loss) else LOSSES[loss]


def switched(names, index):
  """`fn(logits [..., B, K], y [B]) -> [..., B]`: the loss LOSSES[names[index]] for an int32
  scalar `index` (traced), by `lax.switch` on the logits: one program holds every loss's head
  but differentiates the network once (APGD's runs over several losses share one gradient
  through the purifier). One name: that loss itself."""
  fns = [LOSSES[n] for n in names]
  if len(fns) == 1:
    return fns[0]
  return lambda logits, y: jax.lax.switch(index, fns, logits, y)
