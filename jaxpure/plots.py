"""Matplotlib figures of an evaluation (written as PNG; headless Agg backend)."""

import os

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_purification_steps(path: str, accuracy_by_step, alphas_by_step, active_by_step,
                            clean_accuracy: float | None = None, scalar_name: str | None = "alpha"
                            ) -> str:
  """Two panels: ensemble accuracy after each purification step (step 0 = noise only), and
  the distribution of the purifier's step scalar (ADP: the step size alpha) over active
  examples at each step (box plots), with the fraction of examples still active.

  accuracy_by_step: [T + 1]; alphas_by_step: list of T arrays of the scalar's values of active
  examples (empty when the family defines none); active_by_step: [T] fraction active.
  """
  plt = _pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  steps = np.arange(len(accuracy_by_step))
  ax1.plot(steps, accuracy_by_step, "o-", label="defense (mean softmax)")
  if clean_accuracy is not None:
    ax1.axhline(clean_accuracy, color="gray", ls="--", label="bare classifier, clean")
  ax1.set_xlabel("purification step (0 = noised only)")
  ax1.set_ylabel("accuracy")
  ax1.set_title("accuracy vs purification step")
  ax1.legend(loc="lower right")
  if scalar_name:
    data = [a if len(a) else np.array([np.nan]) for a in alphas_by_step]
    ax2.boxplot(data, positions=np.arange(1, len(data) + 1), showfliers=False)
    ax2.set_yscale("log")
    ax2.set_ylabel(f"{scalar_name}_t (active examples)")
    ax2.set_title(f"{scalar_name} per step")
  ax2.set_xlabel("step t (1-based)")
  twin = ax2.twinx()
  twin.plot(np.arange(1, len(active_by_step) + 1), active_by_step, "r.-")
  twin.set_ylim(0, 1.05)
  twin.set_ylabel("fraction active", color="r")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_eps_sweep(path: str, sweep: dict, robust: dict, eps: float, undefended: float,
                   baseline: str = "pgd_clf") -> str:
  """Accuracy vs epsilon: the sweep's curves (defended, and the bare classifier under the
  blind `baseline` attack), and each attack's robust accuracy at the evaluation's eps as a
  point.

  Readable at a glance: x ticks only at the evaluated radii (no colliding log-scale minor
  labels); the points at the evaluation's eps are spread sideways with distinct markers on top
  of the curves so that none hides another; the legend sits outside the axes.
  """
  plt = _pyplot()
  fig = eps_sweep_figure(sweep, robust, eps, undefended, baseline)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def eps_sweep_figure(sweep: dict, robust: dict, eps: float, undefended: float,
                     baseline: str = "pgd_clf"):
  """The matplotlib figure of `plot_eps_sweep` (the caller closes it)."""
  plt = _pyplot()
  from matplotlib import ticker
  fig, ax = plt.subplots(figsize=(8.5, 4.2))
  radii = {float(eps)}
  for name, rows in sweep.items():
    e = [r["eps"] for r in rows]
    radii.update(float(x) for x in e)
    if name == baseline:
      ax.plot(e, [r["bare_accuracy"] for r in rows], "--o", color="0.35", mfc="white",
              label=f"{name} on bare classifier (sweep)", zorder=2)
    else:
      ax.plot(e, [r["defended_accuracy"] for r in rows], "-o", color="tab:blue",
              label=f"{name} vs defense (sweep)", zorder=2)
  points = [(f"{name} vs defense", value) for name, value in robust.items()]
  if undefended is not None:
    points.append((f"{baseline} on bare classifier", undefended))
  markers = ["s", "D", "^", "v", "P", "h", "<", ">"]
  colors = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
            "tab:olive", "tab:cyan"]
  n = len(points)
  for i, (label, value) in enumerate(points):
    undef = undefended is not None and i == n - 1
    x = eps * 1.06 ** (i - (n - 1) / 2)  # side by side around eps (log axis)
    ax.plot([x], [value], "X" if undef else markers[i % len(markers)], ms=9 if undef else 7,
            color="black" if undef else colors[i % len(colors)], mec="white" if undef else "black",
            mew=0.8, ls="none", zorder=4, clip_on=False,
            label=f"{label} at eps {eps:g}: {value:.3f}")
  ax.set_xscale("log")
  ticks = []
  for r in sorted(radii):  # skip a radius too close to the previous tick to be labelled apart
    if not ticks or r / ticks[-1] > 1.25:
      ticks.append(r)
  ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
  ax.xaxis.set_major_formatter(ticker.FixedFormatter([f"{t:.3g}" for t in ticks]))
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlim(min(radii) / 1.3, max(radii) * 1.3)
  ax.axvline(eps, color="0.85", lw=1, zorder=1)
  ax.set_xlabel("eps (attack radius, log scale)")
  ax.set_ylabel("accuracy")
  ax.set_ylim(-0.04, 1.04)
  ax.grid(True, axis="y", color="0.92")
  ax.set_title("accuracy vs attack radius")
  ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
  fig.tight_layout()
  return fig


