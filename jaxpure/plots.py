"""Matplotlib figures of an evaluation (written as PNG; headless Agg backend)."""

import os

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_purification_steps(path: str, accuracy_by_step, alphas_by_step, active_by_step,
                            clean_accuracy: float | None = None) -> str:
  """Two panels: ensemble accuracy after each purification step (step 0 = noise only), and
  the distribution of the step size alpha over active examples at each step (box plots),
  with the fraction of examples still active.

  accuracy_by_step: [T + 1]; alphas_by_step: list of T arrays of alphas of active examples;
  active_by_step: [T] fraction active.
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
  data = [a if len(a) else np.array([np.nan]) for a in alphas_by_step]
  ax2.boxplot(data, positions=np.arange(1, len(data) + 1), showfliers=False)
  ax2.set_yscale("log")
  ax2.set_xlabel("step t (1-based)")
  ax2.set_ylabel("alpha_t (active examples)")
  ax2.set_title("step size per step")
  twin = ax2.twinx()
  twin.plot(np.arange(1, len(active_by_step) + 1), active_by_step, "r.-")
  twin.set_ylim(0, 1.05)
  twin.set_ylabel("fraction active", color="r")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_eps_sweep(path: str, sweep: dict, robust: dict, eps: float, undefended: float) -> str:
  """Accuracy vs epsilon: the sweep's curves (defended, and the bare classifier under
  pgd_clf), and each attack's robust accuracy at the evaluation's eps as a point."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, rows in sweep.items():
    e = [r["eps"] for r in rows]
    if name == "pgd_clf":
      ax.plot(e, [r["bare_accuracy"] for r in rows], "k--o", label="pgd_clf on bare classifier")
    else:
      ax.plot(e, [r["defended_accuracy"] for r in rows], "-o", label=f"{name} vs defense")
  for name, value in robust.items():
    ax.plot([eps], [value], "s", label=f"{name} (eps {eps:.3f})")
  if undefended is not None:
    ax.plot([eps], [undefended], "kx", label="undefended (pgd_clf)")
  ax.set_xscale("log")
  ax.set_xlabel("eps")
  ax.set_ylabel("accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("accuracy vs attack radius")
  ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
