"""The job of evaluate.py: clean, defended and attacked accuracy of a trained workdir.

Work is cut into units ("clean", one per attack, one per epsilon of the sweep) and batches.
Each finished (unit, batch) is written to WORKDIR/eval/batches/<unit>/<batch>.npz at once, so
an interrupted evaluation started again with the same arguments skips what is done and ends
with the same report. Every example's randomness comes from its index in the test split, and
each attacked image is scored by the full defense (R restarts) with fresh randomness, never
with the attack's own samples.
"""

import dataclasses
import json
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxpure import __version__, attacks as attacks_lib, data, evaluation, experiment, images
from jaxpure import parallel, plots, training
from jaxpure import purify as purify_lib
from jaxpure.errors import ConfigError, WorkdirError


def attack_settings(config, name: str, **changes) -> attacks_lib.AttackSettings:
  """AttackSettings of attack `name` from config.attack (shared norm/eps + its own section)."""
  if name not in attacks_lib.ATTACKS:
    raise ConfigError(f"unknown attack {name!r}; expected names from {attacks_lib.ATTACKS}")
  section = config.attack[name]
  kwargs = dict(norm=config.attack.norm, eps=config.attack.eps, num_steps=section.num_steps,
                step_size=section.step_size, n_eot=section.n_eot, loss=section.loss)
  if "losses" in section:  # APGD's runs
    kwargs.update(losses=tuple(section.losses), warm_restarts=section.warm_restarts)
  kwargs.update(changes)
  return attacks_lib.AttackSettings(**kwargs)


def sweep_settings(config, name: str, eps: float) -> attacks_lib.AttackSettings:
  n = config.attack.sweep_num_steps
  n_eot = 1 if name == "pgd_clf" else config.attack.sweep_n_eot
  return attack_settings(config, name, eps=eps, num_steps=n, n_eot=n_eot,
                         step_size=max(2.5 * eps / n, 1e-6))


def standard_error(p: float, n: int) -> float:
  return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def _tag(name: str) -> int:
  return zlib.crc32(name.encode())


class _BatchStore:
  """Per-(unit, batch) results as .npz under `root`, with each unit's settings in unit.json
  (results of other settings are discarded, not mixed)."""

  def __init__(self, root: str):
    self.root = root

  def open_unit(self, unit: str, signature: dict, print_fn) -> None:
    path = os.path.join(self.root, unit)
    meta = os.path.join(path, "unit.json")
    signature = json.loads(json.dumps(signature))  # as stored: tuples become lists
    if os.path.exists(meta):
      with open(meta) as f:
        if json.load(f) == signature:
          return
      print_fn(f"[eval] {unit}: settings changed since the stored results; recomputing")
      shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    with open(meta, "w") as f:
      json.dump(signature, f, sort_keys=True)

  def path(self, unit: str, batch: int) -> str:
    return os.path.join(self.root, unit, f"{batch:05d}.npz")

  def load(self, unit: str, batch: int):
    p = self.path(unit, batch)
    if not os.path.exists(p):
      return None
    with np.load(p) as z:
      return {k: z[k] for k in z.files}

  def save(self, unit: str, batch: int, arrays: dict) -> None:
    p = self.path(unit, batch)
    tmp = p + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, p)  # atomic: a killed run never leaves half a batch


