"""DDPM++ (score_sde's NCSN++ in DiffPure's CIFAR-10 configuration): the Flax module, the
checkpoint converter against the original PyTorch code's outputs (tests/data, written by
the original code with random weights, in its own checkpoint layout), and the converter's strictness."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import models
from jaxpure.errors import ImporterError, UserInputError
from jaxpure.importers import ddpmpp as imp
from jaxpure.models.ddpmpp import timestep_embedding

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CKPT = os.path.join(DATA, "ddpmpp_cifar10_nf16.pth")
REF = os.path.join(DATA, "ddpmpp_cifar10_nf16_reference.npz")

# A digits-size configuration: 8x8x1, two levels (8, 4), attention at 4.
SMALL = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), channels=1)
# XLA's backend optimisations triple the compile time of these deep nets on CPU and are not
# needed for correctness checks.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(fn, **kw):
  return jax.jit(fn, compiler_options=_FAST_COMPILE, **kw)


def _std(t):
  """VP-SDE (β 0.1 -> 20) marginal std, in float32 as score_sde computes it."""
  t = np.asarray(t, np.float32)
  log_mean = np.float32(-0.25) * t ** 2 * np.float32(20.0 - 0.1) - np.float32(0.5 * 0.1) * t
  return np.sqrt(np.float32(1) - np.exp(np.float32(2) * log_mean))


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


# --- the original code's outputs (needs torch to read the .pth) -----------------------------


@pytest.fixture(scope="module")
def original():
  pytest.importorskip(
      "torch", reason="torch (optional extra) is needed to read the .pth reference checkpoint")
  from jaxpure.importers import torch_io  # pylint: disable=import-outside-toplevel
  ckpt = torch_io.load_torch_checkpoint(CKPT)
  ref = dict(np.load(REF))
  arch = imp.infer_architecture(ckpt["model"], image_size=32)
  fields = {k: v for k, v in arch.items() if k != "image_size"}
  module = models.create("ddpmpp", **fields)
  return ckpt, ref, arch, module, _jit(module.apply)


def test_infer_architecture_and_parameter_order(original):
  ckpt, ref, arch, _, _ = original
  assert arch == dict(nf=16, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                      channels=3, conditional=True, image_size=32)
  # model.parameters() order = state-dict order without the buffer 'sigmas'.
  assert imp.parameter_names(ckpt["model"]) == [str(n) for n in ref["parameter_order"]]


@pytest.mark.reference
@pytest.mark.parametrize("weights", ["model", "ema"])
def test_matches_original_outputs(original, weights):
  """Raw and EMA weights reproduce model(x, 999 t) to 1e-4 and the VP score -out/std(t) to
  1e-4 / std(t) (the same error, scaled as the score scales it)."""
  ckpt, ref, arch, _, apply = original
  if weights == "model":
    state, want, want_score = ckpt["model"], ref["model_output_nchw"], ref["score_nchw"]
  else:
    state, want, want_score = (imp.ema_state_dict(ckpt), ref["ema_model_output_nchw"],
                               ref["ema_score_nchw"])
  variables = imp.convert_state_dict(state, **arch)
  out = np.asarray(apply(variables, _nhwc(ref["x_nchw"]), jnp.asarray(ref["labels"])))
  out = out.transpose(0, 3, 1, 2)
  assert out.shape == want.shape
  np.testing.assert_allclose(out, want, rtol=0, atol=1e-4)
  std = _std(ref["t"])
  score = -out / std[:, None, None, None]
  err = np.abs(score - want_score).max(axis=(1, 2, 3))
  assert np.all(err <= 1e-4 / std), (err, 1e-4 / std)


def test_ema_differs_from_model_and_accepts_data_parallel_prefix(original):
  ckpt, _, arch, _, _ = original
  ema = imp.ema_state_dict(ckpt)
  assert set(ema) == set(ckpt["model"]) - {"sigmas"}
  assert not np.allclose(ema["all_modules.36.weight"], ckpt["model"]["all_modules.36.weight"])
  wrapped = dict(ckpt, model={"module." + k: v for k, v in ckpt["model"].items()})
  ema2 = imp.ema_state_dict(wrapped)
  assert list(ema2) == list(ema)
  a = imp.convert_state_dict(wrapped["model"], **arch)
  b = imp.convert_state_dict(ckpt["model"], **arch)
  jax.tree.map(np.testing.assert_array_equal, a, b)


# --- torch-free: the small module, a synthetic state dict in the original layout ------------


def _small_module(**overrides):
  return models.create("ddpmpp", **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def small():
  """(module, params moved off their init, jitted apply): init_scale 0 makes the last layers
  ~0, so every parameter gets N(0, 0.05²) added to make each one matter."""
  module = _small_module()
  x = jnp.zeros((1, 8, 8, 1))
  # unsafe_rbg: the same init; its RNG ops compile faster than threefry's (CPU time budget).
  params = _jit(module.init)(jax.random.key(0, impl="unsafe_rbg"), x, jnp.zeros((1,)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: np.asarray(p + 0.05 * rng.normal(size=p.shape), np.float32),
                        params)
  apply = _jit(module.apply, static_argnames="train")
  return module, params, apply


def _to_torch_layout(params, **architecture):
  """Inverse of the documented name/array mapping: Flax params -> a score_sde state dict."""
  order = imp.torch_module_order(**architecture)
  state = {"sigmas": np.linspace(0.01, 50, 1000, dtype=np.float32)}
  for i, name in enumerate(order):
    flat = jax.tree_util.tree_flatten_with_path(params[name])[0]
    for path, value in flat:
      path = [k.key for k in path]
      owner, leaf = (path[-2] if len(path) > 1 else name), path[-1]
      value = np.asarray(value)
      if owner.startswith("NIN_"):
        tleaf = {"kernel": "W", "bias": "b"}[leaf]
      else:
        tleaf = "weight" if leaf in ("kernel", "scale") else "bias"
        if leaf == "kernel":
          value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      state[".".join(["all_modules", str(i), *path[:-1], tleaf])] = value
  return state


def test_small_shapes_batch_independence_and_labels(small):
  """[2, 8, 8, 1] in, same shape out; the batch's outputs are its examples' outputs one by one;
  the labels condition the output."""
  module, params, apply = small
  v = {"params": params}
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1), minval=-1, maxval=1)
  labels = jnp.array([1.0, 999.0])
  out = np.asarray(apply(v, x, labels))
  assert out.shape == x.shape and np.all(np.isfinite(out))
  assert np.abs(out).max() > 1e-2  # not trivially zero
  ones = np.concatenate([np.asarray(apply(v, x[i:i + 1], labels[i:i + 1])) for i in range(2)])
  np.testing.assert_allclose(out, ones, rtol=0, atol=1e-5)
  swapped = np.asarray(apply(v, x, labels[::-1]))  # same images, each with the other's label
  assert np.abs(swapped - out).max(axis=(1, 2, 3)).min() > 1e-3
  with pytest.raises(ValueError, match="expected x of shape"):
    module.apply(v, jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,)))


def test_time_embedding_follows_the_images_dtype_not_the_labels(small):
  """float64 labels (a Python scalar under x64, say) leave a float32 network float32; float64
  images run it in float64, the time embedding included (float64 reference checks)."""
  module, params, apply = small
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1), minval=-1, maxval=1)
  with jax.enable_x64(True):
    labels = jnp.array([3.0, 500.0], jnp.float64)
    assert apply({"params": params}, x, labels).dtype == jnp.float32
    p64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    out64 = apply({"params": p64}, jnp.asarray(x, jnp.float64), labels)
    assert out64.dtype == jnp.float64
    emb = timestep_embedding(labels, 16, dtype=jnp.float64)
  angles = np.outer([3.0, 500.0], 1e4 ** (-np.arange(8) / 7))  # float64, f_k = 1e4^(-k/7)
  np.testing.assert_allclose(np.asarray(emb), np.concatenate([np.sin(angles), np.cos(angles)], 1),
                             rtol=0, atol=1e-12)


def test_dropout_only_in_training(small):
  _, params, apply = small
  v = {"params": params}
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1), minval=-1, maxval=1)
  labels = jnp.array([1.0, 999.0])
  eval_a = np.asarray(apply(v, x, labels))
  eval_b = np.asarray(apply(v, x, labels, train=False, rngs={"dropout": jax.random.key(9)}))
  np.testing.assert_array_equal(eval_a, eval_b)  # an rng changes nothing in eval mode
  train_a = np.asarray(apply(v, x, labels, train=True, rngs={"dropout": jax.random.key(3)}))
  train_b = np.asarray(apply(v, x, labels, train=True, rngs={"dropout": jax.random.key(4)}))
  assert np.abs(train_a - eval_a).max() > 1e-3
  assert np.abs(train_a - train_b).max() > 1e-3


def test_round_trip_and_infer_architecture(small):
  _, params, _ = small
  arch = dict(SMALL, image_size=8)
  state = _to_torch_layout(params, **arch)
  inferred = imp.infer_architecture(state, image_size=8)
  assert inferred == dict(arch, conditional=True)
  back = imp.convert_state_dict(state, **inferred)["params"]
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_conversion_is_strict(small):
  _, params, _ = small
  arch = dict(SMALL, image_size=8)
  state = _to_torch_layout(params, **arch)
  assert issubclass(ImporterError, UserInputError)

  missing = dict(state)
  del missing["all_modules.6.NIN_2.b"]  # down_1_attn_0
  with pytest.raises(ImporterError, match=r"missing key 'all_modules\.6\.NIN_2\.b'"):
    imp.convert_state_dict(missing, **arch)

  extra = dict(state)
  extra["all_modules.3.Conv_9.weight"] = np.zeros((16, 16, 3, 3), np.float32)
  with pytest.raises(ImporterError, match=r"unexpected key 'all_modules\.3\.Conv_9\.weight'"):
    imp.convert_state_dict(extra, **arch)

  wrong = dict(state)
  wrong["all_modules.4.Conv_0.weight"] = np.zeros((16, 8, 3, 3), np.float32)
  with pytest.raises(ImporterError, match=r"'all_modules\.4\.Conv_0\.weight' has shape"):
    imp.convert_state_dict(wrong, **arch)

  # The architecture must fit too: another nf, or no attention at 4, is a mismatch.
  with pytest.raises(ImporterError, match="all_modules"):
    imp.convert_state_dict(state, **dict(arch, nf=8))
  with pytest.raises(ImporterError, match="all_modules"):
    imp.convert_state_dict(state, **dict(arch, attn_resolutions=()))
  with pytest.raises(ImporterError, match="image_size"):
    imp.convert_state_dict(state, **SMALL)


def test_ema_state_dict_checks_by_position(small):
  _, params, _ = small
  state = _to_torch_layout(params, **SMALL, image_size=8)
  names = imp.parameter_names(state)
  assert names == [k for k in state if k != "sigmas"]
  shadow = [state[n] + 1.0 for n in names]
  ckpt = {"model": {"module." + k: v for k, v in state.items()}, "step": 3,
          "ema": {"decay": 0.9999, "num_updates": 3, "shadow_params": shadow}}
  ema = imp.ema_state_dict(ckpt)
  assert list(ema) == names
  np.testing.assert_array_equal(ema[names[5]], state[names[5]] + 1.0)
  short = dict(ckpt, ema=dict(ckpt["ema"], shadow_params=shadow[:-1]))
  with pytest.raises(ImporterError, match="matched by position"):
    imp.ema_state_dict(short)
  swapped = list(shadow)
  swapped[2], swapped[3] = swapped[3], swapped[2]  # a [64, 64] kernel and a [64] bias
  with pytest.raises(ImporterError, match=repr(names[2])):
    imp.ema_state_dict(dict(ckpt, ema=dict(ckpt["ema"], shadow_params=swapped)))
  with pytest.raises(ImporterError, match="'ema'"):
    imp.ema_state_dict({"model": state})
