"""The VP-SDE and the diffpure purifier family against the original DiffPure code's reverse
SDE (tests/data), closed forms, Monte Carlo, finite differences and compiled memory; batches
equal examples one by one; 8 devices equal 1."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import losses, models, parallel
from jaxpure.attacks import eot
from jaxpure.defense import Defense
from jaxpure.importers import ddpmpp as ddpmpp_importer
from jaxpure.purifiers import common, diffpure
from jaxpure.sde import VPSDE

D, K = 16, 5
SHAPE = (4, 4, 4, 1)
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.mark.reference
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


@pytest.mark.reference
def test_reverse_sde_matches_the_original_diffpure_code():
  """DiffPure's own RevVPSDE (runners/diffpure_sde.py, score_sde's score function) on the
  DDPM++ fixture, in float64, wrote its reverse-time drift f(s, x) = 1/2 beta x + beta s(x, t),
  its diffusion g = sqrt(beta(t)) and one torchsde Euler-Maruyama step
  x + f dt + g sqrt(dt) z, at t = 1 - s in {0.1, 0.07, 0.001, 0.5}, for three beta schedules
  (tests/data/make_diffpure_reverse_reference.py). jaxpure's float64 DDPM++ and sde step
  give the same numbers to float64 rounding (the step holds the drift f: with the
  diffusion and the noise equal, an error in f shows in the step)."""
  ref = dict(np.load(os.path.join(DATA, "diffpure_reverse_reference.npz")))
  state = {k[len("state/"):]: v for k, v in ref.items() if k.startswith("state/")}
  arch = ddpmpp_importer.infer_architecture(state, image_size=32)
  module = models.create("ddpmpp", **{k: v for k, v in arch.items() if k != "image_size"})
  nhwc = lambda a: a.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # noqa: E731
  flat = lambda a: np.asarray(a).transpose(0, 3, 1, 2).reshape(len(a), -1)  # noqa: E731
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64),
                             ddpmpp_importer.convert_state_dict(state, **arch))
    x, z, t = jnp.asarray(nhwc(ref["x"])), jnp.asarray(nhwc(ref["noise"])), jnp.asarray(ref["t"])
    eps_hat = jax.jit(models.score_function(module),
                      compiler_options={"xla_backend_optimization_level": 0})(variables, x, t)
    assert eps_hat.dtype == jnp.float64
    dt = jnp.asarray(ref["dt"]).reshape(-1, 1, 1, 1)
    for m, (b0, b1) in enumerate(zip(ref["beta_min"], ref["beta_max"])):
      sde = diffpure.Settings(beta_min=float(b0), beta_max=float(b1)).sde
      step = flat(diffpure.STEPS["sde"](sde, x, eps_hat, t, dt, z))
      diffusion = np.sqrt(np.asarray(sde.beta(t)))
      # measured: step 1e-16 of its largest entry (the network's rounding,
      # scaled by beta / std(t)); a 1e-7 change of the step's noise term is 4e-8
      atol = lambda a: 1e-12 * np.abs(a).max()  # noqa: E731
      np.testing.assert_allclose(diffusion, ref["diffusion"][m], rtol=1e-15, atol=0)
      np.testing.assert_allclose(step, ref["step"][m], rtol=0, atol=atol(ref["step"][m]) / 10)


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
# [0, 1] against 0.1), so they get finer grids here at t* = 1. DiffPure's setting is t* = 0.1,
# N = 100 (dt = 1e-3; DDPM gets 200 there: at 100 its std is 0.004 low, at the slack's edge);
# the schedules 0.05 -> 15 and 1 -> 5 change beta(t) over the whole run.
@pytest.mark.parametrize("sampler,t_star,num_steps,betas", [
    ("sde", 1.0, 200, (0.1, 20.0)), ("ddpm", 1.0, 2000, (0.1, 20.0)),
    ("ddim", 1.0, 2000, (0.1, 20.0)), ("sde", 1.0, 200, (0.05, 15.0)),
    ("sde", 0.1, 100, (0.1, 20.0)), ("ddpm", 0.1, 200, (0.1, 20.0)),
    ("ddim", 0.1, 100, (0.1, 20.0)), ("sde", 0.1, 100, (0.05, 15.0)),
    ("sde", 0.1, 100, (1.0, 5.0))])
def test_reverse_process_with_the_true_score_returns_the_data_distribution(
    sampler, t_star, num_steps, betas):
  sde = VPSDE(*betas)
  mu, sigma = 0.2, 0.1  # in [-1, 1]: pixels 0.6 +- 0.05, far from the clipping
  n = 8192
  x = (jnp.asarray(np.random.default_rng(0).normal(mu, sigma, size=(n, 1, 1, 1)),
                   jnp.float32) + 1) / 2
  s = diffpure.Settings(t_star=t_star, num_steps=num_steps, sampler=sampler,
                        beta_min=betas[0], beta_max=betas[1])
  keys = common.restart_keys(common.example_keys(jax.random.key(1), jnp.arange(n)), 1)
  out, trace = jax.jit(lambda x, k: diffpure.purify(_gaussian_eps_fn(mu, sigma, sde), None, x,
                                                    k, s))(x, keys)
  y = 2 * np.asarray(out[0]).ravel() - 1
  # Monte Carlo: 3 standard errors of the mean and of the std, plus discretisation slack
  assert abs(y.mean() - mu) < 3 * sigma / np.sqrt(n) + 0.004, y.mean()
  assert abs(y.std() - sigma) < 3 * sigma / np.sqrt(2 * n) + 0.004, y.std()
  # ...and it started from the VP marginal at t*, N(sqrt(abar) mu, abar sigma^2 + 1 - abar),
  # seen through the trace's clipping to [0, 1] pixels (moments by quadrature, float64): at
  # t* = 1 the input is forgotten, at t* = 0.1 it is not
  start = 2 * np.asarray(trace["iterates"][0, 0]).ravel() - 1
  abar = np.exp(-0.5 * (betas[1] - betas[0]) * t_star ** 2 - betas[0] * t_star)
  m_t, s_t = np.sqrt(abar) * mu, np.sqrt(abar * sigma ** 2 + 1 - abar)
  grid = np.linspace(m_t - 12 * s_t, m_t + 12 * s_t, 400001)
  w = np.exp(-0.5 * ((grid - m_t) / s_t) ** 2)
  w /= w.sum()
  clipped = np.clip(grid, -1, 1)
  want_mean = np.sum(w * clipped)
  want_std = np.sqrt(np.sum(w * (clipped - want_mean) ** 2))
  assert abs(start.mean() - want_mean) < 3 * want_std / np.sqrt(n), (start.mean(), want_mean)
  assert abs(start.std() - want_std) < 3 * want_std / np.sqrt(2 * n), (start.std(), want_std)


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


@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
@pytest.mark.reference
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


@pytest.mark.reference
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
