"""Scoring attacked points: N independent runs of the defense, the worst case over attacks,
and EOT samples differentiated in chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import attacks as attacks_lib
from jaxpure.attacks import eot
from jaxpure.defense import Defense
from jaxpure.jobs.evaluation import report
from jaxpure.purifiers import adp, common


def test_worst_case_is_never_above_any_attack_and_equals_a_dominating_one():
  rng = np.random.default_rng(0)
  a = rng.random((3, 200)) < 0.6
  b = rng.random((3, 200)) < 0.5
  worst = report.worst_case({"a": a, "b": b})
  for runs in (a, b):
    assert worst["accuracy"] <= report.run_scores(runs)["mean"]["accuracy"]
  assert worst["accuracy"] < min(a.mean(), b.mean())  # they break different examples
  dominated = a | b  # wrong only where b is wrong: b dominates
  assert report.worst_case({"a": dominated, "b": b})["accuracy"] == pytest.approx(b.mean())
  assert report.worst_case({"b": b})["accuracy"] == pytest.approx(b.mean())
  assert worst["broken_by"]["a"] == int(((a.mean(0)) < 0.5).sum())


def test_run_scores_with_one_run_is_the_single_scoring():
  runs = np.random.default_rng(1).random((1, 100)) < 0.3
  scores = report.run_scores(runs)
  for name in ("mean", "all_runs", "majority_vote"):
    assert scores[name]["accuracy"] == pytest.approx(runs.mean())
  many = np.random.default_rng(2).random((5, 100)) < 0.5
  scores = report.run_scores(many)
  assert scores["all_runs"]["accuracy"] == pytest.approx(many.all(0).mean())
  assert scores["majority_vote"]["accuracy"] == pytest.approx((many.sum(0) >= 3).mean())
  assert scores["all_runs"]["accuracy"] <= scores["mean"]["accuracy"]
  assert scores["mean"]["standard_error"] > 0


def _h(params, x, t=None):
  flat = x.reshape(x.shape[0], -1)
  return (jnp.tanh(flat @ params["w"]) - (flat - 0.5)).reshape(x.shape)


def _logits(params, x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ params["v"]) @ params["u"]


def test_eot_in_chunks_gives_the_same_loss_and_gradient():
  rng = np.random.default_rng(3)
  defense = Defense(score_fn=_h, logits_fn=_logits, family=adp,
                    settings=adp.Settings(sigma_n=0.1, max_iter=3), restarts=2)
  with jax.enable_x64(True):  # float64: ADP's finite-difference probe amplifies rounding
    params = {"score": {"w": jnp.asarray(rng.normal(size=(16, 16)) * 0.5)},
              "classifier": {"v": jnp.asarray(rng.normal(size=(16, 8))),
                             "u": jnp.asarray(rng.normal(size=(8, 4)))}}
    x = jnp.asarray(rng.uniform(0.2, 0.8, size=(3, 4, 4, 1)))
    y = jnp.asarray([0, 1, 2])
    keys = common.example_keys(jax.random.key(0), jnp.arange(3))
    whole = jax.jit(eot.exact_eot_gradient(defense, "ce", 6))(params, keys, x, y)
    chunked = jax.jit(eot.exact_eot_gradient(defense, "ce", 6, chunk=2))(params, keys, x, y)
    for a, b in zip(whole, chunked):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    assert np.abs(np.asarray(whole[1])).max() > 1e-3  # a real gradient
  with pytest.raises(ValueError, match="divide"):
    eot.exact_eot_gradient(defense, "ce", 6, chunk=4)


def _curve(accuracies, n=64):
  budgets = [5, 10, 20, 40][-len(accuracies):]
  correct = np.zeros((len(accuracies), 1, n), bool)
  for i, a in enumerate(accuracies):
    correct[i, 0, :round(a * n)] = True
  return report.budget_curve(budgets, correct, "num_steps")


def test_not_converged_fires_on_a_falling_curve_and_not_on_a_flat_one():
  falling = _curve([0.6, 0.45, 0.35, 0.25])  # still drops 0.10 > s.e. ~0.054 at the end
  why = report.not_converged(falling, "num_steps")
  assert why and "20 to 40" in why
  assert report.not_converged(_curve([0.6, 0.3, 0.25, 0.25]), "num_steps") is None
  # a drop within one standard error is noise, not a sign of an unconverged attack
  assert report.not_converged(_curve([0.5, 0.3, 0.28, 0.25]), "num_steps") is None
  assert report.not_converged(_curve([0.25]), "num_steps") is None


def test_an_unconverged_budget_curve_makes_the_report_suspect():
  steps_correct = np.stack([np.arange(64) < k for k in (40, 30, 20, 10)])[:, None]
  flat = np.stack([np.arange(64) < 10] * 2)[:, None]
  falling = report.budget_report("pgd_eot_full", attacks_lib.AttackSettings(
      num_steps=40, n_eot=2), (5, 10, 20, 40), (1, 2), steps_correct, flat)
  assert not falling["converged"]
  assert [r["accuracy"] for r in falling["by_num_steps"]] == [40 / 64, 30 / 64, 20 / 64, 10 / 64]
  assert len(falling["not_converged_reasons"]) == 1 and "num_steps" in (
      falling["not_converged_reasons"][0])
  base = {"eps_sweep": {}, "robust_accuracy": {}, "robust_accuracy_standard_error": {}}
  reasons = report.suspect_reasons(dict(base, budget_curves=falling), "pgd_eot_full")
  assert any("not converged" in r for r in reasons)
  converged = report.budget_report("pgd_eot_full", attacks_lib.AttackSettings(
      num_steps=40, n_eot=2), (5, 10, 20, 40), (1, 2), np.stack([flat[0]] * 4), flat)
  assert converged["converged"]
  assert report.suspect_reasons(dict(base, budget_curves=converged), "pgd_eot_full") == []
