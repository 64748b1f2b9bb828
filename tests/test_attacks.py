"""Attacks: exact gradients through the purifier, remat, memory, balls, strength, BPDA."""


import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits
from jaxpure import attacks as A
from jaxpure import data, model_specs, parallel
from jaxpure.attacks import apgd as apgd_lib
from jaxpure.attacks import eot, pgd as pgd_lib
from jaxpure.defense import Defense
from jaxpure.errors import ConfigError
from jaxpure.jobs import train as train_job
from jaxpure.purifiers import adp
from jaxpure.purifiers.common import example_keys

SHAPE = (4, 4, 4, 1)
D, K = 16, 5


def h_tiny(params, x, t=None):
  """Nonlinear per-example field: tanh(x W + b) - 2 (x - 0.5) (t, the noise level, unused)."""
  flat = x.reshape(x.shape[0], -1)
  return (jnp.tanh(flat @ params["w"] + params["b"]) - 2.0 * (flat - 0.5)).reshape(x.shape)


def logits_tiny(params, x):
  flat = x.reshape(x.shape[0], -1)
  return jnp.tanh(flat @ params["v"]) @ params["u"]


def tiny_params(dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  score = {"w": rng.normal(size=(D, D)) * 0.8, "b": rng.normal(size=(D,)) * 0.3}
  clf = {"v": rng.normal(size=(D, 12)), "u": rng.normal(size=(12, K))}
  cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)
  return {"score": cast(score), "classifier": cast(clf)}


def tiny_defense(restarts=2, **purify):
  settings = adp.Settings(**dict(dict(sigma_n=0.05, max_iter=4), **purify))
  return Defense(score_fn=h_tiny, logits_fn=logits_tiny, family=adp, settings=settings,
                 restarts=restarts)


def _inputs(seed=1, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.uniform(0.3, 0.7, size=SHAPE), dtype),
          jnp.asarray(rng.integers(0, K, size=SHAPE[0])))


@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
@pytest.mark.reference
@pytest.mark.parametrize("purify", [
    dict(method="gd", step_size=0.02),
    # adp away from switching points: tau far below every alpha, alpha bounds never reached
    dict(method="adp", tau=1e-12, alpha_min=1e-9, alpha_max=10.0)])
@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_full_gradient_matches_float64_finite_differences(purify, loss):
  with jax.enable_x64(True):
    params = tiny_params(np.float64)
    defense = tiny_defense(**purify)
    x, y = _inputs(dtype=np.float64)
    keys = example_keys(jax.random.key(0), jnp.arange(SHAPE[0]))
    est = eot.exact_eot_gradient(defense, loss, n_eot=3)
    total = lambda x: jnp.sum(est(params, keys, x, y)[0])
    _, g = est(params, keys, x, y)
    rng = np.random.default_rng(2)
    eps = 1e-6
    for _ in range(4):
      v = jnp.asarray(rng.normal(size=SHAPE))
      fd = (float(total(x + eps * v)) - float(total(x - eps * v))) / (2 * eps)
      np.testing.assert_allclose(float(jnp.sum(g * v)), fd, rtol=1e-5, atol=1e-8)
    # it is the gradient through the purifier, not the bare classifier's
    _, g_clf = eot.classifier_gradient(defense, loss)(params, keys, x, y)
    assert not np.allclose(np.asarray(g), np.asarray(g_clf), rtol=1e-2)


def test_checkpointing_changes_no_gradient():
  params, (x, y) = tiny_params(), _inputs()
  keys = example_keys(jax.random.key(3), jnp.arange(SHAPE[0]))
  grads = []
  for remat in (True, False):
    est = eot.exact_eot_gradient(tiny_defense(remat=remat, max_iter=8), "ce", n_eot=2)
    grads.append(np.asarray(jax.jit(est)(params, keys, x, y)[1]))
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-7)


