"""The clean evaluator: accuracy of the bare classifier and of the defense on the clean test
examples, with the purifier's per-step trace (`defense.BatchStatistics`). Its section of the
report: clean and defended accuracy, each read-out, one restart, the noise-only ablation and
the accuracy and step scalars after each purifier step."""

import numpy as np

from jaxpure.defense import BatchStatistics
from jaxpure.jobs.evaluation import units as units_lib
from jaxpure.purifiers.common import example_keys

UNIT = "clean"


def plan(ev) -> tuple[list[units_lib.Unit], dict]:
  """One unit, `Defense.batch_statistics` on each batch (keys folded from the example index);
  nothing to add to the settings' signature."""
  defense, eval_key = ev.defense, ev.eval_key

  def fn(params, batch, dynamic):
    del dynamic
    keys = example_keys(eval_key, batch["index"])
    return defense.batch_statistics(params, batch["image"], batch["label"], keys).arrays()
  return [units_lib.Unit(UNIT, fn, ev.settings.batch_size, {},
                         work=float(defense.restarts))], {}


def summarise(ev, stored: dict) -> tuple[BatchStatistics, dict]:
  """(the statistics of every evaluated example, batch axis last; the report's clean section)
  from the stored batches."""
  results = stored[UNIT]
  stats = BatchStatistics.from_arrays({k: units_lib.concat(results, k) for k in results[0]
                                       if k != "seconds"})
  by_step = stats.by_step.mean(-1).tolist()
  return stats, {
      "dataset": ev.settings.dataset, "num_examples": int(stats.clean.shape[-1]),
      "first_example": ev.first,
      "clean_accuracy": _accuracy(stats.clean),
      "defended_clean_accuracy": _accuracy(stats.readouts["mean_softmax"]),
      "defended_accuracy_by_readout": {k: _accuracy(v) for k, v in stats.readouts.items()},
      "single_restart_accuracy": _accuracy(stats.single_restart),
      "noise_only_accuracy": by_step[0],
      "accuracy_by_step": by_step,
      **{f"{name}_by_step": step_scalar_summary(v, stats.step_mask)
         for name, v in stats.step_scalars.items()}}


def _accuracy(correct: np.ndarray) -> float:
  return float(correct.mean())


def step_scalar_summary(values: np.ndarray, mask: np.ndarray) -> list[dict]:
  """Per step t: the fraction of examples that took it and quantiles of a step scalar over
  those examples. values, mask: [R, T, n]."""
  rows = []
  for t in range(values.shape[1]):
    a = values[:, t][mask[:, t]]
    q = np.percentile(a, [25, 50, 75]).tolist() if a.size else [None] * 3
    rows.append({"step": t + 1, "active_fraction": float(mask[:, t].mean()),
                 "q25": q[0], "median": q[1], "q75": q[2],
                 "mean": float(a.mean()) if a.size else None})
  return rows
