"""The PyTorch DiffPure reference of benchmarks/ (its DDPM++ against the original code's outputs
and against jaxpure's module, its purification chain against jaxpure's). Skipped when torch is
not installed."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import bench_attack  # noqa: E402
from benchmarks import torch_diffpure as td  # noqa: E402
from jaxpure import importers, models  # noqa: E402
from jaxpure.attacks import eot  # noqa: E402
from jaxpure.defense import Defense  # noqa: E402
from jaxpure.importers import ddpmpp as imp  # noqa: E402
from jaxpure.importers import torch_io  # noqa: E402
from jaxpure.purifiers import common, diffpure  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
# Digits size: 8x8x1, two levels (8, 4), attention at 4, time-conditioned.
SMALL = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), channels=1)
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _nchw(x):
  return torch.from_numpy(np.array(np.asarray(x).transpose(0, 3, 1, 2), order="C"))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _small(seed=0, jitter=0.05):
  """(module, params) of a digits-size DDPMpp with every parameter moved off its init by
  N(0, jitter²): DDPM++ starts its blocks' last layers at ~0, which would hide their wiring."""
  module = models.create("ddpmpp", **SMALL)
  params = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)),
                                jnp.zeros((1,)))["params"]
  rng = np.random.default_rng(seed)
  return module, jax.tree.map(
      lambda p: (p + jitter * rng.normal(size=p.shape)).astype(np.float32), params)


@pytest.mark.reference
@pytest.mark.parametrize("weights", ["model", "ema"])
def test_original_checkpoint_reproduces_the_original_outputs(weights):
  """The original NCSNpp's state dict loads strictly (its VE buffer `sigmas` apart) and gives
  the outputs the original code wrote for it (tests/data, random weights, nf 16, CIFAR-10 size)."""
  ckpt = torch_io.load_torch_checkpoint(os.path.join(DATA, "ddpmpp_cifar10_nf16.pth"))
  ref = dict(np.load(os.path.join(DATA, "ddpmpp_cifar10_nf16_reference.npz")))
  arch = imp.infer_architecture(ckpt["model"], image_size=32)
  state = importers.strip_prefix(ckpt["model"])[0] if weights == "model" else imp.ema_state_dict(ckpt)
  want = ref["model_output_nchw" if weights == "model" else "ema_model_output_nchw"]
  net = td.TorchDDPMpp(**arch)
  net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()
                       if k not in imp.BUFFERS}, strict=True)
  with torch.inference_mode():
    got = net.eval()(torch.from_numpy(ref["x_nchw"]), torch.from_numpy(ref["labels"])).numpy()
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
@pytest.mark.reference
def test_from_flax_matches_the_flax_module():
  """jaxpure's parameters moved into the PyTorch layout: the same outputs, to float32 rounding
  in float32 and to ~1e-12 in float64."""
  module, params = _small()
  arch = dict(models.fields(module), image_size=8)
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), minval=-1.2, maxval=1.2)
  labels = jnp.array([1.0, 250.0, 999.0])
  net = td.ddpmpp_from_flax(jax.device_get(params), arch)
  want = np.asarray(jax.jit(module.apply, compiler_options=_FAST_COMPILE)(
      {"params": params}, x, labels))
  with torch.inference_mode():
    got = _nhwc(net(_nchw(x), torch.from_numpy(np.array(labels))))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    want64 = np.asarray(jax.jit(module.apply, compiler_options=_FAST_COMPILE)(
        {"params": p64}, jnp.asarray(x, jnp.float64), jnp.asarray(labels, jnp.float64)))
  with torch.inference_mode():
    got64 = _nhwc(net.double()(_nchw(np.asarray(x, np.float64)),
                               torch.from_numpy(np.asarray(labels, np.float64))))
  np.testing.assert_allclose(got64, want64, rtol=0, atol=1e-10)


@pytest.mark.reference  # the PyTorch reference converter refuses what it cannot map
@pytest.mark.slow  # 10 s or more, building the networks; CI runs the reference tier whole
def test_conversion_is_strict():
  module, params = _small()
  bad = dict(jax.device_get(params))
  bad.pop("conv_out")
  with pytest.raises(RuntimeError, match="Missing key"):
    td.ddpmpp_from_flax(bad, dict(models.fields(module), image_size=8))


