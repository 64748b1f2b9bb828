"""Scoring attacked points: N independent runs of the defense, the worst case over attacks,
and EOT samples differentiated in chunks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpure import attacks as attacks_lib
from jaxpure.attacks import eot
from jaxpure.defense import Defense
from jaxpure.jobs.evaluation import attack as attack_units, budget_curves, report, units
from jaxpure.purifiers import adp, common


def test_worst_case_is_never_above_any_attack_and_equals_a_dominating_one():
  rng = np.random.default_rng(0)
  a = rng.random((3, 200)) < 0.6
  b = rng.random((3, 200)) < 0.5
  worst = attack_units.worst_case({"a": a, "b": b})
  for runs in (a, b):
    assert worst["accuracy"] <= attack_units.run_scores(runs)["mean"]["accuracy"]
  assert worst["accuracy"] < min(a.mean(), b.mean())  # they break different examples
  dominated = a | b  # wrong only where b is wrong: b dominates
  assert attack_units.worst_case({"a": dominated, "b": b})["accuracy"] == pytest.approx(b.mean())
  assert attack_units.worst_case({"b": b})["accuracy"] == pytest.approx(b.mean())
  assert worst["broken_by"]["a"] == int(((a.mean(0)) < 0.5).sum())


def test_run_scores_with_one_run_is_the_single_scoring():
  runs = np.random.default_rng(1).random((1, 100)) < 0.3
  scores = attack_units.run_scores(runs)
  for name in ("mean", "all_runs", "majority_vote"):
    assert scores[name]["accuracy"] == pytest.approx(runs.mean())
  many = np.random.default_rng(2).random((5, 100)) < 0.5
  scores = attack_units.run_scores(many)
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


def _unit_inputs(b=6, k=4, sigma_n=0.3):
  rng = np.random.default_rng(4)
  defense = Defense(score_fn=_h, logits_fn=_logits, family=adp,
                    settings=adp.Settings(sigma_n=sigma_n, max_iter=2), restarts=2)
  params = {"score": {"w": jnp.asarray(rng.normal(size=(16, 16)) * 0.5, jnp.float32)},
            "classifier": {"v": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
                           "u": jnp.asarray(rng.normal(size=(8, k)), jnp.float32)}}
  batch = {"image": jnp.asarray(rng.uniform(0.2, 0.8, size=(b, 4, 4, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, k, size=b)), "index": jnp.arange(b) + 10}
  return defense, params, batch


def test_each_scoring_run_is_the_defense_with_its_own_keys():
  """An attack unit's run r scores the attacked points with the defense under the scoring key
  fold_in(s, r) (run 0: s itself), s the unit's scoring key: each run equals a direct
  prediction with that key, and the runs differ (independent randomness)."""
  defense, params, batch = _unit_inputs(b=64, sigma_n=1.0)  # noisy: runs disagree
  attack_key, eval_key = jax.random.key(1), jax.random.key(2)
  s = attacks_lib.AttackSettings(eps=0.3, step_size=0.1, num_steps=2)
  runs = 4
  unit = attack_units.attack_unit("pgd_clf", "pgd_clf", s, defense, attack_key, eval_key, 64, 0,
                                  scoring_runs=runs)
  out = units.run_unit(unit, params, batch)
  assert out["defended_correct"].shape == (runs, 64)
  s_key = jax.random.fold_in(eval_key, units.tag("pgd_clf"))
  for r in range(runs):
    key = s_key if r == 0 else jax.random.fold_in(s_key, r)
    probs = defense.predict(params, out["x_adv"], common.example_keys(key, batch["index"]))
    np.testing.assert_array_equal(np.asarray(out["defended_correct"][r]),
                                  np.asarray(probs["mean_softmax"] == batch["label"]))
  assert len({np.asarray(c).tobytes() for c in out["defended_correct"]}) > 1


@pytest.mark.slow  # 18 s; test_budget_search.py checks the search's rows against the attacks fast
def test_each_budget_curve_row_is_the_attack_at_that_budget():
  """Each row of the budget unit's curves is the attack unit's result at that budget (same
  keys), run by run: the evaluated budget's point (4 steps, EOT 2; second to last on both
  curves) is the attack's own result, the others are the attack with fewer or twice the steps
  or EOT samples."""
  defense, params, batch = _unit_inputs(b=64)
  attack_key, eval_key = jax.random.key(3), jax.random.key(4)
  s = attacks_lib.AttackSettings(eps=0.3, step_size=0.1, num_steps=4, n_eot=2)
  runs = 3
  attack = attack_units.attack_unit("pgd_eot_full", "pgd_eot_full", s, defense, attack_key,
                                    eval_key, 64, 0, scoring_runs=runs)
  budget = budget_curves.budget_unit("pgd_eot_full", s, defense, attack_key, eval_key, 64, 0,
                                     64, scoring_runs=runs)
  whole = units.run_unit(attack, params, batch)["defended_correct"]
  curves = jax.jit(budget.fn)(params, batch, budget.dynamic)
  assert curves["steps_correct"].shape == (4, runs, 64)  # steps 1, 2, 4, 8
  assert curves["eot_correct"].shape == (3, runs, 64)  # EOT 1, 2, 4
  np.testing.assert_array_equal(np.asarray(curves["steps_correct"][2]), np.asarray(whole))
  np.testing.assert_array_equal(np.asarray(curves["eot_correct"][1]), np.asarray(whole))
  # every other row is the attack unit at that budget (same keys), run by run
  for row, budget in ((curves["steps_correct"][0], dict(num_steps=1)),
                      (curves["steps_correct"][1], dict(num_steps=2)),
                      (curves["steps_correct"][3], dict(num_steps=8)),
                      (curves["eot_correct"][0], dict(n_eot=1)),
                      (curves["eot_correct"][2], dict(n_eot=4))):
    other = attack_units.attack_unit("pgd_eot_full", "pgd_eot_full", dataclasses.replace(
        s, **budget), defense, attack_key, eval_key, 64, 0, scoring_runs=runs)
    np.testing.assert_array_equal(np.asarray(row), np.asarray(units.run_unit(
        other, params, batch)["defended_correct"]))
  assert not np.array_equal(np.asarray(curves["steps_correct"][0]), np.asarray(whole))
  assert not np.array_equal(np.asarray(curves["eot_correct"][0]),
                            np.asarray(curves["eot_correct"][2]))


def test_budget_curves_run_from_halvings_of_the_evaluated_budget_to_twice_it():
  """The curves' last doubling is the one past the evaluated budget (what the search's stop
  rule tests), so a budget the search chose after a helpful doubling into it is not flagged
  for that doubling: steps 40 -> 5, 10, 20, 40, 80; EOT 2 -> 1, 2, 4."""
  assert budget_curves.curve_budgets(40) == (5, 10, 20, 40, 80)
  assert budget_curves.curve_budgets(1) == (1, 2)
  defense, _, _ = _unit_inputs()
  s = attacks_lib.AttackSettings(eps=0.3, step_size=0.1, num_steps=40, n_eot=2)
  unit = budget_curves.budget_unit("pgd_eot_full", s, defense, jax.random.key(0),
                                   jax.random.key(1), 64, 0, 64)
  assert unit.signature["steps"] == (5, 10, 20, 40, 80)
  assert unit.signature["n_eot"] == (1, 2, 4)
  # its cost: the 80-step trajectory at EOT 2 and 40-step runs at EOT 1 and 4
  one = attacks_lib.purifications("pgd_eot_full", s, defense.restarts)
  assert unit.work == pytest.approx(2 * one + one / 2 + 2 * one + 7 * defense.restarts)
  # the points' layout: trajectory points 5, 10, 20, 40, 80 (rows 0-4), then the 40-step runs
  # at EOT 1 and 4 (rows 5, 6); EOT 2 is the trajectory's point at 40 steps
  assert budget_curves.curve_points(40, 2) == budget_curves.CurvePoints(
      (5, 10, 20, 40, 80), (1, 2, 4), (1, 4), (5, 3, 6))
  assert budget_curves.curve_points(1, 1) == budget_curves.CurvePoints((1, 2), (1, 2), (2,),
                                                                        (0, 2))
  assert budget_curves.curve_points(3, 8).eot_rows == (3, 4, 5, 1, 6)  # EOT 1, 2, 4, 8, 16


def test_budget_curves_differentiate_eot_samples_as_the_attack_does():
  """The other EOT counts' runs are chunked as the evaluated attack (a chunk dividing each
  count, never larger): n_eot 20 in chunks of 4 gives curves at 2, 5, 10, 20, 40 (an
  evaluation that fits memory at 20 fits at each); unchunked stays unchunked."""
  defense, _, _ = _unit_inputs()
  s = attacks_lib.AttackSettings(eps=0.3, step_size=0.1, num_steps=10, n_eot=20, eot_chunk=4)
  assert [budget_curves.at_eot(s, e).eot_chunk for e in (2, 5, 10, 40)] == [2, 1, 2, 4]
  assert budget_curves.at_eot(attacks_lib.AttackSettings(n_eot=2), 4).eot_chunk == 0
  unit = budget_curves.budget_unit("pgd_eot_full", s, defense, jax.random.key(0),
                                   jax.random.key(1), 64, 0, 64)
  assert unit.signature["n_eot"] == (2, 5, 10, 20, 40)


def _correct(accuracies, n=64):
  """correct [K, 1, n] of nested curves: the examples right at a larger budget are a subset
  of those right at a smaller one (a stronger attack breaks what a weaker one broke)."""
  return np.stack([np.arange(n) < round(a * n) for a in accuracies])[:, None]


def test_not_converged_is_the_paired_test_of_the_last_doubling():
  budgets = (5, 10, 20, 40)
  test, why = budget_curves.not_converged(budgets, _correct([0.6, 0.45, 0.35, 0.25]), "num_steps")
  assert why and "20 to 40" in why and test["broken_more"] == 6 and test["broken_fewer"] == 0
  assert test["p_value"] == pytest.approx(1 / 64)
  assert budget_curves.not_converged(budgets, _correct([0.6, 0.3, 0.25, 0.25]),
                                     "num_steps")[1] is None
  # 4 examples broken more (p = 1/16): not significant at 0.05, significant at 0.1
  small = _correct([0.5, 0.3125, 0.3125, 0.25])
  assert budget_curves.not_converged(budgets, small, "num_steps")[1] is None
  assert budget_curves.not_converged(budgets, small, "num_steps", level=0.1)[1] is not None
  # 6 broken more and 6 repaired (other examples): no evidence that the doubling helps
  mixed = _correct([0.5, 0.4])
  mixed[1, 0, 40:46] = True
  assert budget_curves.not_converged((20, 40), mixed, "num_steps")[1] is None
  assert budget_curves.not_converged((40,), _correct([0.25]), "num_steps") == (None, None)


def test_an_unconverged_budget_curve_makes_the_report_suspect():
  steps_correct = np.stack([np.arange(64) < k for k in (40, 30, 20, 10)])[:, None]
  flat = np.stack([np.arange(64) < 10] * 2)[:, None]
  falling = budget_curves.budget_report("pgd_eot_full", attacks_lib.AttackSettings(
      num_steps=40, n_eot=2), (5, 10, 20, 40), (1, 2), steps_correct, flat)
  assert not falling["converged"]
  assert [r["accuracy"] for r in falling["by_num_steps"]] == [40 / 64, 30 / 64, 20 / 64, 10 / 64]
  assert len(falling["not_converged_reasons"]) == 1 and "num_steps" in (
      falling["not_converged_reasons"][0])
  base = {"eps_sweep": {}, "robust_accuracy": {}, "robust_accuracy_standard_error": {}}
  reasons = report.suspect_reasons(dict(base, budget_curves=falling), "pgd_eot_full")
  assert any("not converged" in r for r in reasons)
  converged = budget_curves.budget_report("pgd_eot_full", attacks_lib.AttackSettings(
      num_steps=40, n_eot=2), (5, 10, 20, 40), (1, 2), np.stack([flat[0]] * 4), flat)
  assert converged["converged"]
  assert report.suspect_reasons(dict(base, budget_curves=converged), "pgd_eot_full") == []


@pytest.mark.slow  # 28 s for both (2026-12-07): kept for CI's slow tier to hold the default suite under 10 min
@pytest.mark.parametrize("name", ["pgd_eot_full", "apgd_eot"])
def test_an_attack_and_its_eps_sweep_share_programs_that_equal_each_compiled_alone(name):
  """The attack's own unit and a point of its eps sweep (other eps, step size and, for PGD,
  number of steps) share their programs (the attack, then the scoring, which every attack
  unit with the same scoring runs shares); the attack unit's executables, given the sweep
  point's inputs, return the attack with the sweep point's settings compiled from constants
  (`attack_function` with no overrides) under the sweep's keys, scored by the defense under
  the sweep's scoring key. APGD's schedule depends on its steps: its sweep shares the attack
  program only at the attack's own num_steps."""
  defense, params, batch = _unit_inputs(b=16)
  attack_key, eval_key = jax.random.key(5), jax.random.key(6)
  s = attacks_lib.AttackSettings(eps=0.3, step_size=0.1, num_steps=4, n_eot=2,
                                 losses=("ce",))
  point = dataclasses.replace(s, eps=0.1, step_size=0.05, num_steps=3)
  if name == "apgd_eot":
    point = dataclasses.replace(point, num_steps=s.num_steps)
    other = attack_units.attack_unit("x", name, dataclasses.replace(point, num_steps=3), defense,
                                     attack_key, eval_key, 16, 0, sweep_index=1)
    assert other.stages[0].compile_key != attack_units.attack_unit(
        name, name, s, defense, attack_key, eval_key, 16, 0).stages[0].compile_key
  own = attack_units.attack_unit(name, name, s, defense, attack_key, eval_key, 16, 0)
  sweep = attack_units.attack_unit(f"sweep_{name}_eps0.1", name, point, defense, attack_key,
                                   eval_key, 16, 0, sweep_index=2)
  blind = attack_units.attack_unit("pgd_clf", "pgd_clf", s, defense, attack_key, eval_key, 16, 0)
  assert [st.compile_key for st in own.stages] == [st.compile_key for st in sweep.stages]
  assert blind.stages[1].compile_key == own.stages[1].compile_key  # one scoring program
  cache = {}
  compiled = units.compile_stages(own, params, batch, cache)
  assert units.compile_stages(sweep, params, batch, cache) == compiled and len(cache) == 2
  got = units.call_stages(sweep, compiled, params, batch)

  keys = [jax.random.fold_in(jax.random.fold_in(k, units.tag(f"sweep_{name}")), 2)
          for k in (attack_key, eval_key)]
  x_adv = jax.jit(lambda p, x, y, i: attacks_lib.attack_function(name, defense, point)(
      p, common.example_keys(keys[0], i), x, y))(params, batch["image"], batch["label"],
                                                 batch["index"])
  np.testing.assert_array_equal(np.asarray(got["x_adv"]), np.asarray(x_adv))
  probs = defense.predict(params, x_adv, common.example_keys(keys[1], batch["index"]))
  np.testing.assert_array_equal(np.asarray(got["defended_correct"][0]),
                                np.asarray(probs["mean_softmax"] == batch["label"]))
  np.testing.assert_array_equal(np.asarray(got["bare_correct"]), np.asarray(
      jnp.argmax(defense.classify(params, x_adv), -1) == batch["label"]))
  np.testing.assert_allclose(np.asarray(got["distance"]), np.max(np.abs(np.asarray(
      x_adv - batch["image"])), axis=(1, 2, 3)), rtol=0, atol=0)
  # the attack's own inputs give another point (the programs really take the inputs)
  assert not np.array_equal(np.asarray(got["x_adv"]), np.asarray(
      units.call_stages(own, compiled, params, batch)["x_adv"]))
