"""The automatic attack budget: the paired test, the search on toy budget curves whose answer
is known, its units against the attack units, and the resubmission estimator."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from jaxpure import attacks as attacks_lib, statistics
from jaxpure.errors import ConfigError
from jaxpure.jobs.evaluation import attack as attack_units, budget, budget_curves, report, units

from test_scoring import _unit_inputs


def _pair(a, c, ties_correct=3, ties_wrong=2, runs=1):
  """correct [runs, n] at a smaller and a larger budget: a examples broken only by the larger,
  c only by the smaller, and ties."""
  small = [True] * a + [False] * c + [True] * ties_correct + [False] * ties_wrong
  large = [False] * a + [True] * c + [True] * ties_correct + [False] * ties_wrong
  return np.array([small] * runs), np.array([large] * runs)


def test_paired_test_is_the_one_sided_sign_test_by_hand():
  # a = 6 broken more, c = 2 fewer: P(X >= 6 | X ~ Bin(8, 1/2)) = (28 + 8 + 1) / 256
  t = statistics.paired_budget_test(*_pair(6, 2))
  assert (t["broken_more"], t["broken_fewer"]) == (6, 2)
  assert t["p_value"] == pytest.approx(37 / 256, rel=1e-12) and not t["still_helps"]
  # a = 5, c = 0: 1 / 32 < 0.05; the ties do not count
  t = statistics.paired_budget_test(*_pair(5, 0, ties_correct=40, ties_wrong=40))
  assert t["p_value"] == pytest.approx(1 / 32, rel=1e-12) and t["still_helps"]
  assert not statistics.paired_budget_test(*_pair(5, 0), level=0.01)["still_helps"]
  # nothing differs: p = 1
  assert statistics.paired_budget_test(*_pair(0, 0))["p_value"] == 1.0
  # several runs: per example, the difference of its correct runs decides the sign
  small = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 0]], bool)  # runs x examples
  large = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [1, 1, 1, 0]], bool)
  # per example: 3-2, 2-1, 1-2, 2-2 -> a = 2 (examples 0, 1), c = 1 (example 2)
  t = statistics.paired_budget_test(small, large)
  assert (t["broken_more"], t["broken_fewer"]) == (2, 1)
  assert t["p_value"] == pytest.approx(4 / 8)  # P(X >= 2 | Bin(3, 1/2))


def test_an_unpaired_drop_within_one_standard_error_can_still_be_significant_paired():
  """Issue 27's case: a doubling that drops accuracy by less than one
  standard error passes an unpaired check, but 5 examples broken at the larger budget and none
  repaired is a significant paired difference (p = 1/32)."""
  small, large = _pair(5, 0, ties_correct=40, ties_wrong=83)
  drop = small.mean() - large.mean()
  se = statistics.standard_error_over_examples(large.mean(0).astype(float))
  assert drop < se
  assert statistics.paired_budget_test(small, large)["still_helps"]
  rows_test, why = budget_curves.not_converged((30, 60), np.stack([small, large]), "num_steps")
  assert why and "30 to 60" in why and rows_test["broken_more"] == 5


def _toy(thresholds, n_eot_only=False, calls=None):
  """run_points of a toy attack whose budget curve is known: example i is broken (at every
  scoring run) once the attack's gradient samples per image (steps x n_eot; with
  n_eot_only, n_eot alone) reach thresholds[i]."""
  thresholds = np.asarray(thresholds)

  def run_points(s, record):
    if calls is not None:
      calls.append((s.n_eot, tuple(record)))
    budgets = [s.n_eot if n_eot_only else k * s.n_eot for k in record]
    return np.stack([np.stack([thresholds > b] * 2) for b in budgets])  # [K, runs=2, n]
  return run_points


def _settings(steps=10, n_eot=2):
  return attacks_lib.AttackSettings(num_steps=steps, n_eot=n_eot)


def test_search_stops_on_a_flat_curve():
  calls = []
  # every example either falls at the first budget already or never: doubling changes nothing
  flat = _toy([5] * 30 + [10**9] * 30, calls=calls)
  record = budget.search("pgd_eot_full", _settings(), 10**6, flat)
  assert record["status"] == budget.CONVERGED
  assert record["chosen"] == {"num_steps": 10, "n_eot": 2, "gradients_per_image": 20}
  assert [(r["doubled"], r["broken_more"]) for r in record["points"]] == [("num_steps", 0),
                                                                           ("n_eot", 0)]
  assert calls == [(2, (10, 20)), (4, (10,))]  # one trajectory per comparison


def test_search_continues_on_a_falling_curve_and_stops_where_it_flattens():
  # 20 examples fall in each of (20, 40], (40, 80]; none after: steps 10 -> 20 -> 40 help
  # (at EOT 2: 20 -> 40 -> 80 gradient samples), 40 -> 80 does not; then EOT 2 -> 4 at 40
  # steps (160 samples) breaks nothing either.
  falling = _toy([30] * 20 + [60] * 20 + [10**9] * 20)
  record = budget.search("pgd_eot_full", _settings(), 10**6, falling)
  assert record["status"] == budget.CONVERGED
  assert record["chosen"]["num_steps"] == 40 and record["chosen"]["n_eot"] == 2
  steps_rows = [r for r in record["points"] if r["doubled"] == "num_steps"]
  assert [(r["from"]["num_steps"], r["broken_more"], r["still_helps"]) for r in steps_rows] == [
      (10, 20, True), (20, 20, True), (40, 0, False)]
  assert steps_rows[0]["from"]["accuracy"] == 1.0
  assert steps_rows[-1]["to"]["accuracy"] == pytest.approx(20 / 60)


def test_search_doubles_eot_samples_when_they_are_what_helps():
  # breaking depends on the EOT samples alone: 2 -> 4 -> 8 help, 8 -> 16 does not
  record = budget.search("pgd_eot_full", _settings(), 10**6,
                         _toy([3] * 20 + [6] * 20 + [10**9] * 20, n_eot_only=True))
  assert record["status"] == budget.CONVERGED
  assert (record["chosen"]["num_steps"], record["chosen"]["n_eot"]) == (10, 8)
  assert [r["doubled"] for r in record["points"]] == ["num_steps", "n_eot", "n_eot", "n_eot"]


def test_search_stops_at_the_cap_and_says_the_number_is_an_upper_bound():
  falling = _toy(list(np.linspace(21, 80, 30)) + [10**9] * 30)  # falls up to 80 samples
  record = budget.search("pgd_eot_full", _settings(), 80, falling)
  assert record["status"] == budget.CAP_REACHED
  assert record["chosen"] == {"num_steps": 40, "n_eot": 2, "gradients_per_image": 80}
  assert all(r["to"]["num_steps"] * r["to"]["n_eot"] <= 80 for r in record["points"])
  assert "upper bound" in budget.summary(dict(record, examples={"first": 5, "count": 3}))


def test_budget_subset_follows_the_reported_examples_or_a_given_range():
  assert budget.subset(0, 256, 360, -1, 64) == (256, 64)
  assert budget.subset(0, 256, 300, -1, 64) == (256, 44)  # what is left
  assert budget.subset(10, 20, 360, 100, 64) == (100, 64)
  with pytest.raises(ConfigError, match="budget_first_example"):
    budget.subset(0, 360, 360, -1, 64)


def test_search_units_score_what_the_attack_units_give_at_those_budgets():
  """A comparison's points are the attack unit's results at those budgets (same keys, same
  scoring runs), so the test pairs the same scorings."""
  defense, params, batch = _unit_inputs(b=64)
  attack_key, eval_key = jax.random.key(3), jax.random.key(4)
  s = attacks_lib.AttackSettings(eps=0.3, step_size=0.1, num_steps=2, n_eot=2)
  unit = budget.trajectory_unit("search", "pgd_eot_full", s, (2, 4), defense, attack_key,
                                eval_key, 64, 0, scoring_runs=3)
  correct = np.asarray(units.run_unit(unit, params, batch)["correct"])
  assert correct.shape == (2, 3, 64)
  for row, steps in zip(correct, (2, 4)):
    alone = attack_units.attack_unit("pgd_eot_full", "pgd_eot_full", dataclasses.replace(
        s, num_steps=steps), defense, attack_key, eval_key, 64, 0, scoring_runs=3)
    np.testing.assert_array_equal(row, np.asarray(units.run_unit(
        alone, params, batch)["defended_correct"]))
  assert not np.array_equal(correct[0], correct[1])


def test_with_gradient_budget_gives_apgd_one_step_fewer():
  s = _settings(10, 1)
  assert attacks_lib.with_gradient_budget("pgd_eot_full", s, 60, 2).num_steps == 60
  apgd = attacks_lib.with_gradient_budget("apgd_eot", s, 60, 2)
  assert (apgd.num_steps, apgd.n_eot) == (59, 2)
  # (the final-iterate candidate adds the choice's purifications, not gradient samples)
  assert attacks_lib.purifications("apgd_eot", dataclasses.replace(
      apgd, losses=("ce",), final_candidate=False), 1) == attacks_lib.purifications(
          "pgd_eot_full", attacks_lib.with_gradient_budget("pgd_eot_full", s, 60, 2), 1)


def test_resubmission_estimate_by_hand_and_unbiased_on_a_toy_defense():
  # one example wrong in 2 of 5 runs: C(3, 2) / C(5, 2) for M = 2, C(2, 2) / C(5, 2) for M = 3
  runs = np.array([[1], [0], [1], [0], [1]], bool)
  assert statistics.resubmission_robustness(runs, 2) == pytest.approx(3 / 10)
  assert statistics.resubmission_robustness(runs, 3) == pytest.approx(1 / 10)
  assert statistics.resubmission_robustness(runs, 4) == 0.0  # 2 wrong > N - M = 1
  assert statistics.resubmission_robustness(runs, 1) == pytest.approx(runs.mean())
  assert statistics.resubmission_robustness(runs, 5) == float(runs.all())
  with pytest.raises(ValueError):
    statistics.resubmission_robustness(runs, 6)
  # A toy randomized defense: example i is classified right with probability q_i in each
  # run. Robustness to M submissions is mean_i q_i^M in closed form; the estimate from N = 6
  # runs per example is unbiased (within 4 standard errors over 40,000 examples), the plug-in
  # (w/N) estimate is biased upwards by more than that.
  rng = np.random.default_rng(0)
  q = rng.choice([0.3, 0.6, 0.9], size=40_000)
  runs = rng.random((6, q.size)) < q
  m = 3
  exact = float(np.mean(q ** m))
  per_example = [math.comb(6 - m, int(w)) / math.comb(6, int(w)) for w in 6 - runs.sum(0)]
  tolerance = 4 * np.std(per_example) / math.sqrt(q.size)
  assert abs(statistics.resubmission_robustness(runs, m) - exact) < tolerance
  assert np.mean(runs.mean(0) ** m) - exact > tolerance
  scores = attack_units.run_scores(runs[:, :100], resubmissions=3)
  assert scores["resubmission"]["submissions"] == 3
  assert scores["resubmission"]["accuracy"] == pytest.approx(
      statistics.resubmission_robustness(runs[:, :100], 3))


def test_a_search_stopped_by_its_cap_makes_the_report_suspect():
  base = {"eps_sweep": {}, "robust_accuracy": {}, "robust_accuracy_standard_error": {}}
  capped = budget.search("pgd_eot_full", _settings(), 80,
                         _toy(list(np.linspace(21, 80, 30)) + [10**9] * 30))
  (why,) = report.suspect_reasons(dict(base, budget_search=capped), "pgd_eot_full")
  assert "cap" in why and "80" in why
  converged = budget.search("pgd_eot_full", _settings(), 10**6, _toy([5] * 60))
  assert report.suspect_reasons(dict(base, budget_search=converged), "pgd_eot_full") == []
