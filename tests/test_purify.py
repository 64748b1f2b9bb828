"""The ADP purifier family against independent NumPy loops of docs/design.md#1-the-method, and its structural
promises (through the Defense that runs it)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import parallel
from jaxpure.defense import Defense, ensemble
from jaxpure.errors import ConfigError
from jaxpure.purifiers import adp, common

SHAPE = (6, 4, 4, 1)
D = 16


def _params(dtype=np.float64, seed=0):
  rng = np.random.default_rng(seed)
  return {"w": (rng.normal(size=(D, D)) * 0.8).astype(dtype),
          "b": (rng.normal(size=(D,)) * 0.3).astype(dtype)}


@dataclasses.dataclass(frozen=True)
class S(adp.Settings):
  """ADP's settings and the number of restarts R (which the Defense holds)."""
  restarts: int = 10

  def __post_init__(self):
    super().__post_init__()
    _defense(h_jax, self)  # the Defense checks the restarts



def _defense(h, s: S) -> Defense:
  return Defense(score_fn=lambda p, x, t: h(p, x), logits_fn=None, family=adp,
                 settings=adp.Settings(**{f.name: getattr(s, f.name)
                                          for f in dataclasses.fields(adp.Settings)}),
                 restarts=s.restarts)


def purify(h, params, x, keys, s: S, return_trace=False):
  """R purifications [R, B, ...] (and the trace as {"alpha", "active", "iterates"})."""
  out, tr = _defense(h, s).purify({"score": params}, x, keys, s.restarts)
  tr = {"alpha": tr["step_scalars"]["alpha"], "active": tr["step_mask"],
        "iterates": tr["iterates"]}
  return (out, tr) if return_trace else out


def make_purifier(h, s: S, mesh=None):
  fn = _defense(h, s).make_purifier(s.restarts, mesh)
  return lambda params, x, keys: fn({"score": params}, x, keys)


def h_jax(params, x):
  """A tiny nonlinear field, per example: h(x) = tanh(x W + b) - 2 (x - 0.5)."""
  flat = x.reshape(x.shape[0], -1)
  out = jnp.tanh(flat @ params["w"] + params["b"]) - 2.0 * (flat - 0.5)
  return out.reshape(x.shape)


def h_np(params, x):
  """The same field for ONE example x [H, W, C], in NumPy."""
  flat = x.reshape(-1)
  return (np.tanh(flat @ params["w"] + params["b"]) - 2.0 * (flat - 0.5)).reshape(x.shape)


def adp_reference(params, x0, s: S):
  """docs/design.md#1-the-method for one example, float64, Python loop with a real `break`.

  Returns (x_T, alphas taken [T] (0 after stopping), stop step or None)."""
  x = x0.copy()
  alphas = np.zeros(s.max_iter)
  for t in range(s.max_iter):
    g = h_np(params, x)
    z = np.sum(g * h_np(params, x + s.delta * g)) / np.sum(g * g)
    alpha = s.lam * s.delta / (1 - z)
    alpha = min(max(alpha, s.alpha_min), s.alpha_max) if np.isfinite(alpha) else s.alpha_max
    if alpha <= s.tau:
      return x, alphas, t
    alphas[t] = alpha
    x = np.clip(x + alpha * g, 0, 1)
  return x, alphas, None


def _x(seed=1, dtype=np.float64):
  return np.random.default_rng(seed).uniform(0.1, 0.9, size=SHAPE).astype(dtype)


def _keys(n=SHAPE[0], seed=0):
  return common.example_keys(jax.random.key(seed), jnp.arange(n))


