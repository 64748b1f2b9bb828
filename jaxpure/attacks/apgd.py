"""APGD (Croce & Hein, ICML 2020) on an EOT gradient estimator, as one `lax.scan`.

The step rule is AutoAttack's (`autopgd_base.APGDAttack`, l_inf and l_2): step size 2 eps and
momentum 0.75 (none on the first step). The step size is checked after w_1 = max(floor(0.22 N),
1) steps and then after intervals that shrink by max(floor(0.03 N), 1) steps down to
max(floor(0.06 N), 1) (`halving_points`). At a check of an interval of k steps it is halved,
and the iterate and its gradient are sent back to the best point so far, when
  1. at most rho k = 0.75 k of the interval's steps increased the loss (each step's loss
     compared with the previous step's, the first with the start point's), or
  2. the step size was not halved at the previous check and the best loss has not improved
     since then (at the first check: never).
After a halving the momentum term is the best point minus the point before the replaced one,
as in AutoAttack. All state is per example. `tests/test_autoattack_reference.py` compares the
iterates with AutoAttack's own, step by step in float64.

Two deliberate differences from AutoAttack's code: the first step's loss is compared with the
start point's (AutoAttack compares it with an unfilled row of zeros, so whether the first step
"increased" the loss depends on its sign), and the point returned is the highest-loss one
(AutoAttack's `perturb` returns the last misclassified iterate, which for a randomized defense
is one lucky draw).

Under a noisy (EOT) loss every decision compares estimates: with `judge` (forward-only extra
purifications, `AttackSettings.decision_samples`), the loss that decides is the mean over the
gradient's n_eot samples and the judge's, so fewer lucky points are kept and fewer halvings
are triggered by noise. The gradient itself is unchanged.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxpure.attacks import common

MOMENTUM = 0.75
RHO = 0.75


def halving_points(num_steps: int) -> list[int]:
  """[0, c_1, c_2, ...]: the step counts after which the step size is checked, AutoAttack's
  schedule: c_1 = max(floor(0.22 N), 1), then intervals shrinking by max(floor(0.03 N), 1)
  down to max(floor(0.06 N), 1), up to N (e.g. N = 100: 22, 41, 57, 70, 80, 87, 93, 99)."""
  first = max(int(0.22 * num_steps), 1)
  shortest, shrink = max(int(0.06 * num_steps), 1), max(int(0.03 * num_steps), 1)
  points, interval = [0], first
  while points[-1] + interval <= num_steps:
    points.append(points[-1] + interval)
    interval = max(interval - shrink, shortest)
  return points


#: Folded into an iteration's keys for the judge's samples (apart from the gradient's).
JUDGE_TAG = 0x4A554447
#: The fold of the start evaluation's keys (the steps use their iteration index).
START_KEY = 2**32 - 2


def _schedule(n: int):
  """Per iteration count 0..n: whether it ends an interval, and that interval's length."""
  ws = halving_points(n)
  is_check = np.zeros(n + 1, bool)
  length = np.zeros(n + 1, np.float32)
  for prev, w in zip(ws[:-1], ws[1:]):
    is_check[w], length[w] = True, w - prev
  return jnp.asarray(is_check), jnp.asarray(length)


def _start(keys, x, s: common.AttackSettings, x_start, eps):
  """APGD's starting point [B, H, W, C]: x_start if given, else a random start in the ball if
  s.random_start, else x."""
  if x_start is not None:
    return x_start
  if s.random_start:
    return common.random_start(common.fold(keys, jnp.uint32(2**32 - 1)), x, s.norm, eps)
  return x


def _evaluator(estimator, judge, params, keys, y, s: common.AttackSettings):
  """evaluate(k, x_at) -> (loss [B], gradient): the estimator's at iteration key k, its loss
  mixed with the judge's forward-only one (weights n_eot : decision_samples) when given."""
  w = s.decision_samples / (s.n_eot + s.decision_samples) if judge is not None else 0.0

  def evaluate(k, x_at):
    f, g = estimator(params, common.fold(keys, k), x_at, y)
    if judge is not None and w > 0:
      f = (1 - w) * f + w * judge(params, common.fold(common.fold(keys, k), JUDGE_TAG), x_at, y)
    return f, g
  return evaluate


