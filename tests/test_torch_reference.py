"""The PyTorch reference of benchmarks/ (network conversion and the two ADP purifiers) against
jaxpure, and the benchmark's one-line errors. Skipped when torch is not installed."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference as tr  # noqa: E402
from jaxpure import models  # noqa: E402
from jaxpure.purifiers import adp, common  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flax_net(shape, ngf, pool="max", seed=0, jitter=0.05):
  """(module, params) of jaxpure's NCSNv2 (score head) with every parameter moved off its
  init by N(0, jitter²), so biases, beta and alpha are not their trivial initial values."""
  module = models.create("ncsnv2", ngf=ngf, channels=shape[-1], head="score", pool=pool)
  params = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1,) + shape))["params"]
  rng = np.random.default_rng(seed)
  return module, jax.tree.map(
      lambda p: (p + jitter * rng.normal(size=p.shape)).astype(np.float32), params)


def _nchw(x):
  return torch.from_numpy(np.array(np.asarray(x).transpose(0, 3, 1, 2), order="C"))


@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
@pytest.mark.reference
@pytest.mark.parametrize("shape,ngf,pool", [
    ((8, 8, 1), 4, "max"), pytest.param((16, 16, 3), 4, "avg", marks=pytest.mark.slow)])
def test_torch_net_matches_flax_net(shape, ngf, pool):
  """Same outputs to 1e-5: exactly (to rounding, ~1e-12) in float64, and to float32
  rounding, 1e-5 of the output's scale, in float32."""
  module, params = _flax_net(shape, ngf, pool)
  x = jax.random.uniform(jax.random.key(2), (3,) + shape, minval=-0.1, maxval=1.1)
  net = tr.net_from_flax(jax.device_get(params), ngf, shape[-1], pool)
  apply = jax.jit(module.apply)
  want = np.asarray(apply({"params": params}, x))
  with torch.inference_mode():
    got = net(_nchw(x)).numpy().transpose(0, 2, 3, 1)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    x64 = jnp.asarray(x, jnp.float64)
    want64 = np.asarray(jax.jit(module.apply)({"params": params64}, x64))
  with torch.inference_mode():
    got64 = net.double()(_nchw(x64)).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got64, want64, rtol=0, atol=1e-10)


@pytest.mark.reference  # the PyTorch reference converter refuses what it cannot map
@pytest.mark.slow  # 15 s or more, building the networks; CI runs the reference tier whole
def test_conversion_is_strict():
  module, params = _flax_net((8, 8, 1), 4)
  state = tr.flax_to_state_dict(jax.device_get(params))
  assert set(state) == set(tr.TorchNCSNv2(4, 1).state_dict())
  bad = dict(params)
  bad.pop("end_conv")
  with pytest.raises(RuntimeError, match="end_conv"):
    tr.net_from_flax(jax.device_get(bad), 4, 1)


@pytest.mark.reference
@pytest.mark.slow  # float64 purifications in both frameworks
def test_purifiers_match_jaxpure_float64():
  """Both torch purifiers, given jaxpure's own x0, give jaxpure's purified images (float64,
  where ADP's finite-difference step is well conditioned), with examples stopping at
  different steps (tau picked from the free run's step sizes)."""
  shape, b = (8, 8, 1), 5
  module, params = _flax_net(shape, 4, jitter=0.02)
  h = models.score_function(module)
  purify = jax.jit(adp.purify, static_argnums=(0, 4))
  with jax.enable_x64(True):
    params64 = {"params": jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)}
    x = jax.random.uniform(jax.random.key(3), (b,) + shape, jnp.float64)
    keys = common.restart_keys(common.example_keys(jax.random.key(4), jnp.arange(b)), 2)
    free = adp.Settings(max_iter=6, tau=1e-12)
    _, trace = purify(h, params64, x, keys, free)
    tau = float(np.median(np.asarray(trace["step_scalars"]["alpha"])))
    s = dataclasses.replace(free, tau=tau)
    want, trace = purify(h, params64, x, keys, s)
    want, x0 = np.asarray(want), np.asarray(trace["iterates"][:, 0])
    active = np.asarray(trace["step_mask"])
  assert active.any() and not active.all()  # some examples stop mid-way

  net = tr.net_from_flax(jax.device_get(params), 4, 1).double()
  ts = tr.AdpSettings.like(s)
  x0_t = torch.from_numpy(np.array(x0.transpose(0, 1, 4, 2, 3), order="C"))
  steps = []
  outs = {"official_loop": tr.purify_official_loop(net, x0_t, ts, steps),
          "batched": tr.make_batched_purifier(net, ts)(x0_t),
          "batched_channels_last": tr.make_batched_purifier(
              tr.net_from_flax(jax.device_get(params), 4, 1).double().to(
                  memory_format=torch.channels_last), ts, channels_last=True)(x0_t)}
  for name, out in outs.items():
    got = out.numpy().transpose(0, 1, 3, 4, 2)
    assert np.max(np.abs(got - want)) <= 1e-4, name
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=name)
  # The official loop stops a restart's chain at the first step where all have stopped.
  stopped_all = ~active.any(axis=2)  # [R, T]
  expect = [int(np.argmax(row)) + 1 if row.any() else s.max_iter for row in stopped_all]
  assert steps == expect


def _bench(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "bench_purify.py"),
                         *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args,message", [
    (("--quick", "--batch", "0"), "--batch=0"),
    (("--quick", "--restarts", "10", "--batch", "100000000"), "lower --batch"),
    (("--quick", "--device", "tpu"), "invalid choice"),
])
def test_bench_bad_input_is_one_line_exit_2(args, message):
  r = _bench(*args)
  assert r.returncode == 2, r.stderr
  assert message in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_bench_absent_gpu_is_one_line_exit_2():
  r = _bench("--quick", "--device", "gpu")
  assert r.returncode == 2, r.stderr
  assert "--device gpu" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bench_energy_head_is_refused(tmp_path):
  config = tmp_path / "energy.py"
  config.write_text("from configs import digits\n\n"
                    "def get_config():\n"
                    "  c = digits.get_config()\n"
                    "  c.score.head = 'energy'\n"
                    "  return c\n")
  r = _bench("--quick", "--config", str(config))
  assert r.returncode == 2, r.stderr
  assert "'score' head only" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
@pytest.mark.reference
@pytest.mark.parametrize("name,fields,shape", [
    ("small_cnn", dict(width=4), (8, 8, 1)),
    ("wrn", dict(depth=10, width=1, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)), (8, 8, 3))])
def test_torch_classifier_matches_flax_classifier(name, fields, shape):
  """The converted classifier gives the Flax logits (float64, eval mode: running BatchNorm
  statistics moved off their init too)."""
  module = models.create(name, num_classes=7, **fields)
  variables = jax.jit(lambda k, x: module.init(k, x, train=False))(
      jax.random.key(0), jnp.zeros((1,) + shape))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(  # float32 values: the state dict holds float32
      lambda p: (p + 0.05 * rng.normal(size=p.shape)).astype(np.float32),
      jax.device_get(variables))
  if "batch_stats" in variables:  # running variances stay positive
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
  x = np.random.default_rng(2).uniform(size=(3,) + shape)
  with jax.enable_x64(True):
    want = np.asarray(module.apply(jax.tree.map(lambda p: jnp.asarray(p, jnp.float64),
                                                variables), jnp.asarray(x), train=False))
  net = tr.classifier_from_flax(variables, name, models.fields(module), shape).double()
  with torch.inference_mode():
    got = net(_nchw(x)).numpy()
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