def plot_budget_curves(path: str, budget: dict) -> str:
  """Two panels: robust accuracy of report["budget_curves"]["attack"] against its number of
  steps and against its EOT samples (log2 x axes, one standard error as bars, the evaluated
  budget starred), each titled with the verdict of its last doubling."""
  plt = _pyplot()
  from matplotlib import ticker
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
  reasons = " ".join(budget["not_converged_reasons"])
  for ax, key, rows in ((axes[0], "num_steps", budget["by_num_steps"]),
                        (axes[1], "n_eot", budget["by_n_eot"])):
    x = [r[key] for r in rows]
    ax.errorbar(x, [r["accuracy"] for r in rows], yerr=[r["standard_error"] for r in rows],
                fmt="-o", capsize=3, color="tab:blue")
    evaluated = [r for r in rows if r[key] == budget["settings"][key]]
    ax.plot([r[key] for r in evaluated], [r["accuracy"] for r in evaluated], "*",
            color="tab:red", markersize=12, label="evaluated budget", zorder=3)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(ticker.FixedLocator(x))
    ax.xaxis.set_major_formatter(ticker.FixedFormatter([str(v) for v in x]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlim(min(x) / 1.4, max(x) * 1.4)
    ax.set_xlabel({"num_steps": "attack steps", "n_eot": "EOT samples per gradient"}[key])
    ax.grid(True, axis="y", color="0.92")
    verdict = "still falling" if f"against {key}:" in reasons else "converged"
    other = ("n_eot", budget["settings"]["n_eot"]) if key == "num_steps" else (
        "num_steps", budget["settings"]["num_steps"])
    ax.set_title(f"{verdict} over the last doubling (at {other[0]} = {other[1]})",
                 fontsize=10)
  axes[0].legend(loc="upper right", fontsize=8, frameon=False)
  axes[0].set_ylabel("robust accuracy (+- 1 s.e.)")
  axes[0].set_ylim(-0.04, 1.04)
  fig.suptitle(f"{budget['attack']}: robust accuracy vs attack budget "
               f"({budget['num_examples']} examples)", fontsize=11)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_certified(path: str, certified: dict) -> str:
  """Certified accuracy against l2 radius (pixels), one curve per sigma (from each example's
  certified radius: the fraction correct and certified at radius >= r), with the attack's
  upper bound at the configured radii as markers of the same colour (report["certified"])."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.2))
  top = max([max(row["examples"]["radius"], default=0.0) for row in certified["by_sigma"]]
            + list(certified["radii"]) + [1e-3])
  grid = np.linspace(0.0, top * 1.05, 200)
  for i, row in enumerate(certified["by_sigma"]):
    color = f"C{i}"
    ex = row["examples"]
    correct = np.asarray(ex["prediction"]) == np.asarray(ex["label"])
    radius = np.asarray(ex["radius"])
    ax.plot(grid, [np.mean(correct & (radius >= r)) for r in grid], "-", color=color,
            label=f"sigma {row['sigma']:g}: certified")
    upper = [(p["radius"], p["attacked_accuracy"]) for p in row["points"]
             if "attacked_accuracy" in p]
    if upper:
      ax.plot(*zip(*upper), "v", color=color, mec="black", mew=0.6, ls="none",
              label=f"sigma {row['sigma']:g}: attacked (upper bound)")
  s = certified["settings"]
  ax.set_xlabel("l2 radius (pixels in [0, 1])")
  ax.set_ylabel("certified accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlim(0, grid[-1])
  ax.grid(True, color="0.92")
  ax.set_title(f"randomized smoothing, denoiser {s['denoiser']} (n = {s['n']}, "
               f"alpha = {s['alpha']:g})", fontsize=10)
  ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
