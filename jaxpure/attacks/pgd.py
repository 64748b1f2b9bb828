"""Projected gradient ascent with a random start, as one `lax.scan` over iterations."""

import jax.numpy as jnp
from jax import lax

from jaxpure.attacks import common


def pgd(estimator, params, keys, x, y, s: common.AttackSettings, eps=None, step_size=None):
  """x_adv [B, H, W, C] in the s.norm ball of radius eps (default s.eps) around x and in [0, 1].

  estimator(params, keys, x, y) -> (loss [B], ascent gradient); keys: [B] per-example keys
  (iteration t uses fold_in(key, t), the start fold_in(key, -1) — i.e. 2**32 - 1).
  eps, step_size: optional (traced) overrides of the settings' values.
  """
  eps = s.eps if eps is None else eps
  step_size = s.step_size if step_size is None else step_size
  keys = common.per_example_keys(keys, x.shape[0])
  x0 = (common.random_start(common.fold(keys, jnp.uint32(2**32 - 1)), x, s.norm, eps)
        if s.random_start else x)

  def body(x_adv, t):
    _, g = estimator(params, common.fold(keys, t), x_adv, y)
    x_adv = x_adv + step_size * common.ascent_direction(g, s.norm)
    return common.project(x_adv, x, s.norm, eps), None

  x_adv, _ = lax.scan(body, x0, jnp.arange(s.num_steps))
  return x_adv
