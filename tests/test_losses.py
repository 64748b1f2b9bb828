"""DSM loss and cross-entropy against independent float64 NumPy references and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import losses

SHAPE = (5, 4, 4, 2)  # [B, H, W, C]
D = 4 * 4 * 2


def _h_jax(params, x, t=None):
  """A small nonlinear field h(x) = tanh(x W + b) reshaped to x's shape (t, the noise level,
  unused: an unconditional network)."""
  flat = x.reshape(x.shape[0], -1)
  return jnp.tanh(flat @ params["w"] + params["b"]).reshape(x.shape)


def _h_numpy(params, x):
  flat = x.reshape(x.shape[0], -1)
  return np.tanh(flat @ params["w"] + params["b"]).reshape(x.shape)


def _setup(dtype):
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(D, D)) * 0.3, "b": rng.normal(size=(D,)) * 0.1}
  x = rng.uniform(size=SHAPE)
  return jax.tree.map(lambda a: np.asarray(a, dtype), params), np.asarray(x, dtype)


def _numpy_dsm(params, x, sigma, z):
  """1/2 sigma^2 ||s(x~) + (x~ - x) / sigma^2||^2 with s = h / sigma, averaged over the batch."""
  x_noisy = x + sigma[:, None, None, None] * z
  s = _h_numpy(params, x_noisy) / sigma[:, None, None, None]
  target = -(x_noisy - x) / sigma[:, None, None, None] ** 2
  per_example = 0.5 * sigma ** 2 * np.sum((s - target) ** 2, axis=(1, 2, 3))
  return per_example.mean()


def test_noise_levels_are_geometric():
  sig = np.asarray(losses.noise_levels(1.0, 0.01, 10), np.float64)
  np.testing.assert_allclose(sig, np.geomspace(1.0, 0.01, 10), rtol=1e-6)
  sig = np.asarray(losses.noise_levels(50.0, 0.01, 232))
  assert sig.shape == (232,) and sig[0] == pytest.approx(50) and sig[-1] == pytest.approx(0.01)
  with pytest.raises(ValueError):
    losses.noise_levels(0.01, 1.0, 10)


def test_dsm_loss_matches_float64_numpy():
  key = jax.random.key(3)
  sigmas = np.geomspace(1.0, 0.01, 10)
  with jax.enable_x64(True):
    params, x = _setup(np.float64)
    got = losses.dsm_loss(_h_jax, params, jnp.asarray(x), key, jnp.asarray(sigmas))
    levels, z = losses.sample_dsm_noise(key, SHAPE, 10, jnp.float64)
    levels, z = np.asarray(levels), np.asarray(z)
  assert len(set(levels.tolist())) > 1  # per-example sigma
  want = _numpy_dsm(params, x, sigmas[levels], z)
  np.testing.assert_allclose(float(got), want, rtol=1e-12)
  # float32 agrees to float32 precision.
  params32, x32 = _setup(np.float32)
  got32 = losses.dsm_loss(_h_jax, params32, jnp.asarray(x32), key,
                          losses.noise_levels(1.0, 0.01, 10))
  levels32, z32 = losses.sample_dsm_noise(key, SHAPE, 10)
  levels32 = np.asarray(levels32)
  want32 = _numpy_dsm(params, x, sigmas[levels32], np.asarray(z32, np.float64))
  np.testing.assert_allclose(float(got32), want32, rtol=1e-4)


def test_dsm_loss_is_zero_only_for_the_ideal_denoiser_direction():
  """With h = -z exactly (an oracle), the loss is 0; with h = 0 it is 1/2 E||z||^2."""
  key = jax.random.key(1)
  x = jnp.zeros(SHAPE)
  sigma = jnp.full((SHAPE[0],), 0.5)
  _, z = losses.sample_dsm_noise(key, SHAPE, 1)
  oracle = lambda p, xn, t: -(xn - x) / 0.5
  assert float(losses.dsm_loss_given_noise(oracle, None, x, sigma, z)) == pytest.approx(0, abs=1e-10)
  zero = lambda p, xn, t: jnp.zeros_like(xn)
  want = 0.5 * np.mean(np.sum(np.asarray(z) ** 2, axis=(1, 2, 3)))
  assert float(losses.dsm_loss_given_noise(zero, None, x, sigma, z)) == pytest.approx(want, rel=1e-6)


@pytest.mark.reference
def test_dsm_gradient_matches_finite_differences():
  key = jax.random.key(7)
  with jax.enable_x64(True):
    params, x = _setup(np.float64)
    sigmas = jnp.asarray(np.geomspace(1.0, 0.01, 10))
    loss = lambda p: losses.dsm_loss(_h_jax, p, jnp.asarray(x), key, sigmas)
    grad = jax.grad(loss)(params)
    eps = 1e-6
    rng = np.random.default_rng(1)
    for name in ("w", "b"):
      for _ in range(6):
        idx = tuple(rng.integers(0, s) for s in params[name].shape)
        plus = jax.tree.map(np.copy, params)
        minus = jax.tree.map(np.copy, params)
        plus[name][idx] += eps
        minus[name][idx] -= eps
        fd = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
        np.testing.assert_allclose(float(grad[name][idx]), fd, rtol=1e-6, atol=1e-9)


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 10)) * 3
  labels = rng.integers(0, 10, size=6)
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -log_softmax[np.arange(6), labels].mean()
  got = losses.mean_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  assert float(got) == pytest.approx(want, rel=1e-5)
