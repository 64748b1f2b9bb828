"""The evaluation's pictures: purification.png, steps.png, adversarial.png, eps_sweep.png,
budget.png, certified.png.

Each run's pictures are kept per settings beside their report
(EVAL/reports/<name>_<settings hash>.png, like reports/report_<settings hash>.json), and the
latest run's also under the plain names (`keep`)."""

import os
import shutil

import jax
import jax.numpy as jnp

from jaxpure import data, images, plots
from jaxpure.defense import Defense
from jaxpure.purifiers.common import example_keys


#: Every picture an evaluation may write.
NAMES = ("purification.png", "steps.png", "adversarial.png", "eps_sweep.png", "budget.png",
         "certified.png")


def write_all(out_dir: str, settings, defense: Defense, params, test_split, key, report,
              step_values: dict, step_mask, adversarial: dict) -> list[str]:
  """Writes the pictures into out_dir; returns their file names. settings: the evaluation's
  `settings.EvalSettings` (its grid_examples, grid_restarts, attack_grid_examples,
  first_example). step_values: {scalar name:
  [R, T, n]}; step_mask [R, T, n] (`defense.BatchStatistics`); adversarial: {attack: its
  first attacked images [m, H, W, C] in [0, 1]}. eps_sweep.png only when the report has an
  eps sweep."""
  written = ["purification.png", "steps.png"]
  k = min(settings.grid_examples, len(test_split))
  first = settings.first_example
  x, _ = data.read_all(test_split, k, first)
  keys = example_keys(key, first + jnp.arange(x.shape[0]))
  restarts = min(settings.grid_restarts, defense.restarts)
  purify = jax.jit(lambda p, x, keys: defense.purify(p, x, keys, defense.restarts)[1]["iterates"])
  iterates = purify(params, jnp.asarray(x), keys)  # [R, T + 1, k, ...]
  rows, labels = [x], ["clean"]
  for r in range(restarts):
    rows += [iterates[r, 0], iterates[r, -1]]
    labels += [f"noised, restart {r + 1}", f"purified, restart {r + 1}"]
  images.save_grid(os.path.join(out_dir, "purification.png"), rows, row_labels=labels,
                   title=f"{defense.family.NAME} purification of test images "
                         f"({restarts} of {defense.restarts} restarts)")
  steps = step_mask.shape[1]
  name, values = next(iter(step_values.items()), (None, None))
  plots.plot_purification_steps(
      os.path.join(out_dir, "steps.png"), report["accuracy_by_step"],
      [values[:, t][step_mask[:, t]] for t in range(steps)] if name else [],
      [float(step_mask[:, t].mean()) for t in range(steps)], report["clean_accuracy"],
      scalar_name=name)
  shown = {n: r for n, r in adversarial.items() if n in report["attacks"]}
  if adversarial:
    m = min(settings.attack_grid_examples, k)
    xa, _ = data.read_all(test_split, m, first)
    rows, labels = [xa], ["clean"]
    for name, r in shown.items():
      x_adv = jnp.asarray(r[:m])
      rows += [x_adv, purify(params, x_adv, keys[:m])[0, -1]]
      labels += [f"{name} adversarial", f"{name} purified"]
    settings = report["settings"]
    images.save_grid(os.path.join(out_dir, "adversarial.png"), rows, row_labels=labels,
                     title=f"attacks at eps {settings['eps']:.3g} ({settings['norm']}); "
                           "purified: restart 1")
    written.append("adversarial.png")
  if adversarial and report["eps_sweep"]:
    plots.plot_eps_sweep(os.path.join(out_dir, "eps_sweep.png"), report["eps_sweep"],
                         report["robust_accuracy"], report["settings"]["eps"],
                         report["undefended_robust_accuracy"])
    written.append("eps_sweep.png")
  if report.get("budget_curves"):
    plots.plot_budget_curves(os.path.join(out_dir, "budget.png"), report["budget_curves"])
    written.append("budget.png")
  if report.get("certified"):
    plots.plot_certified(os.path.join(out_dir, "certified.png"), report["certified"])
    written.append("certified.png")
  return written


def keep(out_dir: str, written: list[str], settings_hash: str) -> list[str]:
  """Copies the pictures `written` (plain names in out_dir) to
  out_dir/reports/<name>_<settings_hash>.png, beside report_<settings_hash>.json, and removes
  plain-named pictures of an earlier run that this one did not write (they would not match
  report.json). Returns the kept copies' paths."""
  reports = os.path.join(out_dir, "reports")
  os.makedirs(reports, exist_ok=True)
  kept = []
  for name in written:
    stem, ext = os.path.splitext(name)
    path = os.path.join(reports, f"{stem}_{settings_hash}{ext}")
    shutil.copyfile(os.path.join(out_dir, name), path + ".tmp")
    os.replace(path + ".tmp", path)
    kept.append(path)
  for name in set(NAMES) - set(written):
    if os.path.isfile(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  return kept