def _wide_h(params, x, t=None):
  """A field with wide hidden activations per step (the thing remat must not keep)."""
  flat = x.reshape(x.shape[0], -1)
  hidden = jnp.tanh(flat @ params["w1"])
  hidden = jnp.tanh(hidden @ params["w2"])
  return (hidden @ params["w3"]).reshape(x.shape) - (x - 0.5)


def _gradient_temp_bytes(max_iter, remat):
  rng = np.random.default_rng(0)
  width = 1024
  sp = {"w1": jnp.asarray(rng.normal(size=(D, width)) * 0.1, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(width, width)) * 0.03, jnp.float32),
        "w3": jnp.asarray(rng.normal(size=(width, D)) * 0.03, jnp.float32)}
  params = {"score": sp, "classifier": tiny_params()["classifier"]}
  defense = Defense(score_fn=_wide_h, logits_fn=logits_tiny, family=adp,
                    settings=adp.Settings(max_iter=max_iter, remat=remat), restarts=1)
  est = eot.exact_eot_gradient(defense, "ce", n_eot=2)
  x = jnp.zeros((32, 4, 4, 1))
  y = jnp.zeros((32,), jnp.int32)
  keys = example_keys(jax.random.key(0), jnp.arange(32))
  compiled = jax.jit(lambda p, k, x, y: est(p, k, x, y)[1]).lower(params, keys, x, y).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_remat_keeps_gradient_memory_nearly_flat_in_steps():
  with_remat = {t: _gradient_temp_bytes(t, True) for t in (5, 10, 20)}
  without = {t: _gradient_temp_bytes(t, False) for t in (5, 10, 20)}
  per_step = (with_remat[20] - with_remat[10]) / 10
  per_step_without = (without[20] - without[10]) / 10
  carried = 2 * 32 * D * 4  # one iterate per EOT sample, float32 [2 x 32 x 16]
  # linear at most: the second 10 steps cost no more than twice the first 5-to-10 increment
  assert with_remat[20] - with_remat[10] <= 2 * max(with_remat[10] - with_remat[5], carried) + 4096
  assert per_step <= 16 * carried, (with_remat, without)  # a small per-step term
  assert per_step_without >= 5 * max(per_step, carried), (with_remat, without)


@pytest.mark.parametrize("name", A.ATTACKS)
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3)])
def test_attacks_stay_in_the_ball_and_the_box(name, norm, eps):
  s = A.AttackSettings(norm=norm, eps=eps, step_size=eps / 2, num_steps=4, n_eot=2,
                       surrogate_steps=2)
  if name == "bpda_eot_adp" and norm == "l2":  # ADP's sign-of-signs step is an l_inf attack
    with pytest.raises(ConfigError, match=r"bpda_eot_adp \(ADP's sign-of-signs step\) is "
                                          r"defined for norm='linf' only"):
      A.make_attack(name, tiny_defense(), s)
    return
  params = tiny_params()
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.uniform(0, 1, size=(6, 4, 4, 1)), jnp.float32)  # pixels near 0 and 1
  y = jnp.asarray(rng.integers(0, K, size=6))
  x_adv = np.asarray(A.make_attack(name, tiny_defense(), s)(params, jax.random.key(0), x, y))
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  delta = (x_adv - np.asarray(x)).reshape(6, -1)
  if norm == "linf":
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(delta, axis=1).max() <= eps + 1e-5
  assert np.abs(delta).max() > 0  # it moved


def test_bpda_gradient_is_the_classifier_gradient_at_the_purified_point():
  params, defense = tiny_params(), tiny_defense()
  x, y = _inputs()
  keys = example_keys(jax.random.key(5), jnp.arange(SHAPE[0]))
  _, g = eot.bpda_eot_gradient(defense, "ce", n_eot=1)(params, keys, x, y)
  purified = defense.purified(params, x, keys, 1)[0]
  want = jax.grad(lambda p: jnp.sum(
      eot.losses_lib.per_example_cross_entropy(logits_tiny(params["classifier"], p), y)))(purified)
  np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5, atol=1e-7)
  # ADP's variant steps along the sum of per-sample signs
  _, d = eot.bpda_eot_adp_direction(defense, "ce", n_eot=1)(params, keys, x, y)
  np.testing.assert_array_equal(np.asarray(d), np.sign(np.asarray(want)))