def evaluate(config, workdir: str, attack_names: Sequence[str] = (),
             num_examples: int | None = None, *, mesh=None, print_fn=print,
             after_batch: Callable[[str, int], None] = lambda unit, batch: None) -> dict:
  """Runs the evaluation and writes WORKDIR/eval/report.json and the PNGs; returns the report."""
  p_settings = experiment.purify_settings(config)
  attack_names = list(dict.fromkeys(attack_names))
  a_settings = {name: attack_settings(config, name) for name in attack_names}
  if attack_names:  # the undefended baseline comes with every attack evaluation
    a_settings.setdefault("pgd_clf", attack_settings(config, "pgd_clf"))
  sweep_eps = [float(e) for e in config.attack.sweep_eps] if attack_names else []
  sweep_attack = config.attack.sweep_attack
  if sweep_eps:
    if sweep_attack not in attacks_lib.ATTACKS:
      raise ConfigError(f"config.attack.sweep_attack={sweep_attack!r}; expected one of "
                        f"{attacks_lib.ATTACKS}")
    for name in (sweep_attack, "pgd_clf"):
      for eps in sweep_eps:
        sweep_settings(config, name, eps)  # validates
  test_split = data.open_split(config.data.name, "test", config.data.data_dir)
  if not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir!r} does not exist; train first with train.py")
  mesh = parallel.make_mesh() if mesh is None else mesh
  score_params, clf_vars, steps = experiment.load_models_for_eval(config, workdir, mesh)
  out_dir = experiment.prepare_workdir(os.path.join(workdir, "eval"))
  store = _BatchStore(os.path.join(out_dir, "batches"))
  params = {"score": score_params, "classifier": clf_vars}
  defense = attacks_lib.Defense(h=experiment.score_h(experiment.score_module(config)),
                                logits_fn=experiment.classifier_logits(
                                    experiment.classifier_module(config)),
                                purify=p_settings)
  n = min(num_examples or config.eval.num_examples or len(test_split), len(test_split))
  eval_key = jax.random.key(config.eval.seed)
  attack_key = jax.random.key(config.attack.seed)
  base_sig = {"num_examples": n, "checkpoint_steps": steps,
              "purify": dataclasses.asdict(p_settings), "eval_seed": config.eval.seed}

  def batches(batch_size):
    batch_size = parallel.round_up_to_devices(min(batch_size, n), mesh)
    return batch_size, -(-n // batch_size), data.eval_batches(test_split, batch_size, mesh, n)

  timings = {}

  compiled_cache = {}

  def run_unit(unit: str, fn, batch_size: int, signature: dict, dynamic=None,
               compile_key=None):
    """Runs jitted fn(params, batch, dynamic) -> dict of arrays with a last batch axis over
    all batches. Units with the same compile_key share one executable (e.g. a sweep over
    eps, passed in `dynamic`)."""
    dynamic = {} if dynamic is None else dynamic
    compile_key = compile_key or unit
    bs, num_batches, it = batches(batch_size)
    store.open_unit(unit, dict(base_sig, batch_size=bs, **signature), print_fn)
    compiled, compile_s, run_s, done, results = None, 0.0, 0.0, 0, []
    for i, batch in enumerate(it):
      mask = np.asarray(jax.device_get(batch["mask"]))
      stored = store.load(unit, i)
      if stored is None:
        if compiled is None:
          t0 = time.perf_counter()
          if compile_key not in compiled_cache:
            compiled_cache[compile_key] = jax.jit(fn).lower(params, batch, dynamic).compile()
          compiled = compiled_cache[compile_key]
          compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = jax.device_get(compiled(params, batch, dynamic))
        seconds = time.perf_counter() - t0
        stored = {k: np.asarray(v)[..., mask] for k, v in out.items() if k != "x_adv"}
        if "x_adv" in out:
          stored["x_adv"] = np.asarray(out["x_adv"])[mask]
        stored["seconds"] = np.asarray(seconds)
        if jax.process_index() == 0:
          store.save(unit, i, stored)
        run_s += seconds
        done += int(mask.sum())
        eta = run_s / done * (n - min(n, (i + 1) * bs)) if done else float("inf")
        print_fn(f"[eval] {unit}: batch {i + 1}/{num_batches}  {min(n, (i + 1) * bs)}/{n} "
                 f"images  {done / max(run_s, 1e-9):.2f} img/s  ETA {training.format_duration(eta)}")
        after_batch(unit, i)
      results.append(stored)
    total_s = float(sum(float(r["seconds"]) for r in results))
    timings[unit] = {"compile_seconds_this_run": compile_s, "seconds": total_s,
                     "images_per_second": n / total_s if total_s else None}
    return results

  # ---- clean and defended accuracy (with the per-step logging trace)
  stats = evaluation.defense_batch_stats(defense.h, defense.logits_fn, p_settings)

  def clean_fn(params, batch, dynamic):
    return stats(params["score"], params["classifier"], batch, eval_key)

  clean = run_unit("clean", clean_fn, config.eval.batch_size, {})
  cat = lambda k: np.concatenate([r[k] for r in clean], axis=-1)
  count = float(cat("clean").shape[-1])
  acc = lambda k: float(cat(k).mean())
  alpha, active = cat("alpha"), cat("active")  # [R, T, n]
  by_step = cat("by_step").mean(-1).tolist()

  # ---- attacks
  def attack_fn(name, s, unit, sweep_steps=None):
    """The unit's batch function; for a sweep, eps arrives traced in `dynamic`."""
    a_key, s_key = jax.random.fold_in(attack_key, _tag(unit)), jax.random.fold_in(
        eval_key, _tag(unit))

    def run(params, batch, dynamic):
      fn = attacks_lib.attack_function(name, defense, s if sweep_steps is None else
                                       dataclasses.replace(
                                           s, eps=dynamic["eps"],
                                           step_size=2.5 * dynamic["eps"] / sweep_steps))
      a_key_, s_key_ = (a_key, s_key) if sweep_steps is None else (
          jax.random.fold_in(a_key, dynamic["tag"]), jax.random.fold_in(s_key, dynamic["tag"]))
      x, y = batch["image"], batch["label"]
      x_adv = fn(params, purify_lib.example_keys(a_key_, batch["index"]), x, y)
      logits = defense.logits(params, x_adv, purify_lib.example_keys(s_key_, batch["index"]),
                              p_settings.restarts)
      defended = purify_lib.ensemble(logits)["mean_softmax"] == y
      bare = jnp.argmax(defense.classify(params, x_adv), -1) == y
      dist = (jnp.max(jnp.abs(x_adv - x), axis=(1, 2, 3)) if s.norm == "linf"
              else jnp.sqrt(jnp.sum((x_adv - x) ** 2, axis=(1, 2, 3))))
      return {"defended_correct": defended, "bare_correct": bare, "distance": dist,
              "x_adv": x_adv}
    return run

  def attack_unit(unit, name, s, sweep_index=None):
    if sweep_index is None:
      fn, dynamic, ckey = attack_fn(name, s, unit), None, None
    else:  # one executable for the whole sweep of this attack: eps is an input
      ckey = f"sweep_{name}"
      fn = attack_fn(name, s, ckey, sweep_steps=s.num_steps)
      dynamic = {"eps": jnp.float32(s.eps), "tag": jnp.uint32(sweep_index)}
    res = run_unit(unit, fn, config.attack.batch_size,
                   {"attack": name, "settings": dataclasses.asdict(s),
                    "attack_seed": config.attack.seed}, dynamic=dynamic, compile_key=ckey)
    cat = lambda k: np.concatenate([r[k] for r in res])
    return {"defended": cat("defended_correct"), "bare": cat("bare_correct"),
            "distance": cat("distance"), "x_adv": res[0]["x_adv"][:config.attack.grid_examples]}

  attacked = {name: attack_unit(name, name, s) for name, s in a_settings.items()}
  sweep = {}
  for name in ((sweep_attack, "pgd_clf") if sweep_eps else ()):
    for i, eps in enumerate(sweep_eps):
      r = attack_unit(f"sweep_{name}_eps{eps:.6f}", name, sweep_settings(config, name, eps),
                      sweep_index=i)
      sweep.setdefault(name, []).append((eps, r))

  # ---- report
  robust = {name: float(attacked[name]["defended"].mean()) for name in attack_names}
  report = {
      "dataset": config.data.name, "num_examples": int(count),
      "clean_accuracy": acc("clean"),
      "defended_clean_accuracy": acc("mean_softmax"),
      "defended_accuracy_by_readout": {k: acc(k) for k in purify_lib.READOUTS},
      "single_restart_accuracy": acc("single_restart"),
      "noise_only_accuracy": by_step[0],
      "accuracy_by_step": by_step,
      "alpha_by_step": _alpha_summary(alpha, active),
      "robust_accuracy": robust,
      "robust_accuracy_standard_error": {k: standard_error(v, int(count)) for k, v in robust.items()},
      "undefended_robust_accuracy": (float(attacked["pgd_clf"]["bare"].mean())
                                     if "pgd_clf" in attacked else None),
      "attacks": {name: {"settings": dataclasses.asdict(s),
                         "max_distance": float(attacked[name]["distance"].max()),
                         "seconds": timings[name]["seconds"]}
                  for name, s in a_settings.items()},
      "eps_sweep": {name: [{"eps": eps, "defended_accuracy": float(r["defended"].mean()),
                            "bare_accuracy": float(r["bare"].mean())} for eps, r in rows]
                    for name, rows in sweep.items()},
      "settings": {"purify": dataclasses.asdict(p_settings), "eval_seed": config.eval.seed,
                   "attack_seed": config.attack.seed, "norm": config.attack.norm,
                   "eps": config.attack.eps, "checkpoint_steps": steps},
      "versions": {"jaxpure": __version__, "jax": jax.__version__, "flax": flax.__version__},
      "device": {"platform": jax.devices()[0].platform, "kind": jax.devices()[0].device_kind,
                 "count": jax.device_count(), "processes": jax.process_count()},
      "timings": timings,
  }
  report["suspect_reasons"] = _suspect_reasons(report, sweep_attack)
  report["evaluation_suspect"] = bool(report["suspect_reasons"])
  if jax.process_index() == 0:
    _pictures(out_dir, config, defense, params, test_split, eval_key, report, alpha, active,
              attacked)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
  line = (f"wrote {os.path.join(out_dir, 'report.json')}: clean {report['clean_accuracy']:.4f}, "
          f"defended {report['defended_clean_accuracy']:.4f}, "
          f"noise only {report['noise_only_accuracy']:.4f}")
  if attack_names:
    line += ", robust " + ", ".join(f"{k} {robust[k]:.4f}" for k in attack_names)
    line += f", undefended {report['undefended_robust_accuracy']:.4f}"
  print_fn(line)
  for reason in report["suspect_reasons"]:
    print_fn(f"[eval] SUSPECT: {reason}")
  return report


def _alpha_summary(alpha, active):
  rows = []
  for t in range(alpha.shape[1]):
    a = alpha[:, t][active[:, t]]
    q = np.percentile(a, [25, 50, 75]).tolist() if a.size else [None] * 3
    rows.append({"step": t + 1, "active_fraction": float(active[:, t].mean()),
                 "q25": q[0], "median": q[1], "q75": q[2],
                 "mean": float(a.mean()) if a.size else None})
  return rows


def _suspect_reasons(report, sweep_attack) -> list[str]:
  reasons = []
  rows = report["eps_sweep"].get(sweep_attack)
  if rows and rows[-1]["defended_accuracy"] > 0.10:
    reasons.append(f"{sweep_attack} leaves {rows[-1]['defended_accuracy']:.3f} accuracy at the "
                   f"largest eps {rows[-1]['eps']:.4f} (expected <= 0.10): gradient masking?")
  robust, se = report["robust_accuracy"], report["robust_accuracy_standard_error"]
  exact = [a for a in attacks_lib.EXACT_GRADIENT_ATTACKS if a in robust]
  if exact:
    best = min(exact, key=robust.get)
    for name, value in robust.items():
      if name not in exact and value < robust[best] - se[best]:
        reasons.append(f"{name} ({value:.3f}) beats the exact-gradient {best} "
                       f"({robust[best]:.3f}) by more than one standard error")
  return reasons


def _pictures(out_dir, config, defense, params, test_split, key, report, alpha, active,
              attacked):
  p = defense.purify
  k = min(config.eval.grid_examples, len(test_split))
  x, _ = data.read_all(test_split, k)
  keys = purify_lib.example_keys(key, jnp.arange(k))
  purify = jax.jit(lambda sp, x, keys: purify_lib.purify(defense.h, sp, x, keys, p, True))
  _, trace = purify(params["score"], jnp.asarray(x), keys)
  rows = [x]
  for r in range(min(config.eval.grid_restarts, p.restarts)):
    rows += [trace["iterates"][r, 0], trace["iterates"][r, -1]]
  images.save_grid(os.path.join(out_dir, "purification.png"), rows)
  plots.plot_purification_steps(
      os.path.join(out_dir, "steps.png"), report["accuracy_by_step"],
      [alpha[:, t][active[:, t]] for t in range(p.max_iter)],
      [float(active[:, t].mean()) for t in range(p.max_iter)], report["clean_accuracy"])
  shown = {name: r for name, r in attacked.items() if name in report["attacks"]}
  if attacked:
    m = min(config.attack.grid_examples, k)
    xa, _ = data.read_all(test_split, m)
    rows = [xa]
    for name, r in shown.items():
      x_adv = jnp.asarray(r["x_adv"][:m])
      _, tr = purify(params["score"], x_adv, keys[:m])
      rows += [x_adv, tr["iterates"][0, -1]]
    images.save_grid(os.path.join(out_dir, "adversarial.png"), rows)
    plots.plot_eps_sweep(os.path.join(out_dir, "eps_sweep.png"), report["eps_sweep"],
                         report["robust_accuracy"], report["settings"]["eps"],
                         report["undefended_robust_accuracy"])
