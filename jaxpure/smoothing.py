"""Smoothed classifiers through a purifier family's denoiser (DESIGN §6): Monte Carlo counts,
the soft smoothed classifier and the attack on it.

g(x) = argmax_c P(f(D(x + delta)) = c), delta ~ N(0, sigma^2 I) in pixel units (x in [0, 1];
x + delta is not clipped), D the denoiser (a family's `denoise`, or the identity: Cohen et
al.'s plain Gaussian smoothing), f the classifier.

Noise sample j of example b draws from fold_in(key_b, j) (its Gaussian noise, then the
denoiser's own noise, if any): counts depend on the example's key only, never on the batch,
the chunking of the samples or the devices.
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxpure.attacks import losses as losses_lib, pgd as pgd_lib
from jaxpure.attacks.common import AttackSettings
from jaxpure.errors import ConfigError
from jaxpure.purifiers import common

#: The name of the identity denoiser (plain Gaussian smoothing of the classifier).
IDENTITY = "none"


@dataclasses.dataclass(frozen=True)
class Smoothed:
  """A smoothed classifier. Parameters are {"score": score network variables (unused by the
  identity denoiser), "classifier": classifier variables}, as for `Defense`.

  logits_fn(clf_variables, x [B, H, W, C]) -> [B, K]; sigma: the noise std in pixels (> 0);
  score_fn(score_variables, x, t): the network field (`models.score_function`); family: a
  purifier family with `denoise` (`jaxpure.purifiers`), or None for the identity denoiser;
  settings: that family's Settings; denoise_steps: 0 for its one-shot denoiser, k > 0 for k of
  its steps after it (see the family's `denoise`)."""
  logits_fn: Callable
  sigma: float
  score_fn: Callable | None = None
  family: object = None
  settings: object = None
  denoise_steps: int = 0

  def __post_init__(self):
    if not (isinstance(self.sigma, (int, float)) and self.sigma > 0):
      raise ConfigError(f"smoothing sigma={self.sigma!r}; expected > 0 (pixel units)")
    if self.denoise_steps < 0:
      raise ConfigError(f"denoise_steps={self.denoise_steps}; expected >= 0")
    if self.family is not None:
      if not hasattr(self.family, "denoise"):
        raise ConfigError(f"purifier family {self.family.NAME!r} has no denoiser")
      if self.score_fn is None or self.settings is None:
        raise ConfigError("a denoiser needs the score network (score_fn) and its settings")
      time = getattr(self.family, "denoise_time", None)
      if time is not None:
        try:
          time(self.sigma, self.settings)
        except ValueError as e:
          raise ConfigError(f"diffusion denoising at sigma={self.sigma}: {e}") from None

  @property
  def denoiser(self) -> str:
    return IDENTITY if self.family is None else self.family.NAME

  def denoise(self, params, x_noisy: jax.Array, keys: jax.Array) -> jax.Array:
    """D(x_noisy): [B, H, W, C] -> [B, H, W, C]; keys [B] (the denoiser's own noise)."""
    if self.family is None:
      return x_noisy
    return self.family.denoise(self.score_fn, params["score"], x_noisy, self.sigma, keys,
                               self.settings, self.denoise_steps)

  def noisy_logits(self, params, x: jax.Array, sample_keys: jax.Array) -> jax.Array:
    """Logits [m, B, K] of f(D(x + delta)) for x [B, H, W, C] in [0, 1], sample j of example b
    drawn from sample_keys [m, B]. The m B samples go through the networks as one batch."""
    m, b = sample_keys.shape
    flat = sample_keys.reshape(m * b)
    split = jax.vmap(jax.random.split)(flat)  # [m B, 2]: the noise, the denoiser's noise
    xs = jnp.broadcast_to(x[None], (m,) + x.shape).reshape((m * b,) + x.shape[1:])
    noisy = xs + self.sigma * common.normal_like(split[:, 0], xs)
    logits = self.logits_fn(params["classifier"], self.denoise(params, noisy, split[:, 1]))
    return logits.reshape((m, b) + logits.shape[1:])

  def num_classes(self, params, x: jax.Array) -> int:
    """K, from the classifier's output shape (no computation)."""
    return jax.eval_shape(lambda: self.logits_fn(params["classifier"], x[:1])).shape[-1]

  def counts(self, params, x: jax.Array, keys: jax.Array, n: int, chunk: int) -> jax.Array:
    """Votes [B, K] int32: of n noise samples per example, how many f(D(x + delta)) classify
    as each class. keys: [B] per-example keys (sample j from fold_in(key, j)). The samples go
    `chunk` per example at a time through a `lax.scan` (memory of chunk B samples, whatever
    n); the result does not depend on chunk."""
    if n < 1 or chunk < 1:
      raise ValueError(f"counts needs n >= 1 and chunk >= 1; got n={n}, chunk={chunk}")
    chunk = min(chunk, n)
    k = self.num_classes(params, x)
    keys = common.per_example_keys(keys, x.shape[0])

    def one(total, c):
      j = c * chunk + jnp.arange(chunk, dtype=jnp.uint32)
      sample_keys = jax.vmap(lambda jj: common.fold(keys, jj))(j)  # [chunk, B]
      votes = jax.nn.one_hot(jnp.argmax(self.noisy_logits(params, x, sample_keys), -1), k,
                             dtype=jnp.int32)  # [chunk, B, K]
      valid = (j < n).astype(jnp.int32)[:, None, None]
      return total + jnp.sum(votes * valid, 0, dtype=jnp.int32), None  # int32 under x64 too

    total, _ = lax.scan(one, jnp.zeros((x.shape[0], k), jnp.int32),
                        jnp.arange(math.ceil(n / chunk), dtype=jnp.uint32))
    return total

  def soft(self, params, x: jax.Array, keys: jax.Array, m: int) -> jax.Array:
    """The soft smoothed classifier's estimate: mean softmax [B, K] over m noise samples per
    example (keys [B]; sample j from fold_in(key, j)); differentiable in x (through D)."""
    keys = common.per_example_keys(keys, x.shape[0])
    sample_keys = jax.vmap(lambda j: common.fold(keys, j))(jnp.arange(m, dtype=jnp.uint32))
    return jnp.mean(jax.nn.softmax(self.noisy_logits(params, x, sample_keys), -1), 0)


def soft_gradient(smoothed: Smoothed, m: int, loss: str = "ce"):
  """Salman et al. (2019)'s gradient estimator: `estimator(params, keys, x, y) -> (loss [B],
  g)`, the loss of the soft smoothed classifier (log of the mean softmax over m noise samples,
  EOT over the noise) and its exact gradient through the denoiser and the classifier."""
  loss_fn = losses_lib.resolve(loss)

  def estimator(params, keys, x, y):
    per_example = lambda x: loss_fn(jnp.log(smoothed.soft(params, x, keys, m) + 1e-30), y)
    l, vjp = jax.vjp(per_example, x)
    return l, vjp(jnp.ones_like(l))[0]
  return estimator


def attack(smoothed: Smoothed, params, keys: jax.Array, x: jax.Array, y: jax.Array, radius,
           num_steps: int, step_size, m: int, loss: str = "ce",
           random_start: bool = False) -> jax.Array:
  """PGD in the l2 ball of `radius` (pixels) around x [B, H, W, C] in [0, 1] (and in [0, 1])
  against the soft smoothed classifier with true labels y [B]: num_steps steps of step_size,
  each on `soft_gradient` with m fresh noise samples (EOT; step t's from fold_in(key, t)).
  radius and step_size may be traced (one compiled attack serves every radius). keys: [B]."""
  s = AttackSettings(norm="l2", eps=1.0, step_size=1.0, num_steps=num_steps, n_eot=m,
                     loss=loss, random_start=random_start)
  return pgd_lib.pgd(soft_gradient(smoothed, m, loss), params, keys, x, y, s, eps=radius,
                     step_size=step_size)
