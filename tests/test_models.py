"""Tests of jaxpure.models: registry, NCSNv2 (score and energy heads), layers, classifiers.

Numeric checks compare against independent NumPy float64 references or float64 central finite
differences. Models are tiny (ngf 8); the digits variables are drawn once with NumPy and the
jitted functions are shared, to keep the file fast. The NCSNv2 layers' shapes and wiring are
pinned by the original code's outputs at 28x28x1 and 32x32x3 (tests/data, test_importers.py),
so no test here checks shapes alone.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import models
from jaxpure.models import classifiers
from jaxpure.models import layers
from jaxpure.models import ncsnv2

NGF = 8


def _key(seed=0):
  # rbg keys: XLA's CPU compile of many threefry draws (one per parameter) is slow.
  return jax.random.key(seed, impl="rbg")


def _n_params(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


_DIGITS_SCORE = models.create("ncsnv2", ngf=NGF, channels=1, head="score")
_DIGITS_ENERGY = models.create("ncsnv2", ngf=NGF, channels=1, head="energy")
# Shared jitted functions: tests reusing them at the same shapes hit the compilation cache.
_SCORE_APPLY = jax.jit(_DIGITS_SCORE.apply)
_ENERGY_APPLY = jax.jit(_DIGITS_ENERGY.apply)
_SCORE_FIELD = jax.jit(models.score_function(_DIGITS_SCORE))
_ENERGY_FIELD = jax.jit(models.score_function(_DIGITS_ENERGY))


def _random_variables(module, x, seed=0):
  """Variables shaped like ``module.init``'s, drawn with NumPy (no XLA compile of init).

  Kernels ~ N(0, 1/fan_in), InstanceNorm++ alpha/gamma ~ N(1, 0.02²), biases/beta ~ N(0, 0.1²).
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, _key(seed), x)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ("alpha", "gamma"):
      value = 1.0 + 0.02 * rng.normal(size=leaf.shape)
    else:
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree.map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def digits_vars():
  """Variables of NCSNv2(ngf=8, channels=1) for 8x8x1 images (both heads share them)."""
  return _random_variables(_DIGITS_SCORE, jnp.zeros((1, 8, 8, 1)))


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_create():
  assert {"ncsnv2", "small_cnn", "wrn"} <= set(models.names())
  assert models.names() == sorted(models.names())
  net = models.create("ncsnv2", ngf=4, channels=1, head="energy")
  assert isinstance(net, ncsnv2.NCSNv2)
  assert (net.ngf, net.channels, net.head) == (4, 1, "energy")
  assert isinstance(models.create("small_cnn"), classifiers.SmallCNN)
  assert isinstance(models.create("wrn", depth=10), classifiers.WideResNet)


def test_unknown_model_raises():
  with pytest.raises(ValueError, match=r"unknown model 'resnet9000'; expected one of \["):
    models.create("resnet9000")


def test_register_adds_and_rejects_duplicates():

  class Tiny(nn.Module):

    @nn.compact
    def __call__(self, x):
      return x

  try:
    models.register("_test_tiny", Tiny)
    assert "_test_tiny" in models.names()
    assert isinstance(models.create("_test_tiny"), Tiny)
    with pytest.raises(ValueError, match="already registered"):
      models.register("_test_tiny", type("Other", (nn.Module,), {}))
    with pytest.raises(ValueError, match="Module class"):
      models.register("_test_not_a_module", object)
  finally:
    models.MODELS.pop("_test_tiny", None)
  assert "_test_tiny" not in models.names()


def test_bad_head_raises():
  net = models.create("ncsnv2", ngf=NGF, channels=1, head="potential")
  with pytest.raises(ValueError, match="head must be one of"):
    jax.eval_shape(net.init, _key(), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="head 'score' or 'energy'"):
    models.score_function(net)


def test_wrong_channels_raises():
  net = models.create("ncsnv2", ngf=NGF, channels=3)
  with pytest.raises(ValueError, match=r"expected x of shape \[B, H, W, 3\]"):
    jax.eval_shape(net.init, _key(), jnp.zeros((1, 8, 8, 1)))


# ----------------------------------------------------------------------------- NCSNv2


