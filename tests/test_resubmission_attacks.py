"""Attacks and scores for the resubmission threat model (DESIGN §5) on toy randomized defenses
whose answers are known in closed form: the in-loop N-evaluation attack's selection, the
defense runs that score it, and the fixed-noise threat model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import attacks as attacks_lib
from jaxpure.attacks import eot, inloop
from jaxpure.defense import Defense
from jaxpure.purifiers import adp
from jaxpure.purifiers.common import example_keys

B, SIDE = 64, 4


def _settings(**kw):
  return attacks_lib.AttackSettings(**dict(dict(eps=0.2, step_size=0.05, num_steps=4,
                                                random_start=False), **kw))


def _toy_score(runs):
  """A randomized "defense" scored in closed form: each of `runs` runs misclassifies the point
  with probability q(x) = 4 (mean(x) - 0.25), clipped to [0, 1]; the loss is mean(x)."""
  def score(params, keys, x, y):
    q = jnp.clip(4 * (jnp.mean(x, axis=(1, 2, 3)) - 0.25), 0, 1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (runs,)))(keys)  # [B, runs]
    return jnp.sum(u < q[:, None], -1).astype(jnp.int32), jnp.mean(x, axis=(1, 2, 3))
  return score


def _descending(params, keys, x, y):
  """An estimator whose ascent direction lowers every pixel: the iterates' failure probability
  q falls step by step (0.8, 0.6, 0.4, 0.2 from x = 0.5 at step 0.05)."""
  return jnp.zeros(x.shape[0]), -jnp.ones_like(x)


def test_inloop_attack_keeps_the_iterate_wrong_in_the_most_runs():
  """The last iterate (what PGD returns) is the least often wrong (q = 0.2); the in-loop
  selection with N = 256 runs keeps the first (q = 0.8) for every example (a misordering of
  Binomial(256, 0.8) and (256, 0.6) is a 5-sigma event)."""
  x = jnp.full((B, SIDE, SIDE, 1), 0.5)
  y = jnp.zeros(B, jnp.int32)
  keys = example_keys(jax.random.key(0), jnp.arange(B))
  s = _settings()
  chosen = inloop.pgd_inloop(_descending, _toy_score(256), {}, keys, x, y, s)
  np.testing.assert_allclose(np.asarray(chosen), 0.45, atol=1e-6)
  last = attacks_lib.pgd_lib.pgd(_descending, {}, keys, x, y, s)
  np.testing.assert_allclose(np.asarray(last), 0.3, atol=1e-6)


@pytest.mark.parametrize("sign,expected", [(1, 0.45), (-1, 0.3)])
def test_inloop_ties_go_to_the_larger_loss(sign, expected):
  """Every iterate wrong in no run: the scoring loss decides (mean(x) favours the first
  iterate, -mean(x) the last)."""
  x = jnp.full((B, SIDE, SIDE, 1), 0.5)
  y = jnp.zeros(B, jnp.int32)
  score = lambda p, k, xx, yy: (jnp.zeros(xx.shape[0], jnp.int32),  # noqa: E731
                                sign * jnp.mean(xx, axis=(1, 2, 3)))
  chosen = inloop.pgd_inloop(_descending, score, {}, jax.random.key(1), x, y, _settings())
  np.testing.assert_allclose(np.asarray(chosen), expected, atol=1e-6)


def _threshold_defense(restarts, sigma=0.05, theta=0.52, scale=1e4):
  """x + N(0, sigma^2) per pixel (ADP's randomisation, no step), then a threshold on the mean
  pixel: logits (0, scale (mean - theta)), class 1 when mean > theta. For label 0 one
  purification is wrong with probability p = Phi((mean(x) - theta) / (sigma / 4)) (16
  pixels); a large scale makes the mean softmax of R purifications their majority vote."""
  settings = adp.Settings(sigma_n=sigma, method="gd", max_iter=1)  # a zero field: no move
  logits_fn = lambda v, xs: jnp.stack(  # noqa: E731
      [jnp.zeros(xs.shape[0]), scale * (jnp.mean(xs, axis=(1, 2, 3)) - theta)], -1)
  return Defense(score_fn=lambda v, xs, t=None: jnp.zeros_like(xs), logits_fn=logits_fn,
                 family=adp, settings=settings, restarts=restarts)


@pytest.mark.parametrize("restarts", [1, 3])
def test_defense_runs_count_wrong_runs_with_the_closed_form_probability(restarts):
  """One run of the defense (R purifications, mean softmax of hard decisions = their majority)
  is wrong with probability p (R = 1) or p^3 + 3 p^2 (1 - p) (R = 3); over 2,000 runs the
  count is within 4 binomial standard deviations of that."""
  defense = _threshold_defense(restarts)
  means = np.array([0.49, 0.51, 0.52, 0.53])
  x = jnp.asarray(np.broadcast_to(means[:, None, None, None], (4, SIDE, SIDE, 1)))
  y = jnp.zeros(4, jnp.int32)
  n = 2000
  wrong, loss = jax.jit(eot.defense_runs(defense, "ce", n))(
      {"score": {}, "classifier": {}}, example_keys(jax.random.key(2), jnp.arange(4)), x, y)
  p = np.array([0.5 * math.erfc(-(m - 0.52) / (0.05 / 4) / math.sqrt(2)) for m in means])
  q = p if restarts == 1 else p**3 + 3 * p**2 * (1 - p)
  sd = np.sqrt(n * q * (1 - q))
  assert np.all(np.abs(np.asarray(wrong) - n * q) <= 4 * sd + 1), (np.asarray(wrong), n * q)
  assert np.all(np.diff(np.asarray(loss)) > 0)  # the loss rises with the failure probability


def test_inloop_attack_through_a_defense_reaches_the_closed_form_optimum():
  """pgd_eot_inloop on the threshold defense (R = 1, theta 0.53, a smooth classifier): the
  loss rises with the mean pixel, so the best point of the l_inf ball is x + eps (mean 0.55:
  p = Phi(1.6)), which the iterates reach after 3 steps of 0.02 (0.52: p = Phi(-0.8), 0.54:
  Phi(0.8)). The attack's point is there for every example (128 in-loop runs tell 0.55 from
  0.54 at 3.8 sigma), and 400 scoring runs of it give p within 4 standard deviations."""
  defense = _threshold_defense(1, theta=0.53, scale=50.0)
  params = {"score": {}, "classifier": {}}
  x = jnp.full((16, SIDE, SIDE, 1), 0.5)
  y = jnp.zeros(16, jnp.int32)
  s = _settings(eps=0.05, step_size=0.02, num_steps=6, n_eot=2, inloop_runs=128)
  keys = example_keys(jax.random.key(3), jnp.arange(16))
  x_adv = jax.jit(attacks_lib.attack_function("pgd_eot_inloop", defense, s))(params, keys, x, y)
  np.testing.assert_allclose(np.asarray(x_adv), 0.55, atol=1e-6)
  wrong, _ = eot.defense_runs(defense, "ce", 400)(params, jax.random.split(jax.random.key(4),
                                                                          16), x_adv, y)
  p = 0.5 * math.erfc(-(0.55 - 0.53) / (0.05 / 4) / math.sqrt(2))
  assert abs(float(np.mean(wrong)) - 400 * p) <= 4 * math.sqrt(400 * p * (1 - p) / 16)


def test_fixed_noise_attack_breaks_exactly_where_the_known_noise_allows():
  """Fixed noise on the threshold defense (R = 1, smooth classifier): with the noise n known,
  the purified mean is mean(x) + mean(n) and the best l_inf point is x + eps, so an example
  can be broken iff mean(x) + eps + mean(n) > theta: per example, in closed form given the
  noise (read from the defense's own purification of x with the scoring keys)."""
  defense = _threshold_defense(1, theta=0.555, scale=50.0)
  params = {"score": {}, "classifier": {}}
  n = 256
  x = jnp.full((n, SIDE, SIDE, 1), 0.5)
  y = jnp.zeros(n, jnp.int32)
  keys = example_keys(jax.random.key(5), jnp.arange(n))
  restart = jax.vmap(lambda k: jax.random.split(k, 1))(keys).swapaxes(0, 1)  # [1, n]
  noise_mean = np.asarray(jnp.mean(defense.purify_with_restart_keys(params, x, restart)[0][0],
                                   axis=(1, 2, 3))) - 0.5
  s = _settings(eps=0.05, step_size=0.02, num_steps=6)
  est = eot.fixed_noise_gradient(defense, "ce", restart)
  x_adv = jax.jit(lambda: attacks_lib.pgd_lib.pgd(est, params, keys, x, y, s))()
  correct = np.asarray(defense.predict(params, x_adv, keys)["mean_softmax"] == y)
  breakable = 0.5 + 0.05 + noise_mean > 0.555
  assert 0.2 < breakable.mean() < 0.8  # both kinds present
  np.testing.assert_array_equal(correct, ~breakable)


def test_fixed_noise_gradient_is_the_gradient_of_the_defense_with_those_draws():
  """float64 central differences of x -> CE of the defense's mean softmax over its R = 2
  purifications with the given keys (`Defense.logits`), against the estimator's gradient."""
  with jax.enable_x64(True):
    defense = _threshold_defense(2, theta=0.5, scale=5.0)
    params = {"score": {}, "classifier": {}}
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.uniform(0.4, 0.6, size=(3, SIDE, SIDE, 1)))
    y = jnp.asarray([0, 1, 0])
    keys = example_keys(jax.random.key(7), jnp.arange(3))
    restart = jax.vmap(lambda k: jax.random.split(k, 2))(keys).swapaxes(0, 1)  # [2, 3]

    def loss(xx):  # per example, through the defense's own read-out of its R purifications
      probs = jnp.mean(jax.nn.softmax(defense.logits(params, xx, keys, 2), -1), 0)
      return -jnp.log(probs[jnp.arange(3), y])
    _, g = eot.fixed_noise_gradient(defense, "ce", restart)(params, None, x, y)
    d = jnp.asarray(rng.normal(size=x.shape))
    h = 1e-6
    fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
    np.testing.assert_allclose(np.asarray(jnp.sum(g * d, axis=(1, 2, 3))), np.asarray(fd),
                               rtol=1e-6, atol=1e-9)
