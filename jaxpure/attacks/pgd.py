"""Projected gradient ascent with a random start, as one loop over iterations (`lax.fori_loop`)."""

import jax.numpy as jnp
from jax import lax

from jaxpure.attacks import common


def pgd(estimator, params, keys, x, y, s: common.AttackSettings, eps=None, step_size=None,
        record: tuple[int, ...] = (), num_steps=None):
  """x_adv [B, H, W, C] in the s.norm ball of radius eps (default s.eps) around x and in [0, 1].

  estimator(params, keys, x, y) -> (loss [B], ascent gradient); keys: [B] per-example keys
  (iteration t uses fold_in(key, t), the start fold_in(key, -1) — i.e. 2**32 - 1).
  eps, step_size, num_steps: optional (traced) overrides of the settings' values; one compiled
  attack then serves any eps, step size and number of steps (the iterations are a
  `lax.fori_loop`, a `while` loop when num_steps is traced).
  record: step counts k in [1, num_steps]; then returns [len(record), B, H, W, C], the iterate
  after k steps for each k. With a fixed step size that is exactly what a k-step run of the
  same attack returns, so one run gives the robust accuracy against the iteration budget.
  """
  eps = s.eps if eps is None else eps
  step_size = s.step_size if step_size is None else step_size
  keys = common.per_example_keys(keys, x.shape[0])
  x0 = (common.random_start(common.fold(keys, jnp.uint32(2**32 - 1)), x, s.norm, eps)
        if s.random_start else x)
  if record and num_steps is not None:
    raise ValueError("record needs the settings' own num_steps")
  num_steps = s.num_steps if num_steps is None else num_steps
  if any(not 1 <= k <= s.num_steps for k in record):
    raise ValueError(f"record steps {record} must lie in [1, {s.num_steps}]")
  marks = jnp.asarray(record, jnp.int32)

  def body(t, carry):
    x_adv, kept = carry
    _, g = estimator(params, common.fold(keys, t), x_adv, y)
    x_adv = x_adv + step_size * common.ascent_direction(g, s.norm)
    x_adv = common.project(x_adv, x, s.norm, eps)
    if record:
      hit = (marks == t + 1).reshape((-1,) + (1,) * x_adv.ndim)
      kept = jnp.where(hit, x_adv[None], kept)
    return x_adv, kept

  kept = jnp.zeros((len(record),) + x.shape, x.dtype) if record else None
  x_adv, kept = lax.fori_loop(0, num_steps, body, (x0, kept))
  return kept if record else x_adv