def test_ncsnv2_forward_digits(digits_vars):
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1))
  f = _SCORE_APPLY(digits_vars, x)
  e = _ENERGY_APPLY(digits_vars, x)
  chex.assert_shape(f, x.shape)
  chex.assert_shape(e, (3,))
  chex.assert_tree_all_finite((f, e))
  assert float(jnp.std(f)) > 1e-3  # not a constant map
  # The energy is the documented function of the shared body output f(x).
  chex.assert_trees_all_close(e, 0.5 * jnp.sum((x - f) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  # The score head's field is the module's output itself.
  chex.assert_trees_all_close(_SCORE_FIELD(digits_vars, x, jnp.ones(3)), f)


@pytest.mark.reference
@pytest.mark.slow  # float64 finite differences through the NCSNv2
def test_energy_head_is_minus_grad_by_finite_differences(digits_vars):
  rng = np.random.default_rng(0)
  eps = 1e-5
  coords = [(0, 0, 0), (0, 3, 5), (0, 7, 7), (1, 2, 2), (1, 6, 1), (1, 4, 4)]
  with jax.enable_x64(True):
    net = _DIGITS_ENERGY
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), digits_vars)
    x = rng.uniform(-0.05, 1.05, size=(2, 8, 8, 1))
    # One batch: x itself, then x_b ± eps at each coordinate (examples are independent).
    plus, minus = x[[b for b, _, _ in coords]], x[[b for b, _, _ in coords]]
    for k, (_, i, j) in enumerate(coords):
      plus[k, i, j, 0] += eps
      minus[k, i, j, 0] -= eps
    batch = jnp.asarray(np.concatenate([x, plus, minus]))
    energies, h = jax.jit(lambda v, xs: (
        net.apply(v, xs), models.score_function(net)(v, xs, jnp.ones(xs.shape[0]))))(v64, batch)
    assert h.dtype == jnp.float64
  n = len(coords)
  fd = (np.asarray(energies[2:2 + n]) - np.asarray(energies[2 + n:])) / (2 * eps)
  h = np.asarray(h)
  got = np.asarray([h[b, i, j, 0] for b, i, j in coords])
  np.testing.assert_allclose(got, -fd, rtol=1e-6, atol=1e-9)
  assert np.all(np.abs(fd) > 1e-4)  # the check is not vacuous


@pytest.mark.parametrize("head", ["score", "energy"])
def test_ncsnv2_batch_independence(digits_vars, head):
  h = _SCORE_FIELD if head == "score" else _ENERGY_FIELD
  x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 1))
  x = x.at[1].multiply(3.0)  # very different statistics for one example
  t = jnp.ones(3)
  batched = h(digits_vars, x, t)
  # Example i alone: a batch of copies of x_i has the same shape (no recompilation) and any
  # batch statistic of it equals x_i's own.
  alone = jnp.stack([h(digits_vars, jnp.repeat(x[i:i + 1], 3, axis=0), t)[0] for i in range(3)])
  chex.assert_trees_all_close(batched, alone, atol=1e-4, rtol=1e-4)
  assert float(jnp.max(jnp.abs(batched[0] - batched[1]))) > 1e-2  # examples do differ


# ----------------------------------------------------------------------------- layers


def _instance_norm_plus_np(x, alpha, gamma, beta, eps=1e-5):
  x = np.asarray(x, np.float64)
  out = np.empty_like(x)
  for b in range(x.shape[0]):
    mu = np.array([x[b, :, :, c].mean() for c in range(x.shape[-1])])
    var = np.array([x[b, :, :, c].var() for c in range(x.shape[-1])])
    mu_std = (mu - mu.mean()) / np.sqrt(mu.var(ddof=1) + eps)  # unbiased, as torch.var
    for c in range(x.shape[-1]):
      normed = (x[b, :, :, c] - mu[c]) / np.sqrt(var[c] + eps)
      out[b, :, :, c] = gamma[c] * (normed + alpha[c] * mu_std[c]) + beta[c]
  return out


def test_instance_norm_plus_matches_numpy():
  rng = np.random.default_rng(0)
  c = 5
  x = rng.normal(size=(3, 6, 7, c)) * rng.uniform(0.5, 3, size=c) + rng.normal(size=c) * 2
  alpha, gamma, beta = rng.normal(size=(3, c))
  with jax.enable_x64(True):
    variables = {"params": {"alpha": jnp.asarray(alpha), "gamma": jnp.asarray(gamma),
                            "beta": jnp.asarray(beta)}}
    got = layers.InstanceNormPlus().apply(variables, jnp.asarray(x))
    assert got.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(got), _instance_norm_plus_np(x, alpha, gamma, beta),
                             rtol=1e-10, atol=1e-10)


def test_instance_norm_plus_init():
  variables = layers.InstanceNormPlus().init(jax.random.key(0), jnp.zeros((1, 2, 2, 4096)))
  p = variables["params"]
  for name in ("alpha", "gamma"):
    assert abs(float(jnp.mean(p[name])) - 1.0) < 2e-3
    assert abs(float(jnp.std(p[name])) - 0.02) < 2e-3
  chex.assert_trees_all_equal(p["beta"], jnp.zeros(4096))
  assert not np.allclose(p["alpha"], p["gamma"])


def test_residual_block_identity_shortcut():
  block = layers.ResidualBlock(6)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 6))
  variables = jax.jit(block.init)(_key(1), x)
  assert "shortcut" not in variables["params"]
  # With a zero last conv the block is exactly the identity.
  zeroed = jax.tree.map(lambda a: a, variables)
  zeroed["params"]["conv2"] = jax.tree.map(jnp.zeros_like, zeroed["params"]["conv2"])
  chex.assert_trees_all_close(block.apply(zeroed, x), x)
  with pytest.raises(ValueError, match="resample must be None or 'down'"):
    layers.ResidualBlock(6, resample="up").init(jax.random.key(1), x)


