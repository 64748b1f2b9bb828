"""Statistics of evaluations of randomized defenses (docs/design.md#5-scoring-randomized-defenses): the paired test that decides
whether a larger attack budget still helps, and the unbiased estimate of robustness to M
resubmissions.

Arrays of correctness are [runs, n] bool: n examples, each scored by `runs` independent runs
of the defense (the same scoring keys at every budget being compared).
"""

import math

import numpy as np
from scipy import stats

#: The paired test's one-sided level: a doubling "still helps" when p < this.
DEFAULT_LEVEL = 0.05


def standard_error(p: float, n: int) -> float:
  """The binomial standard error of an accuracy p over n examples."""
  return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def standard_error_over_examples(per_example: np.ndarray) -> float:
  """The standard error of the mean of per-example values [n] (sample std, ddof 1, over
  sqrt(n)); 0 for a single example."""
  n = per_example.shape[0]
  return float(np.std(per_example, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def paired_budget_test(correct_small: np.ndarray, correct_large: np.ndarray,
                       level: float = DEFAULT_LEVEL) -> dict:
  """One-sided exact sign test (McNemar's test with one scoring run) of "the larger budget
  breaks more examples than the smaller", on the same examples.

  correct_small, correct_large: [runs, n] (or [n]) bool, example i scored by the same runs at
  both budgets (or [n] fractions of runs correct). Per example, d_i = (runs correct at the
  smaller budget) - (runs correct at the larger); a = #{d_i > 0} (examples the larger budget
  broke more), c = #{d_i < 0} (the reverse), ties dropped. p = P(X >= a) for
  X ~ Binomial(a + c, 1/2). Returns {"broken_more": a, "broken_fewer": c, "p_value": p,
  "level": level, "still_helps": p < level}."""
  small = np.asarray(correct_small, float).reshape(-1, np.shape(correct_small)[-1])
  large = np.asarray(correct_large, float).reshape(small.shape)
  d = small.sum(0) - large.sum(0)
  a, c = int((d > 0).sum()), int((d < 0).sum())
  p = float(stats.binomtest(a, a + c, 0.5, alternative="greater").pvalue) if a + c else 1.0
  return {"broken_more": a, "broken_fewer": c, "p_value": p, "level": level,
          "still_helps": p < level}


def resubmission_robustness(runs: np.ndarray, m: int) -> float:
  """The unbiased (UMVU) estimate of robustness to m resubmissions, mean_i (1 - p_i)^m, from
  runs [N, n] bool (N >= m independent scorings of each example's attacked point; p_i its
  probability of being wrong). With w_i wrong runs of N the per-example estimate is
  C(N - m, w_i) / C(N, w_i), 0 when w_i > N - m (DiffHammer, NeurIPS 2024); m = 1 is the mean
  over runs, m = N the all-runs score. The plug-in (1 - w_i/N)^m is biased upwards."""
  runs = np.asarray(runs, bool)
  n_runs = runs.shape[0]
  if not 1 <= m <= n_runs:
    raise ValueError(f"m={m} resubmissions need 1 <= m <= N={n_runs} scoring runs")
  wrong = n_runs - runs.sum(0)
  per_example = [math.comb(n_runs - m, int(w)) / math.comb(n_runs, int(w)) for w in wrong]
  return float(np.mean(per_example))
