"""APGD (Croce & Hein, ICML 2020) on an EOT gradient estimator, as one `lax.scan`.

Step size starts at 2 eps and is halved at the halving points w_j when fewer than rho = 0.75 of
the steps since the last halving point increased the loss, or when neither the step size nor the
best loss changed since then; on halving, the iterate restarts from the best point. Momentum 0.75.
All state is per example.

Under a noisy (EOT) loss every decision compares estimates: with `judge` (forward-only extra
purifications, `AttackSettings.decision_samples`), the loss that decides is the mean over the
gradient's n_eot samples and the judge's, so fewer lucky points are kept and fewer halvings
are triggered by noise. The gradient itself is unchanged.
"""

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxpure.attacks import common

MOMENTUM = 0.75
RHO = 0.75


def halving_points(num_steps: int) -> list[int]:
  """The iterations w_j at which the step size may be halved: p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j N)."""
  p = [0.0, 0.22]
  while p[-1] < 1:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  return sorted({math.ceil(round(q * num_steps, 6)) for q in p if q <= 1 + 1e-9})


#: Folded into an iteration's keys for the judge's samples (apart from the gradient's).
JUDGE_TAG = 0x4A554447
#: The fold of the start evaluation's keys (the steps use their iteration index).
START_KEY = 2**32 - 2


def apgd(estimator, params, keys, x, y, s: common.AttackSettings, x_start=None, eps=None,
         judge=None, with_final=False):
  """x_adv [B, H, W, C]: the highest-loss point found, in the eps-ball and [0, 1]; with
  with_final, (that point, the final iterate: the last step's point, before a halving at the
  last step would send the iterate back to the best point).

  estimator(params, keys, x, y) -> (loss [B], gradient); iteration t draws with fold_in(key, t).
  x_start: [B, H, W, C] starting point inside the ball (default: a random start if
  s.random_start, else x). eps: an optional (traced) override of s.eps.
  judge: optional forward-only loss `(params, keys, x, y) -> [B]`, the mean over
  s.decision_samples samples; the decisions use the mean over all n_eot + decision_samples.
  """
  eps = s.eps if eps is None else eps
  keys = common.per_example_keys(keys, x.shape[0])
  n = s.num_steps
  ws = halving_points(n)
  is_halving = np.zeros(n + 1, bool)
  since = np.zeros(n + 1, np.float32)  # steps since the previous halving point, at a halving point
  for prev, w in zip(ws[:-1], ws[1:]):
    if w > 0:
      is_halving[w], since[w] = True, w - prev
  is_halving, since = jnp.asarray(is_halving), jnp.asarray(since)
  bshape = (-1,) + (1,) * (x.ndim - 1)
  eta0 = 2.0 * eps

  if x_start is not None:
    x0 = x_start
  elif s.random_start:
    x0 = common.random_start(common.fold(keys, jnp.uint32(2**32 - 1)), x, s.norm, eps)
  else:
    x0 = x
  w = s.decision_samples / (s.n_eot + s.decision_samples) if judge is not None else 0.0

  def evaluate(k, x_at):
    f, g = estimator(params, common.fold(keys, k), x_at, y)
    if judge is not None and w > 0:
      f = (1 - w) * f + w * judge(params, common.fold(common.fold(keys, k), JUDGE_TAG), x_at, y)
    return f, g

  # Iteration -1 of the scan is the start evaluation at x0 (so the gradient is traced and
  # compiled once, not also outside the loop); it draws with fold(keys, START_KEY).
  b = x.shape[0]
  zeros_b = jnp.zeros((b,), x.dtype)
  state = dict(x_prev=x0, x=x0, x_last=x0, g=jnp.zeros_like(x0), f=zeros_b, x_max=x0,
               f_max=zeros_b, g_max=jnp.zeros_like(x0), eta=jnp.full((b,), eta0, x.dtype),
               count=zeros_b, eta_last=jnp.full((b,), eta0, x.dtype), f_max_last=zeros_b)

  def body(st, k):
    start = k < 0
    k = jnp.maximum(k, 0)
    eta = st["eta"].reshape(bshape)
    z = common.project(st["x"] + eta * common.ascent_direction(st["g"], s.norm), x, s.norm, eps)
    a = jnp.where(k == 0, 1.0, MOMENTUM)
    x_step = common.project(st["x"] + a * (z - st["x"]) + (1 - a) * (st["x"] - st["x_prev"]),
                            x, s.norm, eps)
    x_new = jnp.where(start, x0, x_step)
    f_new, g_new = evaluate(jnp.where(start, jnp.uint32(START_KEY), k.astype(jnp.uint32)), x_new)
    count = st["count"] + (f_new > st["f"]).astype(x.dtype)
    better = f_new > st["f_max"]
    x_max = jnp.where(better.reshape(bshape), x_new, st["x_max"])
    g_max = jnp.where(better.reshape(bshape), g_new, st["g_max"])
    f_max = jnp.where(better, f_new, st["f_max"])
    at_halving = is_halving[k + 1]
    halve = at_halving & ((count < RHO * since[k + 1]) |
                       ((st["eta"] == st["eta_last"]) & (f_max == st["f_max_last"])))
    hb = halve.reshape(bshape)
    new_eta = jnp.where(halve, st["eta"] / 2, st["eta"])
    x_next = jnp.where(hb, x_max, x_new)
    stepped = dict(
        x_prev=jnp.where(hb, x_max, st["x"]), x=x_next, x_last=x_new,
        g=jnp.where(hb, g_max, g_new),
        f=jnp.where(halve, f_max, f_new), x_max=x_max, f_max=f_max, g_max=g_max, eta=new_eta,
        count=jnp.where(at_halving, 0.0, count),
        eta_last=jnp.where(at_halving, new_eta, st["eta_last"]),
        f_max_last=jnp.where(at_halving, f_max, st["f_max_last"]))
    started = dict(st, x_prev=x0, x=x0, x_last=x0, g=g_new, f=f_new, x_max=x0, f_max=f_new,
                   g_max=g_new, f_max_last=f_new)
    return {key: jnp.where(start, started[key], stepped[key]) for key in stepped}, None

  state, _ = lax.scan(body, state, jnp.arange(-1, n, dtype=jnp.int32))
  return (state["x_max"], state["x_last"]) if with_final else state["x_max"]