def test_adp_matches_float64_numpy_loop():
  params, x = _params(), _x()
  with jax.enable_x64(True):
    # Pick tau inside the range of the alphas so that some examples stop mid-way.
    free = S(restarts=2, max_iter=8, tau=1e-12, lam=0.05)
    _, tr = purify(h_jax, params, jnp.asarray(x), _keys(), free, return_trace=True)
    free_alpha = np.asarray(tr["alpha"]).transpose(0, 2, 1).reshape(-1, 8)  # [R*B, T]

    def stop_steps(tau):  # until it stops, an example's alphas are those of the free run
      return [int(np.argmax(a <= tau)) if (a <= tau).any() else None for a in free_alpha]

    values = np.unique(free_alpha)
    i = max(range(len(values) - 1), key=lambda i: (None in stop_steps(values[i]),
                                                   len(set(stop_steps(values[i])))))
    # Halfway to the next value: the same stops as values[i], but no alpha sits on the
    # threshold, where rounding differences between JAX and NumPy would decide the stop.
    tau = float((values[i] + values[i + 1]) / 2)
    s = S(restarts=2, max_iter=8, tau=tau, lam=0.05)
    out, tr = purify(h_jax, params, jnp.asarray(x), _keys(), s, return_trace=True)
    out, alpha, active, iterates = (np.asarray(out), np.asarray(tr["alpha"]),
                                    np.asarray(tr["active"]), np.asarray(tr["iterates"]))
  stops = []
  for r in range(2):
    for b in range(SHAPE[0]):
      x0 = iterates[r, 0, b]
      want_x, want_alpha, stop = adp_reference(params, x0, s)
      stops.append(stop)
      np.testing.assert_allclose(alpha[r, :, b], want_alpha, rtol=1e-9, atol=1e-12)
      got_stop = int(np.argmin(active[r, :, b])) if not active[r, :, b].all() else None
      assert got_stop == stop
      np.testing.assert_allclose(out[r, b], want_x, atol=1e-5)
  # The case mix makes the test meaningful: stopped at different steps and never stopped.
  assert None in stops and len({t for t in stops if t is not None}) >= 2, stops


def test_float32_purifier_agrees_with_float64_reference():
  params, x = _params(np.float32), _x(dtype=np.float32)
  s = S(restarts=1, max_iter=6)
  out, tr = purify(h_jax, params, jnp.asarray(x), _keys(), s, return_trace=True)
  for b in range(SHAPE[0]):
    want, _, _ = adp_reference(_params(), np.asarray(tr["iterates"][0, 0, b], np.float64), s)
    np.testing.assert_allclose(np.asarray(out[0, b]), want, atol=1e-5)


def test_randomization_is_clipped_gaussian_with_sigma_n():
  x = jnp.full((64, 8, 8, 1), 0.5)
  s = S(sigma_n=0.1, restarts=3, max_iter=1)
  _, tr = purify(lambda p, x: jnp.zeros_like(x), None, x,
                   _keys(64), s, return_trace=True)
  x0 = np.asarray(tr["iterates"][:, 0])
  noise = x0 - 0.5
  assert abs(noise.std() - 0.1) < 0.005 and abs(noise.mean()) < 0.005
  assert not np.allclose(x0[0], x0[1])  # restarts draw different noise
  big = S(sigma_n=1.0, restarts=1, max_iter=1)
  _, tr = purify(lambda p, x: jnp.zeros_like(x), None, x, _keys(64), big, return_trace=True)
  x0 = np.asarray(tr["iterates"][:, 0])
  assert x0.min() == 0.0 and x0.max() == 1.0  # clipped to the image range


def test_each_example_draws_from_the_key_of_its_global_index():
  """Example i's key is fold_in(key, i) of its global index i (DESIGN: results do not depend
  on how the data is cut into batches): a slice of the data gets the keys the whole set gives
  those examples, and the same image at different indices is randomised differently."""
  key, idx = jax.random.key(7), jnp.arange(8)
  whole = np.asarray(jax.random.key_data(common.example_keys(key, idx)))
  np.testing.assert_array_equal(
      np.asarray(jax.random.key_data(common.example_keys(key, idx[5:]))), whole[5:])
  for i in range(8):
    np.testing.assert_array_equal(whole[i],
                                  np.asarray(jax.random.key_data(jax.random.fold_in(key, i))))
  x = jnp.full((8, 4, 4, 1), 0.5)
  s = S(sigma_n=0.1, restarts=1, max_iter=1)
  _, tr = purify(lambda p, x: jnp.zeros_like(x), None, x, common.example_keys(key, idx), s,
                 return_trace=True)
  x0 = np.asarray(tr["iterates"][0, 0]).reshape(8, -1)
  assert min(np.abs(x0[i] - x0[j]).max() for i in range(8) for j in range(i)) > 1e-3


