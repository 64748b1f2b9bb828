"""The evaluation's report from its evaluators' sections: the sections merged with what
describes the run (settings, cost, remat, networks, versions, device, timings) and the suspect
checks; then written with the pictures, and summed up in a few printed lines."""

import os

import flax
import jax

from jaxpure import __version__, attacks as attacks_lib
from jaxpure.jobs.evaluation import budget as budget_lib, pictures, report as report_lib
from jaxpure.jobs.evaluation import settings as settings_lib, store as store_lib


def report(ev, sections: list[dict]) -> dict:
  """The report: the evaluators' sections in order, then the run's description and the
  suspect reasons."""
  s, runner = ev.settings, ev.runner
  out = {}
  for section in sections:
    out.update(section)
  out.update({
      "settings": {"defense": ev.shared["defense"], "eval_seed": s.eval_seed,
                   "attack_seed": s.attack_seed, "norm": s.norm, "eps": s.eps},
      "cost": settings_lib.cost(ev.defense),
      "remat": {"setting": getattr(ev.defense.settings, "remat", None),
                "memory_budget_bytes": runner.memory_budget,
                "auto_choices": runner.remat_choices},
      "networks": {role: {"step": m.step, "fingerprint": m.fingerprint,
                          "model": m.metadata.get("model"), "source": m.source}
                   for role, m in ev.loaded.items()},
      "versions": {"jaxpure": __version__, "jax": jax.__version__, "flax": flax.__version__},
      "device": {"platform": jax.devices()[0].platform, "kind": jax.devices()[0].device_kind,
                 "count": jax.device_count(), "processes": jax.process_count()},
      "timings": runner.timings})
  out["suspect_reasons"] = report_lib.suspect_reasons(out, s.sweep_attack)
  out["evaluation_suspect"] = bool(out["suspect_reasons"])
  return out


def write(ev, out: dict, signature: dict, stats, attacked: dict) -> None:
  """Writes report.json (and its copy per settings hash of `signature`) and the pictures
  (process 0 only), and prints the summary: the accuracies, the attack budget's status and
  any suspect reason. stats: the clean evaluator's BatchStatistics; attacked: {attack:
  AttackResult}."""
  settings_hash = store_lib.signature_hash(signature)
  path = os.path.join(ev.out_dir, "report.json")
  if ev.runner.is_writer:
    drawn = pictures.write_all(ev.out_dir, ev.settings, ev.defense, ev.params, ev.test_split,
                               ev.eval_key, out, stats.step_scalars, stats.step_mask,
                               {name: r.x_adv for name, r in attacked.items()})
    path = report_lib.write(ev.out_dir, out, settings_hash)
    pictures.keep(ev.out_dir, drawn, settings_hash)
  ev.print_fn(report_lib.summary_line(path, out, ev.attack_names))
  if any(attacks_lib.SPECS[name].exact_gradient for name in ev.attack_names):
    ev.print_fn(f"[eval] {budget_lib.summary(ev.searched)}")
  for reason in out["suspect_reasons"]:
    ev.print_fn(f"[eval] SUSPECT: {reason}")
