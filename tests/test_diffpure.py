"""The VP-SDE and the diffpure purifier family against closed forms, Monte Carlo, finite
differences and compiled memory; batches equal examples one by one; 8 devices equal 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import losses, parallel
from jaxpure.attacks import eot
from jaxpure.defense import Defense
from jaxpure.purifiers import common, diffpure
from jaxpure.sde import VPSDE

D, K = 16, 5
SHAPE = (4, 4, 4, 1)


def test_vp_marginal_matches_the_closed_form():
  sde = VPSDE(0.1, 20.0)
  t = np.linspace(1e-4, 1.0, 50)
  with jax.enable_x64(True):
    mean, std = (np.asarray(v) for v in sde.marginal(jnp.asarray(t)))
  abar = np.exp(-0.5 * (20.0 - 0.1) * t ** 2 - 0.1 * t)
  np.testing.assert_allclose(mean, np.sqrt(abar), rtol=1e-12)
  np.testing.assert_allclose(std, np.sqrt(1 - abar), rtol=1e-10)
  # the marginal solves d mean / dt = -1/2 beta(t) mean (finite differences)
  h = 1e-6
  with jax.enable_x64(True):
    d = (np.asarray(sde.marginal(jnp.asarray(t + h))[0]) -
         np.asarray(sde.marginal(jnp.asarray(t - h))[0])) / (2 * h)
  np.testing.assert_allclose(d, -0.5 * (0.1 + t * 19.9) * mean, rtol=1e-6)


def _gaussian_eps_fn(mu, sigma, sde):
  """The exact eps-network of data N(mu, sigma^2) (per pixel, in [-1, 1] space):
  eps_hat = -std(t) s(x, t), s = -(x - m_t) / v_t, m_t = sqrt(abar) mu,
  v_t = abar sigma^2 + 1 - abar."""

  def eps_fn(params, x, t):
    del params
    abar = sde.alpha_bar(t).reshape((-1, 1, 1, 1))
    m, v = jnp.sqrt(abar) * mu, abar * sigma ** 2 + 1 - abar
    return jnp.sqrt(1 - abar) * (x - m) / v
  return eps_fn


# The discretisation error is O(dt) for all three; DDPM (posterior variance) and DDIM lose
# variance faster with big steps (checked in closed form for DDIM: std 0.092 at N = 200 on
# [0, 1] against 0.1), so they get finer grids here.
@pytest.mark.parametrize("sampler,num_steps", [("sde", 200), ("ddpm", 2000), ("ddim", 2000)])
def test_reverse_process_with_the_true_score_returns_the_data_distribution(sampler, num_steps):
  sde = VPSDE(0.1, 20.0)
  mu, sigma = 0.2, 0.1  # in [-1, 1]: pixels 0.6 +- 0.05, far from the clipping
  n = 8192
  x = (jnp.asarray(np.random.default_rng(0).normal(mu, sigma, size=(n, 1, 1, 1)),
                   jnp.float32) + 1) / 2
  s = diffpure.Settings(t_star=1.0, num_steps=num_steps, sampler=sampler)
  keys = common.restart_keys(common.example_keys(jax.random.key(1), jnp.arange(n)), 1)
  out, trace = jax.jit(lambda x, k: diffpure.purify(_gaussian_eps_fn(mu, sigma, sde), None, x,
                                                    k, s))(x, keys)
  y = 2 * np.asarray(out[0]).ravel() - 1
  # Monte Carlo: 3 standard errors of the mean and of the std, plus discretisation slack
  assert abs(y.mean() - mu) < 3 * sigma / np.sqrt(n) + 0.004, y.mean()
  assert abs(y.std() - sigma) < 3 * sigma / np.sqrt(2 * n) + 0.004, y.std()
  # ...and at t* = 1 the diffused input forgot x: it is close to N(0, 1) in [-1, 1] space
  start = 2 * np.asarray(trace["iterates"][0, 0]).ravel() - 1
  assert abs(np.mean(np.abs(start))) > 0.3  # not the data (|y| ~ 0.2), clipped N(0, 1)


def eps_tiny(params, x, t):
  """A small time-conditioned per-example eps-network."""
  flat = x.reshape(x.shape[0], -1)
  h = jnp.tanh(flat @ params["w"] + jnp.outer(t, params["c"]) + params["b"])
  return (0.5 * h + 0.3 * flat).reshape(x.shape)


def logits_tiny(params, x):
  flat = x.reshape(x.shape[0], -1)
  return jnp.tanh(flat @ params["v"]) @ params["u"]


def tiny_params(dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  score = {"w": rng.normal(size=(D, D)) * 0.5, "b": rng.normal(size=(D,)) * 0.3,
           "c": rng.normal(size=(D,))}
  clf = {"v": rng.normal(size=(D, 12)), "u": rng.normal(size=(12, K))}
  cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)  # noqa: E731
  return {"score": cast(score), "classifier": cast(clf)}


def tiny_defense(restarts=2, **settings):
  return Defense(score_fn=eps_tiny, logits_fn=logits_tiny, family=diffpure,
                 settings=diffpure.Settings(**dict(dict(t_star=0.3, num_steps=6), **settings)),
                 restarts=restarts)


@pytest.mark.parametrize("sampler", ["sde", "ddpm", "ddim"])
def test_exact_gradient_matches_float64_finite_differences(sampler):
  with jax.enable_x64(True):
    params = tiny_params(np.float64)
    defense = tiny_defense(sampler=sampler)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(0.3, 0.7, size=SHAPE))
    y = jnp.asarray(rng.integers(0, K, size=SHAPE[0]))
    keys = common.example_keys(jax.random.key(0), jnp.arange(SHAPE[0]))
    est = eot.exact_eot_gradient(defense, "ce", n_eot=2)
    total = lambda x: jnp.sum(est(params, keys, x, y)[0])  # noqa: E731
    _, g = est(params, keys, x, y)
    for _ in range(3):
      v = jnp.asarray(rng.normal(size=SHAPE))
      fd = (float(total(x + 1e-6 * v)) - float(total(x - 1e-6 * v))) / 2e-6
      np.testing.assert_allclose(float(jnp.sum(g * v)), fd, rtol=1e-5, atol=1e-8)


def test_batch_is_purified_as_examples_alone():
  params, defense = tiny_params(), tiny_defense(restarts=3)
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(5, 4, 4, 1)), jnp.float32)
  keys = common.example_keys(jax.random.key(3), jnp.arange(5))
  batch = np.asarray(defense.purified(params, x, keys, 3))
  for b in range(5):
    alone = np.asarray(defense.purified(params, x[b:b + 1], keys[b:b + 1], 3))
    np.testing.assert_allclose(batch[:, b], alone[:, 0], atol=1e-6)


def test_eight_devices_give_the_one_device_result():
  params, defense = tiny_params(), tiny_defense(restarts=2)
  x = np.random.default_rng(3).uniform(size=(16, 4, 4, 1)).astype(np.float32)
  keys = common.example_keys(jax.random.key(4), jnp.arange(16))
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    fn = defense.make_purifier(2, mesh)
    out = fn(params, jax.device_put(x, parallel.batch_sharding(mesh)),
             jax.device_put(keys, parallel.batch_sharding(mesh)))
    assert len(out.sharding.device_set) == len(devices)
    results.append(np.asarray(out))
  np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def _wide_eps(params, x, t):
  flat = x.reshape(x.shape[0], -1)
  hidden = jnp.tanh(flat @ params["w1"] + t[:, None])
  hidden = jnp.tanh(hidden @ params["w2"])
  return (hidden @ params["w3"]).reshape(x.shape)


def _gradient_temp_bytes(num_steps, remat):
  rng = np.random.default_rng(0)
  width = 1024
  sp = {"w1": jnp.asarray(rng.normal(size=(D, width)) * 0.1, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(width, width)) * 0.03, jnp.float32),
        "w3": jnp.asarray(rng.normal(size=(width, D)) * 0.03, jnp.float32)}
  params = {"score": sp, "classifier": tiny_params()["classifier"]}
  defense = Defense(score_fn=_wide_eps, logits_fn=logits_tiny, family=diffpure,
                    settings=diffpure.Settings(t_star=0.2, num_steps=num_steps, remat=remat),
                    restarts=1)
  est = eot.exact_eot_gradient(defense, "ce", n_eot=2)
  x, y = jnp.zeros((32, 4, 4, 1)), jnp.zeros((32,), jnp.int32)
  keys = common.example_keys(jax.random.key(0), jnp.arange(32))
  compiled = jax.jit(lambda p, k, x, y: est(p, k, x, y)[1]).lower(params, keys, x, y).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow  # compiles the gradient at three step counts, twice
def test_remat_keeps_gradient_memory_flat_in_reverse_steps():
  with_remat = {n: _gradient_temp_bytes(n, True) for n in (10, 20, 40)}
  without = {n: _gradient_temp_bytes(n, False) for n in (10, 20, 40)}
  carried = 2 * 32 * D * 4  # one iterate per EOT sample, float32
  per_step = (with_remat[40] - with_remat[20]) / 20
  per_step_without = (without[40] - without[20]) / 20
  assert per_step <= 4 * carried, (with_remat, without)  # the carried iterates, not activations
  assert per_step_without >= 5 * max(per_step, carried), (with_remat, without)


def test_vp_dsm_loss_matches_a_float64_numpy_reference():
  sde = VPSDE(0.1, 20.0)
  rng = np.random.default_rng(5)
  with jax.enable_x64(True):
    params = jax.tree.map(np.asarray, tiny_params(np.float64)["score"])
  x = rng.uniform(-1, 1, size=SHAPE)
  z = rng.normal(size=SHAPE)
  t = rng.uniform(1e-3, 1, size=SHAPE[0])
  with jax.enable_x64(True):
    got = float(losses.vp_dsm_loss_given_noise(eps_tiny, params, jnp.asarray(x),
                                               jnp.asarray(t), jnp.asarray(z), sde))
  abar = np.exp(-0.5 * 19.9 * t ** 2 - 0.1 * t)
  x_t = np.sqrt(abar)[:, None, None, None] * x + np.sqrt(1 - abar)[:, None, None, None] * z
  flat = x_t.reshape(SHAPE[0], -1)
  eps = 0.5 * np.tanh(flat @ params["w"] + np.outer(t, params["c"]) + params["b"]) + 0.3 * flat
  want = np.mean(np.mean((z.reshape(SHAPE[0], -1) - eps) ** 2, axis=1))
  assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("kwargs,fragment", [(dict(t_star=0.0), "t_star"),
                                             (dict(num_steps=0), "num_steps"),
                                             (dict(sampler="heun"), "sampler")])
def test_bad_settings_are_refused(kwargs, fragment):
  from jaxpure.errors import ConfigError
  with pytest.raises(ConfigError, match=fragment):
    diffpure.Settings(**kwargs)