def test_binary_noise_has_the_right_magnitude():
  x = jnp.full((16, 4, 4, 1), 0.5)
  s = S(sigma_n=0.25, noise="binary", restarts=2, max_iter=1)
  _, tr = purify(lambda p, x: jnp.zeros_like(x), None, x, _keys(16), s, return_trace=True)
  dev = np.asarray(tr["iterates"][:, 0]) - 0.5
  np.testing.assert_allclose(np.abs(dev), 0.25 * math.sqrt(2 / math.pi), rtol=1e-6)
  assert 0.4 < (dev > 0).mean() < 0.6


def test_batch_is_purified_as_examples_alone():
  params, x = _params(np.float32), _x(dtype=np.float32)
  keys = _keys()
  s = S(restarts=3, max_iter=5)
  batch = np.asarray(purify(h_jax, params, jnp.asarray(x), keys, s))
  for b in range(SHAPE[0]):
    alone = np.asarray(purify(h_jax, params, jnp.asarray(x[b:b + 1]), keys[b:b + 1], s))
    np.testing.assert_allclose(batch[:, b], alone[:, 0], atol=1e-6)


def test_stopped_examples_never_move_and_alpha_in_bounds():
  params, x = _params(np.float32), _x(dtype=np.float32)
  free = S(restarts=4, max_iter=10, tau=1e-12)
  _, tr = purify(h_jax, params, jnp.asarray(x), _keys(), free, return_trace=True)
  s = S(restarts=4, max_iter=10, tau=float(np.median(tr["alpha"])))
  out, tr = purify(h_jax, params, jnp.asarray(x), _keys(), s, return_trace=True)
  alpha, active, it = (np.asarray(tr["alpha"]), np.asarray(tr["active"]),
                       np.asarray(tr["iterates"]))
  assert (~active).any() and active.any()
  # once inactive, always inactive; its alpha is 0 and its image is frozen
  assert np.all(np.diff(active.astype(int), axis=1) <= 0)
  assert np.all(alpha[~active] == 0)
  taken = alpha[active]
  assert np.all((taken >= s.alpha_min) & (taken <= s.alpha_max) & (taken > s.tau))
  for r, t, b in zip(*np.nonzero(~active)):
    np.testing.assert_array_equal(it[r, t + 1, b], it[r, t, b])
  assert out.min() >= 0 and out.max() <= 1


def test_gd_follows_its_formula():
  params, x = _params(np.float32), _x(dtype=np.float32)
  s = S(method="gd", step_size=0.05, restarts=2, max_iter=4)
  _, tr = purify(h_jax, params, jnp.asarray(x), _keys(), s, return_trace=True)
  it = np.asarray(tr["iterates"], np.float64)
  p64 = _params()
  for r in range(2):
    for b in range(SHAPE[0]):
      for t in range(4):
        want = np.clip(it[r, t, b] + 0.05 * h_np(p64, it[r, t, b]), 0, 1)
        np.testing.assert_allclose(it[r, t + 1, b], want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(tr["alpha"]), 0.05)


def _langevin_noise(keys, r, restarts, t, shape, dtype):
  """The standard normal draw of step t, restart r, for every example [B, ...], rebuilt from
  the per-example keys [B] by hand: restart key = split(key, R)[r]; the chain splits it in two
  (randomising, steps); step t draws from fold_in(steps key, t)."""
  out = []
  for k in keys:
    restart = jax.random.split(k, restarts)[r]
    step_key = jax.random.split(restart)[1]
    out.append(np.asarray(jax.random.normal(jax.random.fold_in(step_key, t), shape, dtype)))
  return np.stack(out).astype(np.float64)


