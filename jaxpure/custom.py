"""A defense from the user's own JAX code, so that any randomized defense written in JAX gets
the library's exact-gradient attacks and evaluation without writing a purifier family.

Either one randomized function

  logits_fn(params, x, key) -> logits [1, K]

or the split into a randomized purification and a classifier

  purify_fn(params, x, key) -> x' [1, H, W, C] in [0, 1];  classify_fn(params, x) -> [N, K]

with x [1, H, W, C] in [0, 1]. The randomized functions are called on one example at a time
(a batch of one, `vmap`ped over the batch), each with that example's own key: examples never
interact, and results do not depend on how the data are cut into batches. `params` is any
tree; the functions receive it whole (the library's own defenses split theirs into
{"score": ..., "classifier": ...}).

What each form supports: the exact-gradient attacks (`pgd_eot`, `apgd_eot`) and the
defended accuracies need only logits_fn; BPDA (`bpda_eot`), the classifier-only attack
(`pgd_clf`), the bare classifier's accuracy and the purified images need the split.
"""

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxpure.defense import Defense
from jaxpure.purifiers import common

#: The family name a user function's defense reports (never a config's purifier).
NAME = "custom"


@dataclasses.dataclass(frozen=True)
class NoSettings:
  """A user function holds its own settings."""

  def network_evaluations(self) -> None:
    return None


def per_example(fn: Callable, params, x: jax.Array, keys: jax.Array) -> jax.Array:
  """fn(params, x[b:b+1], keys[b])[0] for every example b of x [B, ...], keys [B]."""
  return jax.vmap(lambda xb, k: fn(params, xb[None], k)[0])(x, keys)


def _missing(what: str):
  def fail(*args, **kwargs):
    raise ValueError(f"this defense was given as one logits_fn: {what} needs the split "
                     "(jaxpure.custom_defense(purify_fn=..., classify_fn=...))")
  return fail


@dataclasses.dataclass(frozen=True)
class FunctionFamily:
  """A purifier family whose purification is the user's purify_fn, applied per example and
  restart (`jaxpure.purifiers`' interface; never registered: no config names it)."""
  purify_fn: Callable | None
  NAME: ClassVar[str] = NAME
  TIME_INPUT: ClassVar[str] = "none"
  Settings: ClassVar[type] = NoSettings

  def purify(self, score_fn, params, x, keys, settings):
    """(purified [R, B, H, W, C], trace with iterates [R, 2, B, H, W, C]: the input and its
    purification) for restart keys [R, B]."""
    del score_fn, settings
    if self.purify_fn is None:
      _missing("a purification")()
    purified = jax.vmap(lambda ks: per_example(self.purify_fn, params, x, ks))(keys)
    if purified.shape[1:] != x.shape:
      raise ValueError(f"purify_fn returned {purified.shape[2:]} images for {x.shape[1:]}; "
                       "expected the input's shape")
    trace = jax.vmap(lambda p: common.make_trace(jnp.stack([x, p])))(purified)
    return purified, trace


@dataclasses.dataclass(frozen=True)
class FunctionDefense(Defense):
  """A `Defense` made of user functions (`custom_defense`); params reach them whole.
  sample_logits_fn: the one-function form (then there is no purify/classify split)."""
  sample_logits_fn: Callable | None = None

  @property
  def has_split(self) -> bool:
    """Whether the defense has a purification and a classifier of its own."""
    return self.sample_logits_fn is None

  def score_params(self, params):
    return params

  def classifier_params(self, params):
    return params

  def logits_with_restart_keys(self, params, x, restart_keys):
    if self.has_split:
      return super().logits_with_restart_keys(params, x, restart_keys)
    logits = jax.vmap(lambda ks: per_example(self.sample_logits_fn, params, x, ks))(
        restart_keys)
    if logits.ndim != 3:
      raise ValueError(f"logits_fn returned an array of shape {logits.shape[2:]} per example; "
                       "expected logits [1, K]")
    return logits, None


def custom_defense(logits_fn: Callable | None = None, *, purify_fn: Callable | None = None,
                   classify_fn: Callable | None = None, restarts: int = 10) -> FunctionDefense:
  """The defense of a user's randomized JAX function(s) (see the module docstring): give
  logits_fn, or purify_fn and classify_fn. restarts: R, the randomized calls whose softmax the
  defense averages when it classifies (its prediction; attacks draw their own EOT samples).
  Raises ValueError for any other combination."""
  split = purify_fn is not None and classify_fn is not None
  if (logits_fn is not None) == split or (not split and (purify_fn or classify_fn)):
    raise ValueError("give either logits_fn(params, x, key), or both purify_fn(params, x, key) "
                     "and classify_fn(params, x)")
  return FunctionDefense(score_fn=None,
                         logits_fn=classify_fn if split else _missing("the bare classifier"),
                         family=FunctionFamily(purify_fn), settings=NoSettings(), restarts=restarts,
                         sample_logits_fn=None if split else logits_fn)