def test_candidate_choice_has_the_lowest_defense_margin():
  params, defense = tiny_params(), tiny_defense(restarts=3)
  x, y = _inputs()
  keys = example_keys(jax.random.key(6), jnp.arange(SHAPE[0]))
  rng = np.random.default_rng(7)
  candidates = jnp.asarray(np.clip(np.asarray(x)[None] + rng.uniform(
      -0.1, 0.1, size=(5,) + SHAPE), 0, 1), jnp.float32)
  chosen = np.asarray(jax.jit(lambda c: A.select_candidate(defense, params, keys, c, y))(
      candidates))
  # The defense's margin (true class minus best other of its mean softmax over the same
  # purification keys) at the chosen point is no larger than at any candidate.
  def margin(points):
    probs = np.asarray(jnp.mean(jax.nn.softmax(defense.logits(params, jnp.asarray(points), keys,
                                                              3), -1), 0))
    true = probs[np.arange(SHAPE[0]), np.asarray(y)]
    other = np.where(np.eye(K, dtype=bool)[np.asarray(y)], -np.inf, probs).max(-1)
    return true - other
  per_candidate = np.stack([margin(c) for c in candidates])  # [5, B]
  chosen_margin = margin(chosen)
  assert np.all(chosen_margin <= per_candidate.min(0) + 1e-6)
  for i in range(SHAPE[0]):  # and the chosen point is one of the candidates
    assert any(np.array_equal(chosen[i], np.asarray(c[i])) for c in candidates)
  assert len({int(np.argmin(per_candidate[:, i])) for i in range(SHAPE[0])}) > 1  # not trivial


@pytest.mark.slow  # 28 s for both; APGD's steps are checked against AutoAttack's (reference)
@pytest.mark.parametrize("losses,warm_restarts", [(("ce", "dlr"), 0), (("ce",), 1)])
def test_apgd_eot_is_no_weaker_than_a_single_run(losses, warm_restarts):
  params, defense = tiny_params(), tiny_defense(restarts=3)
  x, y = _inputs()
  keys = example_keys(jax.random.key(6), jnp.arange(SHAPE[0]))
  several = A.AttackSettings(eps=0.1, num_steps=6, n_eot=2, losses=losses,
                             warm_restarts=warm_restarts)
  single = A.AttackSettings(eps=0.1, num_steps=6, n_eot=2, losses=losses[:1], warm_restarts=0)
  x_many = jax.jit(A.attack_function("apgd_eot", defense, several))(params, keys, x, y)
  x_one = jax.jit(A.attack_function("apgd_eot", defense, single))(params, keys, x, y)
  # Measured with many fresh purifications, the runs' pick is at least as adversarial as
  # the single run it includes (the same first run, by the same keys).
  judge = example_keys(jax.random.key(99), jnp.arange(SHAPE[0]))
  margin = lambda p: -np.asarray(eot.losses_lib.cw_margin(jnp.mean(jax.nn.softmax(  # noqa: E731
      defense.logits(params, p, judge, 256), -1), 0), y))
  assert margin(x_many).mean() <= margin(x_one).mean() + 0.02
  assert float(jnp.max(jnp.abs(x_many - x))) <= 0.1 + 1e-6