def test_langevin_follows_its_formula():
  # x_{t+1} = clip(x_t + a h(x_t) / sigma_p + sqrt(2 a) n_t, 0, 1), with n_t rebuilt from the
  # keys: a missing drift, a h without 1/sigma_p or a h / sigma_p^2 differ by >= 3e-3 |h|.
  params, x = _params(np.float32), _x(dtype=np.float32)
  a, sigma_p, R, T = 1e-3, 0.25, 2, 4
  s = S(method="langevin", step_size=a, sigma_p=sigma_p, sigma_n=0.05, restarts=R,
        max_iter=T)
  keys = _keys()
  out1, tr = purify(h_jax, params, jnp.asarray(x), keys, s, return_trace=True)
  out2 = purify(h_jax, params, jnp.asarray(x), keys, s)
  np.testing.assert_array_equal(np.asarray(out1), np.asarray(out2))  # same keys, same noise
  it = np.asarray(tr["iterates"], np.float64)
  p64 = _params()
  for r in range(R):
    for t in range(T):
      n = _langevin_noise(keys, r, R, t, SHAPE[1:], jnp.float32)
      for b in range(SHAPE[0]):
        want = np.clip(it[r, t, b] + a * h_np(p64, it[r, t, b]) / sigma_p
                       + math.sqrt(2 * a) * n[b], 0, 1)
        np.testing.assert_allclose(it[r, t + 1, b], want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(tr["alpha"]), a)
  assert np.asarray(tr["active"]).all()


@pytest.mark.reference
def test_eight_devices_give_the_one_device_result():
  params, x = _params(np.float32), np.random.default_rng(3).uniform(size=(16, 4, 4, 1))
  x = x.astype(np.float32)
  keys = _keys(16)
  s = S(restarts=3, max_iter=5)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    fn = make_purifier(h_jax, s, mesh=mesh)
    xs = jax.device_put(x, parallel.batch_sharding(mesh))
    ks = jax.device_put(keys, parallel.batch_sharding(mesh))
    out = fn(params, xs, ks)
    assert len(out.sharding.device_set) == len(devices)
    results.append(np.asarray(out))
  np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def test_jitted_purifier_traces_once_per_shape():
  calls = {"n": 0}

  def counting_h(params, x):
    calls["n"] += 1
    return h_jax(params, x)

  fn = make_purifier(counting_h, S(restarts=2, max_iter=3))
  params, x = _params(np.float32), jnp.asarray(_x(dtype=np.float32))
  fn(params, x, _keys())
  traced = calls["n"]
  assert traced > 0
  for seed in range(3):
    fn(params, x + 0.01 * seed, _keys(seed=seed))
  assert calls["n"] == traced
  fn(params, x[:3], _keys(3))  # a new shape traces again
  assert calls["n"] > traced


def test_ensemble_readouts():
  # 3 restarts, 2 examples, 3 classes, built so the read-outs disagree on example 0.
  logits = np.array([[[10.0, 0, 0], [0, 1, 0]],
                     [[0, 0.1, 0], [0, 1, 0]],
                     [[0, 0.1, 0], [2, 0, 0]]])
  got = {k: np.asarray(v) for k, v in ensemble(jnp.asarray(logits)).items()}
  softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_array_equal(got["mean_softmax"], softmax.mean(0).argmax(-1))
  np.testing.assert_array_equal(got["mean_logits"], logits.mean(0).argmax(-1))
  votes = np.stack([np.bincount(logits[:, b].argmax(-1), minlength=3) for b in range(2)])
  np.testing.assert_array_equal(got["majority_vote"], votes.argmax(-1))
  assert got["mean_softmax"][0] == 0 and got["majority_vote"][0] == 1


@pytest.mark.parametrize("kwargs", [dict(sigma_n=-0.1), dict(max_iter=0), dict(restarts=0),
                                    dict(lam=0.0), dict(method="nope"), dict(noise="uniform")])
def test_bad_settings_are_refused(kwargs):
  with pytest.raises(ConfigError, match=list(kwargs)[0]):
    S(**kwargs)


def test_gradient_is_finite_where_the_curvature_term_is_exactly_zero():
  # A constant field makes z = <g, g> / <g, g> = 1 exactly: alpha takes alpha_max, and its
  # gradient must be 0, not 0 * inf = NaN.
  const = lambda params, x: 0.0 * x + 0.1  # noqa: E731  (constant, but a function of x)
  s = S(restarts=2, max_iter=3, sigma_n=0.05)
  x = jnp.full((3, 4, 4, 1), 0.5)
  keys = _keys(3)
  out, tr = purify(const, None, x, keys, s, return_trace=True)
  np.testing.assert_allclose(np.asarray(tr["alpha"]), s.alpha_max)  # the forward fallback
  g = jax.grad(lambda x: jnp.sum(purify(const, None, x, keys, s)))(x)
  assert np.all(np.isfinite(np.asarray(g)))