def test_mean_pool_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 6, 8, 3)).astype(np.float32)
  expected = x.reshape(2, 3, 2, 4, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(layers.mean_pool2x2(jnp.asarray(x)), expected, rtol=1e-6)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_same_matches_numpy(kind):
  x = np.random.default_rng(0).normal(size=(2, 6, 7, 3))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)),
                  constant_values=-np.inf if kind == "max" else 0.0)
  expected = np.empty_like(x)
  for i in range(6):
    for j in range(7):
      win = padded[:, i:i + 5, j:j + 5, :]
      expected[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else win.sum(axis=(1, 2)) / 25
  got = layers.pool_same(jnp.asarray(x, jnp.float32), 5, kind)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_resize_bilinear_align_corners_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 4, 3, 2))
  h_out, w_out = 8, 7
  rows = np.linspace(0, 3, h_out)  # aligned corners: ends map onto ends
  cols = np.linspace(0, 2, w_out)
  expected = np.empty((2, h_out, w_out, 2))
  for b in range(2):
    for c in range(2):
      tmp = np.stack([np.interp(cols, np.arange(3), x[b, i, :, c]) for i in range(4)])
      expected[b, :, :, c] = np.stack(
          [np.interp(rows, np.arange(4), tmp[:, j]) for j in range(w_out)], axis=1)
  got = layers.resize_bilinear(jnp.asarray(x, jnp.float32), (h_out, w_out))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- classifiers


def _numpy_small_cnn(params, x, mean=0.5, std=0.5):
  """SmallCNN's documented forward in float64 NumPy: (conv3x3 SAME -> ReLU) x 2 -> 2x2 max pool,
  twice, then dense -> ReLU -> dense; x [B, H, W, C] in [0, 1] -> logits [B, K]."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h = (np.asarray(x, np.float64) - mean) / std
  for name in ("conv0_0", "conv0_1", "pool", "conv1_0", "conv1_1", "pool"):
    if name == "pool":
      b, hh, ww, c = h.shape
      h = h[:, :hh // 2 * 2, :ww // 2 * 2].reshape(b, hh // 2, 2, ww // 2, 2, c).max((2, 4))
      continue
    k, bias = p[name]["kernel"], p[name]["bias"]  # [3, 3, I, O]: cross-correlation
    pad = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(h.shape[:3] + (k.shape[-1],))
    for di in range(3):
      for dj in range(3):
        out += np.einsum("bhwi,io->bhwo", pad[:, di:di + h.shape[1], dj:dj + h.shape[2]],
                         k[di, dj])
    h = np.maximum(out + bias, 0)
  h = np.maximum(h.reshape(h.shape[0], -1) @ p["fc0"]["kernel"] + p["fc0"]["bias"], 0)
  return h @ p["fc1"]["kernel"] + p["fc1"]["bias"]


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (9, 7, 3)])
def test_small_cnn_matches_float64_numpy(shape):
  net = models.create("small_cnn", num_classes=7, width=4, mean=(0.5,), std=(0.5,))
  x = np.random.default_rng(2).uniform(size=(3,) + shape).astype(np.float32)
  variables = _random_variables(net, jnp.zeros((1,) + shape))
  assert set(variables) == {"params"}  # no batch statistics
  got = np.asarray(jax.jit(net.apply)(variables, x))
  want = _numpy_small_cnn(variables["params"], x)
  assert np.abs(want).max() > 0.1  # not vacuous
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_small_cnn_input_gradient_and_normalization():
  net = models.create("small_cnn", width=8)
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))
  variables = jax.jit(net.init)(_key(1), x)
  y = jnp.arange(4) % 10

  def loss(x):
    logits = net.apply(variables, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  g = jax.jit(jax.grad(loss))(x)
  chex.assert_shape(g, x.shape)
  chex.assert_tree_all_finite(g)
  assert float(jnp.max(jnp.abs(g))) > 0
  # The model normalises its input itself: mean/std act as (x - mean) / std.
  other = models.create("small_cnn", width=8, mean=(0.2,), std=(0.4,))
  chex.assert_trees_all_close(other.apply(variables, x),
                              net.apply(variables, (x - 0.2) / 0.4 * 0.5 + 0.5),
                              rtol=1e-5, atol=1e-5)


def test_wrn_28_10_param_count():
  net = models.create("wrn", depth=28, width=10, num_classes=10)
  variables = jax.eval_shape(net.init, _key(), jnp.zeros((1, 32, 32, 3)))
  assert abs(_n_params(variables["params"]) - 36.5e6) / 36.5e6 < 0.01
  assert "batch_stats" in variables


def test_wrn_train_and_eval():
  net = models.create("wrn", depth=10, width=1, num_classes=10)
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 3))
  variables = jax.jit(net.init)(_key(1), x)
  logits, updates = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  chex.assert_shape(logits, (4, 10))
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  new_vars = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
  eval_logits = jax.jit(net.apply)(new_vars, x)
  chex.assert_shape(eval_logits, (4, 10))
  # In eval mode examples never interact.
  chex.assert_trees_all_close(eval_logits[1:2], jax.jit(net.apply)(new_vars, x[1:2]),
                              rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="depth must be 6n"):
    jax.eval_shape(models.create("wrn", depth=27).init, _key(), x)