def _initial_state(x0, eta0) -> dict:
  """The scan's state before the start evaluation; eta0: the first step size (scalar)."""
  b = x0.shape[0]
  zeros_b = jnp.zeros((b,), x0.dtype)
  return dict(x_prev=x0, x=x0, x_last=x0, g=jnp.zeros_like(x0), f=zeros_b, x_max=x0,
              f_max=zeros_b, g_max=jnp.zeros_like(x0), eta=jnp.full((b,), eta0, x0.dtype),
              count=zeros_b, reduced_last=jnp.ones((b,), bool), f_max_last=zeros_b)


def apgd(estimator, params, keys, x, y, s: common.AttackSettings, x_start=None, eps=None,
         judge=None, with_final=False, with_trace=False):
  """x_adv [B, H, W, C]: the highest-loss point found, in the eps-ball and [0, 1]; with
  with_final, (that point, the final iterate: the last step's point, before a halving at the
  last step would send the iterate back to the best point).
  estimator(params, keys, x, y) -> (loss [B], gradient); iteration t draws with fold_in(key, t).
  x_start: [B, H, W, C] starting point in the ball (`_start`); eps: a (traced) override of s.eps.
  judge: optional forward-only loss `(params, keys, x, y) -> [B]`, the mean over
  s.decision_samples samples; the decisions use the mean over all n_eot + decision_samples.
  with_trace: also returns a dict of per-evaluation arrays, index 0 the start and i the i-th
  step: "x" [N + 1, B, H, W, C] the evaluated points, "loss" [N + 1, B] their (decision)
  losses, "eta" [N + 1, B] the step size after that evaluation's check.
  """
  eps = s.eps if eps is None else eps
  keys = common.per_example_keys(keys, x.shape[0])
  n = s.num_steps
  is_check, length = _schedule(n)
  bshape = (-1,) + (1,) * (x.ndim - 1)
  x0 = _start(keys, x, s, x_start, eps)
  evaluate = _evaluator(estimator, judge, params, keys, y, s)
  # Iteration -1 of the scan is the start evaluation at x0 (so the gradient is traced and
  # compiled once, not also outside the loop); it draws with fold(keys, START_KEY).
  state = _initial_state(x0, s.initial_step * eps)

  def body(st, k):
    """k = -1: the start evaluation at x0; k >= 0: one step from st["x"], its evaluation, and
    a check of the step size if k + 1 ends an interval."""
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
    check = is_check[k + 1]
    oscillating = count <= RHO * length[k + 1]
    stalled = ~st["reduced_last"] & (st["f_max_last"] >= f_max)
    halve = check & (oscillating | stalled)
    back = (halve & s.restore_best).reshape(bshape)
    stepped = dict(
        x_prev=st["x"], x=jnp.where(back, x_max, x_new), x_last=x_new,
        g=jnp.where(back, g_max, g_new), f=f_new, x_max=x_max, f_max=f_max, g_max=g_max,
        eta=jnp.where(halve, st["eta"] / 2, st["eta"]),
        count=jnp.where(check, 0.0, count),
        reduced_last=jnp.where(check, halve, st["reduced_last"]),
        f_max_last=jnp.where(check, f_max, st["f_max_last"]))
    started = dict(st, g=g_new, f=f_new, f_max=f_new, g_max=g_new, f_max_last=f_new)
    new = {key: jnp.where(start, started[key], stepped[key]) for key in stepped}
    return new, (dict(x=x_new, loss=f_new, eta=new["eta"]) if with_trace else None)

  state, trace = lax.scan(body, state, jnp.arange(-1, n, dtype=jnp.int32))
  out = (state["x_max"], state["x_last"]) if with_final else state["x_max"]
  return (out, trace) if with_trace else out