def test_apgd_final_candidate_is_the_run_s_best_or_final_point_whichever_the_defense_rates_worse():
  params, defense = tiny_params(), tiny_defense(restarts=3)
  x, y = _inputs()
  keys = example_keys(jax.random.key(6), jnp.arange(SHAPE[0]))
  s = A.AttackSettings(eps=0.1, num_steps=6, n_eot=2, losses=("ce",), final_candidate=True)
  chosen = np.asarray(jax.jit(A.attack_function("apgd_eot", defense, s))(params, keys, x, y))
  # The run itself (run 0 draws from fold(keys, 100), its start as apgd's own random start).
  estimator = eot.exact_eot_gradient(defense, "ce", 2, 0, 0.0, x)
  best, final = (np.asarray(p) for p in jax.jit(lambda: apgd_lib.apgd(
      estimator, params, A.fold(keys, 100), x, y, s, with_final=True))())
  assert not np.array_equal(best, final)
  pick_keys = A.fold(keys, 3)

  def margin(points):  # the choice's own read-out: R = 3 purifications with its keys
    return -np.asarray(eot.losses_lib.cw_margin(jnp.mean(jax.nn.softmax(defense.logits(
        params, jnp.asarray(points), pick_keys, 3), -1), 0), y))
  m_best, m_final, m_chosen = margin(best), margin(final), margin(chosen)
  assert (m_final < m_best - 1e-6).any()  # the final iterate wins somewhere: it is offered
  np.testing.assert_allclose(m_chosen, np.minimum(m_best, m_final), atol=1e-6)
  for i in range(SHAPE[0]):
    assert np.allclose(chosen[i], best[i], atol=1e-6) or np.allclose(chosen[i], final[i],
                                                                      atol=1e-6)
  # without the option the run's best point comes back as it is
  plain = jax.jit(A.attack_function("apgd_eot", defense, dataclasses.replace(
      s, final_candidate=False)))(params, keys, x, y)
  np.testing.assert_allclose(np.asarray(plain), best, atol=1e-6)


def test_apgd_final_iterate_is_the_last_step_even_when_the_last_step_halves():
  params = tiny_params()
  x, y = _inputs()
  keys = example_keys(jax.random.key(9), jnp.arange(SHAPE[0]))
  s = A.AttackSettings(eps=0.1, num_steps=6, n_eot=1)
  assert apgd_lib.halving_points(6)[-1] == 6  # the last step is a halving point
  start = A.project(x + 0.1 * jnp.sign(jax.random.normal(jax.random.key(1), x.shape)), x,
                    "linf", 0.1)
  # A loss that never rises: every halving point halves and sends the iterate back to the
  # best point, the start; the last step's point still moved away from it.
  flat = lambda p, k, xx, yy: (jnp.zeros(xx.shape[0]), -jnp.sign(start - x) + 0 * xx)
  best, final = apgd_lib.apgd(flat, params, keys, x, y, s, start, with_final=True)
  np.testing.assert_array_equal(np.asarray(best), np.asarray(start))
  assert not np.array_equal(np.asarray(final), np.asarray(start))
  assert float(jnp.max(jnp.abs(final - x))) <= 0.1 + 1e-6


def test_apgd_warm_restart_starts_from_the_given_point():
  params = tiny_params()
  x, y = _inputs()
  keys = example_keys(jax.random.key(9), jnp.arange(SHAPE[0]))
  s = A.AttackSettings(eps=0.1, num_steps=1, n_eot=1)
  start = A.project(x + 0.1 * jnp.sign(jax.random.normal(jax.random.key(1), x.shape)), x,
                    "linf", 0.1)
  # A loss that can never rise keeps the start as the best point.
  flat = lambda p, k, xx, yy: (jnp.zeros(xx.shape[0]), jnp.ones_like(xx))
  np.testing.assert_array_equal(np.asarray(apgd_lib.apgd(flat, params, keys, x, y, s, start)),
                                np.asarray(start))
  assert not np.array_equal(np.asarray(apgd_lib.apgd(flat, params, keys, x, y, s)),
                            np.asarray(start))


