"""The evaluation report's statistics on hand-built arrays, against values computed by hand:
standard errors (over examples, ddof 1), the worst case over runs and attacks, majority votes
with an even number of runs, who broke what, per-step summaries, the suspect flags and the
summary line."""

import math

import numpy as np
import pytest

from jaxpure import attacks as attacks_lib, statistics
from jaxpure.jobs.evaluation import attack as attack_units, budget_curves, report
from jaxpure.jobs.evaluation import clean as clean_units

T, F = True, False


def test_standard_error_is_the_binomial_formula():
  assert statistics.standard_error(0.25, 12) == pytest.approx(math.sqrt(0.25 * 0.75 / 12),
                                                               rel=1e-15)
  assert statistics.standard_error(0.5, 100) == pytest.approx(0.05, rel=1e-15)
  assert statistics.standard_error(1.0, 7) == 0.0
  assert statistics.standard_error(0.5, 0) == pytest.approx(0.5)  # no examples: n taken as 1


# 4 runs (an even number) of 6 examples, right in 4, 3, 2, 2, 1, 0 of the runs.
RUNS = np.array([[T, T, T, F, F, F],
                 [T, T, F, T, F, F],
                 [T, T, T, F, T, F],
                 [T, F, F, T, F, F]])


def test_run_scores_against_hand_computed_values():
  got = attack_units.run_scores(RUNS)
  assert got["runs"] == 4
  # mean: per example 1, .75, .5, .5, .25, 0 -> .5; squared deviations .25 .0625 0 0 .0625 .25
  # sum .625, variance (ddof 1) .125, standard error sqrt(.125 / 6)
  assert got["mean"]["accuracy"] == pytest.approx(0.5, rel=1e-15)
  assert got["mean"]["standard_error"] == pytest.approx(math.sqrt(0.125 / 6), rel=1e-12)
  # all runs: only example 0 -> 1/6; variance (ddof 1) 6/5 * 1/6 * 5/6 = 1/6
  assert got["all_runs"]["accuracy"] == pytest.approx(1 / 6, rel=1e-15)
  assert got["all_runs"]["standard_error"] == pytest.approx(math.sqrt(1 / 6 / 6), rel=1e-12)
  # majority vote: 4/4 and 3/4 win; the 2-of-4 ties count as wrong -> 2/6 = 1/3;
  # variance (ddof 1) 6/5 * 1/3 * 2/3 = 4/15
  assert got["majority_vote"]["accuracy"] == pytest.approx(1 / 3, rel=1e-15)
  assert got["majority_vote"]["standard_error"] == pytest.approx(math.sqrt(4 / 15 / 6),
                                                                 rel=1e-12)


def test_run_scores_of_one_example_has_no_standard_error():
  got = attack_units.run_scores(np.array([[T], [F]]))
  assert got["mean"] == {"accuracy": 0.5, "standard_error": 0.0}
  assert got["majority_vote"]["accuracy"] == 0.0  # a 1-1 tie is wrong


# 3 attacks, 2 runs (even: a 1-of-2 example is a tie, not broken), 5 examples.
BY_ATTACK = {
    # example 1 wrong in both runs (broken); example 2 wrong in run 1 only (a tie)
    "a": np.array([[T, F, T, T, T], [T, F, F, T, T]]),
    # examples 1 and 3 broken; example 2 wrong in run 0 only (a tie)
    "b": np.array([[T, F, F, F, T], [T, F, T, F, T]]),
    # example 4 broken
    "c": np.array([[T, T, T, T, F], [T, T, T, T, F]]),
}


def test_worst_case_against_hand_computed_values():
  got = attack_units.worst_case(BY_ATTACK)
  # Per run, right only if right against every attack: run 0 [T F F F F], run 1 [T F F F F]
  # (example 2 falls in both runs, to b in run 0 and to a in run 1, though neither attack
  # breaks it in a majority of runs). Per example 1, 0, 0, 0, 0 -> 0.2; variance (ddof 1)
  # 5/4 * .2 * .8 = .2; standard error sqrt(.2 / 5) = .2.
  assert got["accuracy"] == pytest.approx(0.2, rel=1e-15)
  assert got["standard_error"] == pytest.approx(0.2, rel=1e-12)
  assert got["broken_by"] == {"a": 1, "b": 2, "c": 1}  # ties are not broken
  # example 1 is broken by a and b both; 3 only by b, 4 only by c
  assert got["broken_only_by"] == {"a": 0, "b": 1, "c": 1}
  assert got["per_example"] == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_worst_case_of_nothing_and_of_one_example():
  assert attack_units.worst_case({}) == {"accuracy": None, "standard_error": None,
                                   "per_example": [], "broken_by": {}, "broken_only_by": {}}
  got = attack_units.worst_case({"a": np.array([[T], [T]]), "b": np.array([[T], [F]])})
  assert got["accuracy"] == 0.5 and got["standard_error"] == 0.0
  assert got["per_example"] == [0.5]
  assert got["broken_by"] == {"a": 0, "b": 0} and got["broken_only_by"] == {"a": 0, "b": 0}