@pytest.mark.reference
@pytest.mark.slow  # ~30 s each, mostly compiling; the gradient test below covers "sde" too
@pytest.mark.parametrize("sampler", diffpure.SAMPLERS)
def test_chain_matches_jaxpure_float64(sampler):
  """Given the normal draws jaxpure makes from its keys (`bench_attack.diffpure_noise`), the
  PyTorch chain purifies to jaxpure's images in float64, for every sampler; and a wrong step
  noise would show (the check can fail)."""
  module, params = _small(jitter=0.02)
  s = diffpure.Settings(t_star=0.3, num_steps=4, sampler=sampler)
  h = models.score_function(module)
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    x = jax.random.uniform(jax.random.key(3), (3, 8, 8, 1), jnp.float64)
    keys = common.example_keys(jax.random.key(4), jnp.arange(3))
    want, _ = jax.jit(lambda p, x, k: diffpure.purify(h, {"params": p}, x, k, s))(
        p64, x, common.restart_keys(keys, 2))
    noise, steps = (np.asarray(a) for a in bench_attack.diffpure_noise(keys, x, 2, s.num_steps))
  net = td.ddpmpp_from_flax(jax.device_get(params), dict(models.fields(module), image_size=8))
  net = net.double()
  ts = td.DiffPureSettings.like(s)
  got = []
  for r in range(2):
    with torch.inference_mode():
      out = td.diffpure_chain(net, _nchw(x), _nchw(noise[r]),
                              torch.stack([_nchw(z) for z in steps[r]]), ts)
    got.append(_nhwc(out))
  want = np.asarray(want)
  assert np.std(want) > 0.01
  np.testing.assert_allclose(np.stack(got), want, rtol=0, atol=1e-10)
  if sampler != "ddim":  # the deterministic sampler draws no step noise
    with torch.inference_mode():
      off = _nhwc(td.diffpure_chain(net, _nchw(x), _nchw(noise[0]),
                                    torch.stack([_nchw(z) for z in steps[1]]), ts))
    assert np.max(np.abs(off - want[0])) > 1e-3


@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
@pytest.mark.reference
def test_exact_eot_gradient_matches_jaxpure_float64():
  """The PyTorch EOT gradient through DiffPure (autograd, with and without per-step
  checkpointing) equals jaxpure's `eot.exact_eot_gradient` in float64, for a linear classifier
  read in NHWC order on both sides."""
  module, params = _small(jitter=0.02)
  s = diffpure.Settings(t_star=0.3, num_steps=3, sampler="sde")
  n, b = 2, 3
  w = np.random.default_rng(5).normal(size=(64, 10)) * 0.5
  defense = Defense(score_fn=models.score_function(module),
                    logits_fn=lambda v, x: x.reshape(x.shape[0], -1) @ v["w"],
                    family=diffpure, settings=s, restarts=n)
  y = np.array([1, 7, 3])
  with jax.enable_x64(True):
    variables = {"score": {"params": jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)},
                 "classifier": {"w": jnp.asarray(w)}}
    x = jax.random.uniform(jax.random.key(3), (b, 8, 8, 1), jnp.float64)
    keys = common.example_keys(jax.random.key(4), jnp.arange(b))
    loss, grad = (np.asarray(a) for a in jax.jit(eot.exact_eot_gradient(defense, "ce", n))(
        variables, keys, x, jnp.asarray(y)))
    noise, steps = (np.asarray(a) for a in bench_attack.diffpure_noise(keys, x, n, s.num_steps))
  net = td.ddpmpp_from_flax(jax.device_get(params), dict(models.fields(module), image_size=8))
  net = net.double()
  w_t = torch.from_numpy(w)
  clf = lambda z: z.permute(0, 2, 3, 1).reshape(z.shape[0], -1) @ w_t  # noqa: E731
  steps_t = torch.stack([torch.stack([_nchw(z) for z in steps[r]]) for r in range(n)])
  assert np.abs(grad).max() > 1e-3
  for checkpoint in (False, True):
    loss_t, grad_t = td.exact_eot_gradient(
        net, clf, _nchw(x), torch.from_numpy(y), torch.stack([_nchw(a) for a in noise]),
        steps_t, td.DiffPureSettings.like(s), checkpoint)
    np.testing.assert_allclose(loss_t.numpy(), loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_nhwc(grad_t), grad, rtol=0, atol=1e-10 * np.abs(grad).max())