@pytest.mark.parametrize("initial_step", [2.0, 0.5])
def test_apgd_initial_step_is_the_first_step_size_in_units_of_eps(initial_step):
  params = tiny_params()
  x, y = _inputs()
  keys = example_keys(jax.random.key(9), jnp.arange(SHAPE[0]))
  s = A.AttackSettings(eps=0.1, num_steps=3, n_eot=1, random_start=False,
                       initial_step=initial_step)
  rising = lambda p, k, xx, yy: (jnp.sum(xx, (1, 2, 3)), jnp.ones_like(xx))
  _, trace = apgd_lib.apgd(rising, params, keys, x, y, s, with_trace=True)
  # x lies in [0.3, 0.7]: the first step (no momentum) moves every pixel by min(eta, eps).
  moved = np.asarray(trace["x"][1] - x)
  np.testing.assert_allclose(moved, min(initial_step * 0.1, 0.1), atol=1e-6)
  np.testing.assert_allclose(np.asarray(trace["eta"][0]), initial_step * 0.1, rtol=1e-6)


def test_apgd_restore_best_false_keeps_the_iterate_where_it_is_at_a_halving():
  params = tiny_params()
  x, y = _inputs()
  keys = example_keys(jax.random.key(9), jnp.arange(SHAPE[0]))
  w1 = apgd_lib.halving_points(20)[1]
  # A loss that never rises: every check halves, and the best point stays the start (x).
  flat = lambda p, k, xx, yy: (jnp.zeros(xx.shape[0]), jnp.ones_like(xx))
  away = {}
  for restore in (True, False):
    s = A.AttackSettings(eps=0.1, num_steps=20, n_eot=1, random_start=False,
                         initial_step=0.1, restore_best=restore)
    _, trace = apgd_lib.apgd(flat, params, keys, x, y, s, with_trace=True)
    away[restore] = np.asarray(jnp.max(jnp.abs(trace["x"] - x[None]), axis=(2, 3, 4)))
  # Sent back to the start, the step after the first check is nearer to it than the check's;
  # kept, the iterate goes on moving away (steps of eta along the constant direction).
  assert np.all(away[True][w1 + 1] < away[True][w1] - 1e-4)
  assert np.all(np.diff(away[False], axis=0) >= -1e-7)
  assert np.all(away[False][w1 + 1] > away[False][w1] + 1e-4)


