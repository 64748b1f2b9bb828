"""The in-loop N-evaluation attack (DiffHammer, NeurIPS 2024; DESIGN §5): PGD whose every
iterate is scored by N runs of the defense inside the loop, each example keeping the iterate
with the most wrong runs (ties: the larger loss). It optimises the resubmission threat model
directly: a randomized defense's last iterate, or its highest-loss one, is not the point most
often misclassified.
"""

import jax.numpy as jnp
from jax import lax

from jaxpure.attacks import common

#: Folded into an iteration's keys for its scoring runs (apart from the gradient's samples).
SCORE_TAG = 0x53434F52


def pgd_inloop(estimator, score, params, keys, x, y, s: common.AttackSettings, eps=None,
               step_size=None, num_steps=None):
  """x_adv [B, H, W, C]: of the iterates after each of the num_steps PGD steps, per example the
  one `score` found wrong in the most runs, ties going to the larger scoring loss (the first
  of equal ones); in the eps-ball around x and in [0, 1].

  estimator(params, keys, x, y) -> (loss [B], gradient), iteration t drawing with
  fold_in(key, t) (as `pgd.pgd`, whose start and steps these are); score(params, keys, x, y)
  -> (wrong [B] runs of N, loss [B]), forward only, iteration t scoring its new iterate with
  fold_in(fold_in(key, t), SCORE_TAG). eps, step_size, num_steps: optional (traced)
  overrides of the settings' values."""
  eps = s.eps if eps is None else eps
  step_size = s.step_size if step_size is None else step_size
  num_steps = s.num_steps if num_steps is None else num_steps
  keys = common.per_example_keys(keys, x.shape[0])
  x0 = (common.random_start(common.fold(keys, jnp.uint32(2**32 - 1)), x, s.norm, eps)
        if s.random_start else x)
  bshape = (-1,) + (1,) * (x.ndim - 1)

  def body(t, carry):
    x_adv, best, best_wrong, best_loss = carry
    step_keys = common.fold(keys, t)
    _, g = estimator(params, step_keys, x_adv, y)
    x_adv = common.project(x_adv + step_size * common.ascent_direction(g, s.norm), x, s.norm,
                           eps)
    wrong, loss = score(params, common.fold(step_keys, SCORE_TAG), x_adv, y)
    better = (wrong > best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
    return (x_adv, jnp.where(better.reshape(bshape), x_adv, best),
            jnp.where(better, wrong, best_wrong), jnp.where(better, loss, best_loss))

  b = x.shape[0]
  start = (x0, x0, jnp.full((b,), -1, jnp.int32), jnp.full((b,), -jnp.inf, x.dtype))
  return lax.fori_loop(0, num_steps, body, start)[1]
