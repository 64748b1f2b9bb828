"""Remat policies of the purifiers' step scans (`jaxpure.purifiers.remat`): the exact EOT
gradient is the same under every policy (float64, against a finite difference too), the
compiled temporary memory is ordered none > save_convolutions > step, and "auto" picks the
fastest policy that fits its budget, once per program."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure.attacks import eot
from jaxpure.defense import Defense
from jaxpure.errors import ConfigError
from jaxpure.jobs import evaluation
from jaxpure.jobs.evaluation import units
from jaxpure.models import conv
from jaxpure.purifiers import adp, diffpure, remat
from jaxpure.purifiers.common import example_keys

SHAPE = (3, 6, 6, 1)
K = 4


class ConvField(nn.Module):
  """A small convolutional field with elementwise work between its convolutions (what the
  "save_convolutions" policy recomputes), built on `jaxpure.models.conv` like the networks."""
  width: int = 16

  @nn.compact
  def __call__(self, x, t):
    y1 = conv.Conv(self.width, (3, 3))(x)
    a = nn.elu(y1) * nn.sigmoid(y1) + jnp.reshape(t, (-1, 1, 1, 1))
    y2 = conv.Conv(self.width, (3, 3))(a)
    b = jnp.tanh(y2) * a + jnp.exp(-jnp.square(y2))
    return 0.1 * conv.Conv(x.shape[-1], (3, 3))(b) - 0.05 * (x - 0.5)


def _logits(params, x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ params["w"])


def _params(dtype, width=16):
  net = ConvField(width)
  x = jnp.zeros(SHAPE, dtype)
  score = net.init(jax.random.key(0), x, jnp.zeros(SHAPE[:1], dtype))
  score = jax.tree.map(lambda a: a.astype(dtype), score)
  rng = np.random.default_rng(3)
  w = jnp.asarray(rng.normal(size=(int(np.prod(SHAPE[1:])), K)) * 0.5, dtype)
  return net, {"score": score, "classifier": {"w": w}}


def _defense(family, policy, net, steps=4):
  if family is adp:
    settings = adp.Settings(sigma_n=0.1, max_iter=steps, lam=0.05, tau=0.0, remat=policy)
  else:
    settings = diffpure.Settings(t_star=0.1, num_steps=steps, remat=policy)
  return Defense(score_fn=lambda p, x, t: net.apply(p, x, t), logits_fn=_logits, family=family,
                 settings=settings, restarts=1)


def _inputs(dtype, batch=SHAPE[0]):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(batch,) + SHAPE[1:]), dtype)
  y = jnp.asarray(rng.integers(0, K, size=batch))
  return x, y, example_keys(jax.random.key(5), jnp.arange(batch))


def test_settings_take_policy_names_and_the_old_booleans():
  assert adp.Settings(remat=True).remat == "step" and adp.Settings(remat=False).remat == "none"
  assert diffpure.Settings(remat="False").remat == "none"
  for name in remat.POLICIES:
    assert adp.Settings(remat=name).remat == name == diffpure.Settings(remat=name).remat
  with pytest.raises(ConfigError, match="remat='sometimes'"):
    adp.Settings(remat="sometimes")


def test_the_policy_is_left_out_of_stored_results_signatures():
  net, _ = _params(jnp.float32)
  sigs = {p: evaluation.defense_settings(_defense(adp, p, net)) for p in remat.POLICIES}
  assert all(s == sigs["step"] for s in sigs.values())
  assert "remat" not in sigs["step"]["settings"] and sigs["step"]["settings"]["max_iter"] == 4


@pytest.mark.slow  # ~50-70 s on 2 loaded cores: five float64 gradient compiles
@pytest.mark.parametrize("family", [adp, diffpure], ids=["adp", "diffpure"])
def test_exact_eot_gradient_is_the_same_under_every_policy_float64(family):
  with jax.enable_x64(True):
    net, params = _params(jnp.float64)
    x, y, keys = _inputs(jnp.float64)
    grads, losses = {}, {}
    for policy in remat.FIXED + ("auto",):
      est = eot.exact_eot_gradient(_defense(family, policy, net), "ce", n_eot=2)
      loss, g = jax.jit(est)(params, keys, x, y)
      grads[policy], losses[policy] = np.asarray(g), np.asarray(loss)
    # An independent reference: a central finite difference of the summed loss along v.
    v = np.random.default_rng(7).normal(size=x.shape)
    loss_fn = jax.jit(lambda x: jnp.sum(est(params, keys, x, y)[0]))
    h = 1e-6
    fd = (float(loss_fn(x + h * v)) - float(loss_fn(x - h * v))) / (2 * h)
  scale = np.max(np.abs(grads["none"]))
  assert scale > 1e-6
  for policy, g in grads.items():
    np.testing.assert_allclose(g, grads["none"], rtol=0, atol=1e-12 * scale, err_msg=policy)
    np.testing.assert_allclose(losses[policy], losses["none"], rtol=1e-13, err_msg=policy)
    assert abs(float(np.sum(g * v)) - fd) <= 1e-6 * max(abs(fd), 1.0), (policy, fd)


def _gradient_build(family, policy, steps, batch=16, width=32):
  net, params = _params(jnp.float32, width)
  x, y, keys = _inputs(jnp.float32, batch)
  est = eot.exact_eot_gradient(_defense(family, policy, net, steps), "ce", n_eot=2)
  return lambda: jax.jit(lambda p, k, x, y: est(p, k, x, y)[1]).lower(params, keys, x, y).compile()


@pytest.mark.slow  # ~45-60 s: three gradient compiles
@pytest.mark.parametrize("family", [adp, diffpure], ids=["adp", "diffpure"])
def test_compiled_gradient_memory_is_ordered_none_save_convolutions_step(family):
  steps = 8
  temp = {p: remat.temp_bytes(_gradient_build(family, p, steps)()) for p in remat.FIXED}
  carried = 2 * 16 * int(np.prod(SHAPE[1:])) * 4  # one float32 iterate per EOT sample
  conv_out = 2 * 16 * 6 * 6 * 32 * 4  # one width-32 convolution output of the 2 x 16 images
  evals = steps * (2 if family is adp else 1)  # network evaluations kept along the chain
  # none keeps the elementwise work too; save_convolutions about 2 convolution outputs per
  # network evaluation beyond step; step keeps the carried iterates only.
  assert temp["none"] - temp["save_convolutions"] >= evals * conv_out, temp
  assert temp["save_convolutions"] - temp["step"] >= evals * conv_out, temp
  assert temp["step"] <= temp["save_convolutions"] // 2, temp


def test_auto_picks_the_fastest_policy_that_fits_the_budget():
  steps = 8
  temp = {p: remat.temp_bytes(_gradient_build(adp, p, steps)()) for p in remat.FIXED}
  assert temp["none"] > temp["save_convolutions"] > temp["step"]
  build = _gradient_build(adp, "auto", steps)
  cases = {temp["none"]: "none",  # admits everything: the fastest
           (temp["none"] + temp["save_convolutions"]) // 2: "save_convolutions",
           temp["save_convolutions"] - 1: "step",
           temp["step"] // 2: "step"}  # fits nothing: the one flat in T
  for budget, expected in cases.items():
    compiled, record = remat.choose(build, budget)
    assert record["policy"] == expected, (budget, record)
    assert remat.temp_bytes(compiled) == temp[expected]
    assert record["temp_bytes"] == {p: temp[p] for p in remat.FIXED[:len(record["temp_bytes"])]}
    assert list(record["temp_bytes"])[-1] == expected


@pytest.mark.slow  # ~35 s
def test_auto_outside_choose_is_step_and_a_fixed_policy_compiles_once():
  temp_step = remat.temp_bytes(_gradient_build(adp, "step", 6)())
  assert remat.temp_bytes(_gradient_build(adp, "auto", 6)()) == temp_step
  calls = []
  build = _gradient_build(adp, "none", 6)
  compiled, record = remat.choose(lambda: calls.append(1) or build(), budget=0)
  assert record is None and len(calls) == 1  # no "auto" scan: nothing to choose


@pytest.mark.slow  # ~20-80 s
def test_an_evaluation_unit_chooses_once_per_program_and_records_it():
  net, params = _params(jnp.float32, 32)
  defense = _defense(adp, "auto", net, steps=6)
  est = eot.exact_eot_gradient(defense, "ce", n_eot=2)

  def fn(params, batch, inputs):
    del inputs
    keys = example_keys(jax.random.key(0), batch["index"])
    return {"g": est(params, keys, batch["image"], batch["label"])[1]}
  x, y, _ = _inputs(jnp.float32, 16)
  batch = {"image": x, "label": y, "index": jnp.arange(16)}
  temp = {p: remat.temp_bytes(_gradient_build(adp, p, 6)()) for p in ("none", "step")}
  unit = units.Unit("attack_x", fn, 16, {})
  cache, choices = {}, {}
  compiled = units.compile_stages(unit, params, batch, cache, memory_budget=temp["none"] - 1,
                                  remat_choices=choices)
  assert choices["attack_x"]["policy"] in ("save_convolutions", "step")
  assert remat.temp_bytes(compiled[0]) < temp["none"]
  again = units.compile_stages(units.Unit("attack_y", fn, 16, {}, compile_key="attack_x"),
                               params, batch, cache, memory_budget=10**15, remat_choices=choices)
  assert again == compiled and list(choices) == ["attack_x"]  # the program is not chosen again