def test_apgd_halving_points_follow_autoattack():
  assert apgd_lib.halving_points(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
  config = digits.get_config()
  config.classifier.num_steps = 300
  mesh = parallel.make_mesh()
  split = data.open_split("digits", "train")
  state, _ = train_job.train_model(model_specs.CLASSIFIER, config,
                                   str(tmp_path_factory.mktemp("clf")), split,
                                   jax.random.key(0), mesh, should_stop=lambda: False,
                                   print_fn=lambda s: None)
  x, y = data.read_all(data.open_split("digits", "test"), 256)
  variables = {"params": state.ema_params, **state.model_state}
  return config, variables, jnp.asarray(x), jnp.asarray(y)


@pytest.mark.slow  # trains the digits classifier, then 40-step attacks on 256 digits
def test_pgd_and_apgd_break_an_undefended_digits_classifier(digits_classifier):
  config, variables, x, y = digits_classifier
  logits_fn = model_specs.logits_fn(config)
  defense = Defense(score_fn=None, logits_fn=logits_fn, family=adp, settings=adp.Settings())
  params = {"score": None, "classifier": variables}
  clean = float(jnp.mean(jnp.argmax(logits_fn(variables, x), -1) == y))
  assert clean > 0.9
  s = A.AttackSettings(eps=config.attack.eps, num_steps=config.attack.pgd_clf.num_steps,
                       step_size=config.attack.pgd_clf.step_size)
  est = eot.classifier_gradient(defense, "ce")
  keys = example_keys(jax.random.key(1), jnp.arange(x.shape[0]))
  x_pgd = jax.jit(lambda p, k, x, y: pgd_lib.pgd(est, p, k, x, y, s))(params, keys, x, y)
  pgd_acc = float(jnp.mean(jnp.argmax(logits_fn(variables, x_pgd), -1) == y))
  assert pgd_acc <= 0.05, pgd_acc
  x_apgd = jax.jit(lambda p, k, x, y: apgd_lib.apgd(est, p, k, x, y, s))(params, keys, x, y)
  apgd_acc = float(jnp.mean(jnp.argmax(logits_fn(variables, x_apgd), -1) == y))
  se = np.sqrt(max(pgd_acc * (1 - pgd_acc), 1e-12) / x.shape[0])
  assert apgd_acc <= pgd_acc + max(se, 1 / x.shape[0]), (apgd_acc, pgd_acc)
  assert float(jnp.max(jnp.abs(x_apgd - x))) <= config.attack.eps + 1e-6


@pytest.mark.parametrize("bad,fragment", [
    (dict(loss="hinge"), "loss='hinge'"), (dict(losses=()), "losses=()"),
    (dict(losses=("ce", "kl")), "losses=('ce', 'kl')"),
    (dict(warm_restarts=-1), "warm_restarts=-1"), (dict(norm="l1"), "norm='l1'")])
def test_bad_attack_settings_name_the_field(bad, fragment):
  with pytest.raises(ConfigError, match=re.escape(fragment)):
    A.AttackSettings(**bad)


@pytest.mark.parametrize("eot_chunk", [0, 1])
def test_apgd_eot_differentiates_the_purifier_once_whatever_the_losses_and_restarts(
    monkeypatch, eot_chunk):
  """The runs (losses x (1 + warm restarts)) share one traced gradient: each loss head is
  traced once, and the score network as often for two losses with three warm restarts as for
  one loss alone (APGD's start evaluation is iteration -1 of its step's scan, and the loss is
  switched on the logits inside one gradient), so the program holds one copy of the gradient
  through the purifier."""
  params, defense = tiny_params(), tiny_defense(restarts=2)
  x, y = _inputs()
  keys = example_keys(jax.random.key(6), jnp.arange(SHAPE[0]))

  def traces(losses, warm_restarts, decision_samples=0):
    counts = {"ce": 0, "dlr": 0, "score": 0}

    def counting(name, fn):
      def counted(*args):
        counts[name] += 1
        return fn(*args)
      return counted
    with monkeypatch.context() as m:
      for name in ("ce", "dlr"):
        m.setitem(eot.losses_lib.LOSSES, name, counting(name, eot.losses_lib.LOSSES[name]))
      counted_defense = dataclasses.replace(defense, score_fn=counting("score", h_tiny))
      s = A.AttackSettings(eps=0.1, num_steps=3, n_eot=2, losses=losses,
                           warm_restarts=warm_restarts, eot_chunk=eot_chunk,
                           decision_samples=decision_samples)
      jax.make_jaxpr(A.attack_function("apgd_eot", counted_defense, s))(params, keys, x, y)
    return counts

  # (one loss with a warm restart: two runs, so the candidate choice's purification is there
  # too, as with two losses)
  one, few, many = traces(("ce",), 1), traces(("ce", "dlr"), 0), traces(("ce", "dlr"), 3)
  assert few == many, (few, many)
  assert many["ce"] == many["dlr"] == 1, many
  assert many["score"] == one["score"] > 0, (one, many)
  # forward-only decision samples add their own (non-differentiated) purification, once
  judged_one, judged_many = traces(("ce",), 1, 2), traces(("ce", "dlr"), 3, 2)
  assert judged_many["score"] == judged_one["score"] > one["score"], (judged_one, judged_many)


@pytest.mark.parametrize("chunk", [0, 1])
def test_a_switched_loss_gives_each_loss_s_exact_gradient(chunk):
  """exact_eot_gradient with `losses.switched(names, i)` is, for each index i, the gradient
  of the loss names[i] (what APGD's runs over several losses use). float64: ADP's
  finite-difference step size amplifies float32 rounding differences between programs."""
  with jax.enable_x64(True):
    params, defense = tiny_params(np.float64), tiny_defense()
    x, y = _inputs(dtype=np.float64)
    keys = example_keys(jax.random.key(8), jnp.arange(SHAPE[0]))
    names = ("ce", "dlr", "cw")
    switched = jax.jit(lambda i: eot.exact_eot_gradient(
        defense, eot.losses_lib.switched(names, i), 2, chunk)(params, keys, x, y))
    for i, name in enumerate(names):
      want = eot.exact_eot_gradient(defense, name, 2, chunk)(params, keys, x, y)
      got = switched(jnp.int32(i))
      for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
  assert eot.losses_lib.switched(("dlr",), jnp.int32(0)) is eot.losses_lib.LOSSES["dlr"]


def test_a_recorded_trajectory_point_is_the_shorter_attack():
  """pgd(record=ks) returns, for each k, exactly what a k-step run with the same keys does:
  the budget curves' iteration axis costs one run."""
  params, defense = tiny_params(), tiny_defense()
  x, y = _inputs()
  keys = example_keys(jax.random.key(3), jnp.arange(SHAPE[0]))
  s = A.AttackSettings(eps=0.1, step_size=0.03, num_steps=6, n_eot=2)
  points = A.attack_trajectory("pgd_eot_full", defense, s, (1, 3, 6))(params, keys, x, y)
  assert points.shape == (3,) + SHAPE
  for k, point in zip((1, 3, 6), points):
    short = A.attack_function("pgd_eot_full", defense, A.AttackSettings(
        eps=0.1, step_size=0.03, num_steps=k, n_eot=2))(params, keys, x, y)
    np.testing.assert_array_equal(np.asarray(point), np.asarray(short))
  assert not np.array_equal(np.asarray(points[0]), np.asarray(points[2]))
  with pytest.raises(ConfigError, match="budget"):
    A.attack_trajectory("apgd_eot", defense, s, (1, 6))
  with pytest.raises(ValueError, match="record"):
    A.attack_trajectory("pgd_eot_full", defense, s, (0, 6))(params, keys, x, y)


def test_apgd_decision_samples_pick_the_true_best_point_more_often():
  """A toy objective with additive noise of known variance: loss -(x - c)^2 + sigma z / sqrt(n)
  for an estimate from n samples, exact gradient. Among the points each run visited, the one
  it returns is the truly best one more often, and its shortfall from the truly best one
  (regret) is smaller, with 15 forward-only decision samples than with single-sample
  decisions."""
  b, sigma = 512, 0.005
  rng = np.random.default_rng(0)
  x = jnp.full((b, 1, 1, 1), 0.5, jnp.float32)
  c = jnp.asarray(rng.uniform(0.25, 0.75, size=(b, 1, 1, 1)), jnp.float32)
  y = jnp.zeros((b,), jnp.int32)
  true = lambda x_at: -jnp.sum((x_at - c) ** 2, axis=(1, 2, 3))  # noqa: E731

  def noisy(n):
    def loss(params, keys, x_at, y):
      z = jax.vmap(lambda k: jax.random.normal(k, ()))(keys)
      return true(x_at) + sigma * z / np.sqrt(n)
    return loss

  keys = example_keys(jax.random.key(0), jnp.arange(b))

  def run(m):
    visited = []

    def estimator(params, keys, x_at, y):
      jax.debug.callback(lambda v: visited.append(np.asarray(v)), true(x_at))
      return noisy(1)(params, keys, x_at, y), -2 * (x_at - c)
    # AutoAttack's rule (back to the best point at a halving), where the best-point decision
    # matters most.
    s = A.AttackSettings(eps=0.3, num_steps=30, n_eot=1, decision_samples=m, restore_best=True)
    chosen = np.asarray(true(apgd_lib.apgd(estimator, {}, keys, x, y, s,
                                           judge=noisy(m) if m else None)))
    regret = np.max(np.stack(visited), axis=0) - chosen
    assert len(visited) == 31 and np.all(regret >= 0)
    return float(np.mean(regret < 1e-7)), float(np.mean(regret))

  (best_single, regret_single), (best_judged, regret_judged) = run(0), run(15)
  assert best_judged > 1.5 * best_single, (best_judged, best_single)
  assert regret_judged < 0.5 * regret_single, (regret_judged, regret_single)


def test_surrogate_attack_is_the_full_one_at_the_defense_steps_and_shorter_otherwise():
  params, x, y = tiny_params(), *_inputs()
  defense = tiny_defense(method="gd", step_size=0.02, max_iter=4)
  keys = example_keys(jax.random.key(4), jnp.arange(SHAPE[0]))
  s = A.AttackSettings(eps=0.1, step_size=0.03, num_steps=3, n_eot=2)
  full = A.attack_function("pgd_eot_full", defense, s)(params, keys, x, y)
  same = A.attack_function("pgd_eot_surrogate", defense, dataclasses.replace(
      s, surrogate_steps=4))(params, keys, x, y)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(full))
  short = A.attack_function("pgd_eot_surrogate", defense, dataclasses.replace(
      s, surrogate_steps=1))(params, keys, x, y)
  assert not np.array_equal(np.asarray(short), np.asarray(full))
  assert defense.with_steps(1).settings.max_iter == 1 and defense.settings.max_iter == 4
  with pytest.raises(ConfigError, match="surrogate_steps"):
    A.attack_function("pgd_eot_surrogate", defense, s)