def test_budget_curve_standard_error_is_over_examples():
  correct = np.array([[[T, T, F, F], [T, F, F, F]]])  # one budget, 2 runs, 4 examples
  (row,) = budget_curves.budget_curve([7], correct, "n_eot")
  # per example 1, .5, 0, 0 -> .375; squared deviations .390625 .015625 .140625 .140625 sum
  # .6875, variance (ddof 1) .6875 / 3
  assert row == {"n_eot": 7, "accuracy": 0.375,
                 "standard_error": pytest.approx(math.sqrt(0.6875 / 3 / 4), rel=1e-12)}


def test_step_scalar_summary_against_hand_computed_quantiles():
  values = np.array([[[1.0, 2, 3], [10, 99, 99], [99, 99, 99]],  # restart 0, steps 1-3
                     [[4.0, 5, 6], [99, 20, 99], [99, 99, 99]]])  # restart 1
  mask = np.array([[[T, T, T], [T, F, F], [F, F, F]],
                   [[T, T, T], [F, T, F], [F, F, F]]])
  rows = clean_units.step_scalar_summary(values, mask)
  assert [r["step"] for r in rows] == [1, 2, 3]
  # step 1: the six values 1..6; linear interpolation at positions 1.25, 2.5, 3.75
  assert rows[0] == {"step": 1, "active_fraction": 1.0, "q25": 2.25, "median": 3.5,
                     "q75": 4.75, "mean": 3.5}
  # step 2: only the masked-in 10 and 20
  assert rows[1] == {"step": 2, "active_fraction": pytest.approx(2 / 6), "q25": 12.5,
                     "median": 15.0, "q75": 17.5, "mean": 15.0}
  assert rows[2] == {"step": 3, "active_fraction": 0.0, "q25": None, "median": None,
                     "q75": None, "mean": None}


def _report(sweep_rows=(), robust=None, se=None):
  return {"eps_sweep": {"pgd_eot_full": list(sweep_rows)} if sweep_rows else {},
          "budget_curves": None, "robust_accuracy": robust or {},
          "robust_accuracy_standard_error": se or {}}


def test_accuracy_left_at_the_largest_eps_is_suspect():
  rows = [{"eps": 0.01, "defended_accuracy": 0.9}, {"eps": 0.1, "defended_accuracy": 0.11}]
  (why,) = report.suspect_reasons(_report(rows), "pgd_eot_full")
  assert "0.110" in why and "0.1000" in why and "pgd_eot_full" in why
  at_bound = [{"eps": 0.01, "defended_accuracy": 0.9}, {"eps": 0.1, "defended_accuracy": 0.10}]
  assert report.suspect_reasons(_report(at_bound), "pgd_eot_full") == []
  # only the largest eps counts: accuracy high at a small eps is expected
  falls = [{"eps": 0.01, "defended_accuracy": 0.9}, {"eps": 0.1, "defended_accuracy": 0.05}]
  assert report.suspect_reasons(_report(falls), "pgd_eot_full") == []
  assert report.suspect_reasons(_report(rows), "bpda_eot") == []  # another attack's sweep


def test_a_non_exact_attack_beating_the_best_exact_one_is_suspect():
  exact = attacks_lib.EXACT_GRADIENT_ATTACKS
  assert set(exact) == {"pgd_eot_full", "apgd_eot", "pgd_eot_inloop"}
  assert "bpda_eot" not in exact and "pgd_eot_surrogate" not in exact
  robust = {"pgd_eot_full": 0.40, "apgd_eot": 0.35, "bpda_eot": 0.29, "pgd_eot_surrogate": 0.32}
  se = {"pgd_eot_full": 0.01, "apgd_eot": 0.05, "bpda_eot": 0.005, "pgd_eot_surrogate": 0.005}
  # the best exact attack is apgd_eot (0.35 - 0.05 = 0.30): bpda_eot at 0.29 beats it by more
  # than one of its standard errors; the surrogate at 0.32 beats pgd_eot_full only
  (why,) = report.suspect_reasons(_report(robust=robust, se=se), "pgd_eot_full")
  assert why.startswith("bpda_eot (0.290) beats the exact-gradient apgd_eot (0.350)")
  robust["bpda_eot"] = 0.31
  assert report.suspect_reasons(_report(robust=robust, se=se), "pgd_eot_full") == []
  # without an exact-gradient attack there is nothing to compare with
  assert report.suspect_reasons(_report(robust={"bpda_eot": 0.0}, se={"bpda_eot": 0.0}),
                                "pgd_eot_full") == []


def test_summary_line_carries_the_worst_case():
  r = {"clean_accuracy": 0.9, "defended_clean_accuracy": 0.8, "noise_only_accuracy": 0.7,
       "robust_accuracy": {"a": 0.5, "b": 0.4}, "undefended_robust_accuracy": 0.1,
       "robust_accuracy_worst_case": 0.25, "budget_curves": None}
  line = report.summary_line("R", r, ["a", "b"])
  assert line == ("wrote R: clean 0.9000, defended 0.8000, noise only 0.7000, robust a 0.5000, "
                  "b 0.4000, undefended 0.1000, worst case over attacks 0.2500")
  r["robust_accuracy_worst_case"] = None
  assert "worst case" not in report.summary_line("R", r, ["a", "b"])
