"""The job of evaluate.py: clean, defended and attacked accuracy of a workdir's networks.

`evaluate` plans, runs and merges. Each kind of measurement is an evaluator, a module that owns
its units, its metric and its section of the report, with the same small interface:
`plan(ev) -> (units, its part of the settings' signature)` and `summarise(ev, stored) ->
(its typed result, its report section)` from its units' stored per-batch results
(`EVALUATORS`: clean, attack, budget_curves, sweep, fixed_noise, certify). `ev` is what they
share (`context.Evaluation`). Each finished (unit, batch) is stored at once (`store.py`), so an
interrupted evaluation started again with the same arguments skips what is done and ends with
the same report (`report.py`). Results are keyed on the networks' content and every setting.
"""

from collections.abc import Callable, Sequence

from jaxpure.jobs.evaluation import attack, budget_curves, certify, clean, context
from jaxpure.jobs.evaluation import fixed_noise, merge, sweep
from jaxpure.jobs.evaluation.settings import (attack_settings, defense_settings,  # noqa: F401
                                              make_defense, memory_budget_bytes,
                                              sweep_settings)

#: The evaluators, in the order their units run and their sections enter the report.
EVALUATORS = (clean, attack, budget_curves, sweep, fixed_noise, certify)


def evaluate(config, workdir: str, attack_names: Sequence[str] = (),
             num_examples: int | None = None, *, sweep: bool = False, mesh=None, print_fn=print,
             after_batch: Callable[[str, int], None] = lambda unit, batch: None,
             output_dir: str | None = None, checkpoint_steps: dict | None = None,
             certify: bool = False) -> dict:
  """Runs the evaluation, writes OUTPUT/report.json and the PNGs (OUTPUT: WORKDIR/eval by
  default); returns the report.

  attack_names: the attacks to run (the blind baseline comes with any); sweep: also run the eps
  sweep of config.attack.sweep_attack and the baseline (the gradient-masking check).
  Each attacked point is scored by config.eval.scoring_runs independent runs of the defense.
  checkpoint_steps: {network role: step} to evaluate an older kept checkpoint (default the
  latest). certify: also certify the smoothed classifiers of config.certify (the report's
  `certified` section and certified.png; `certify.py`).
  """
  ev = context.prepare(config, workdir, attack_names, num_examples, sweep=sweep,
                       certify=certify, mesh=mesh, print_fn=print_fn, after_batch=after_batch,
                       output=output_dir, checkpoint_steps=checkpoint_steps)
  planned = {e: e.plan(ev) for e in EVALUATORS}  # (units, part of the settings' signature)
  ev.runner.plan([u for units, _ in planned.values() for u in units])
  summaries = {e: e.summarise(ev, {u.name: ev.runner.run(u) for u in planned[e][0]})
               for e in EVALUATORS}  # (typed result, report section)
  report = merge.report(ev, [section for _, section in summaries.values()])
  signature = {"shared": ev.shared}
  for _, part in planned.values():
    signature.update(part)
  merge.write(ev, report, signature, summaries[clean][0], summaries[attack][0])
  return report