@pytest.mark.slow  # reference tier, which CI runs whole; 10 s or more in all in the default run
@pytest.mark.reference
def test_deviation_loss_gradient_matches_float64_finite_differences():
  """The exact gradient of CE + w * deviation (iterates of x against those of x_clean, same
  noise) against central differences; at x = x_clean the deviation term is 0."""
  with jax.enable_x64(True):
    params = tiny_params(np.float64)
    defense = tiny_defense(method="gd", step_size=0.02)
    x_clean, y = _inputs(dtype=np.float64)
    x = x_clean + 0.03 * jnp.asarray(np.random.default_rng(5).normal(size=SHAPE))
    keys = example_keys(jax.random.key(0), jnp.arange(SHAPE[0]))
    est = eot.exact_eot_gradient(defense, "ce", 2, deviation_weight=50.0, x_clean=x_clean)
    plain = eot.exact_eot_gradient(defense, "ce", 2)
    np.testing.assert_allclose(np.asarray(est(params, keys, x_clean, y)[0]),
                               np.asarray(plain(params, keys, x_clean, y)[0]), rtol=1e-12)
    loss, g = est(params, keys, x, y)
    assert np.all(np.asarray(loss) > np.asarray(plain(params, keys, x, y)[0]))
    total = lambda x: float(jnp.sum(est(params, keys, x, y)[0]))  # noqa: E731
    rng, h = np.random.default_rng(6), 1e-6
    for _ in range(3):
      v = jnp.asarray(rng.normal(size=SHAPE))
      fd = (total(x + h * v) - total(x - h * v)) / (2 * h)
      np.testing.assert_allclose(float(jnp.sum(g * v)), fd, rtol=1e-5, atol=1e-8)
    assert not np.allclose(np.asarray(g), np.asarray(plain(params, keys, x, y)[1]), rtol=1e-3)
  with pytest.raises(ValueError, match="x_clean"):
    eot.exact_eot_gradient(defense, "ce", 2, deviation_weight=1.0)


@pytest.mark.parametrize("name, changes, fragment", [
    ("no_such_attack", {}, "unknown attack 'no_such_attack'"),
    ("bpda_eot_adp", {"norm": "l2"}, "norm='linf' only"),
    ("pgd_eot_surrogate", {"surrogate_steps": 0}, "surrogate_steps >= 1"),
])
def test_attack_settings_are_checked_when_the_attack_is_built(name, changes, fragment):
  """attack_function and attack_trajectory refuse an attack that cannot run, in one line,
  before anything is traced."""
  s = A.AttackSettings(eps=0.1, num_steps=2, **changes)
  for build in (lambda: A.attack_function(name, tiny_defense(), s),
                lambda: A.attack_trajectory(name, tiny_defense(), s, (1, 2))):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
      build()
