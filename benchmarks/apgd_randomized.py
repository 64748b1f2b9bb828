"""APGD against exact-gradient PGD on a randomized defense, at equal exact gradient samples per
image: which APGD settings keep it no weaker than PGD (issue: APGD for randomized defenses).

  python benchmarks/apgd_randomized.py --config configs/digits.py --workdir runs/digits \
      --num_examples 64 --variant autoattack:initial_step=2,restore_best=1 \
      --variant small_step:initial_step=0.5

The baseline is the config's `pgd_eot_full` (its steps x n_eot gradient samples per image).
Each variant is the config's `apgd_eot` with the named AttackSettings changed (n_eot=4 puts
more EOT samples into each gradient) and its steps set so that (steps + 1) x n_eot equals
PGD's gradient samples. Every attacked point is scored like the evaluation scores it: by
--scoring_runs independent runs of the defense (R purifications each, mean softmax), the
accuracy being the mean over examples and runs. Prints, per attack, that accuracy with its
standard error over examples, the paired difference to PGD (APGD minus PGD, per example, with
its standard error) and the wall seconds; --json writes the rows (with each example's accuracy
over the scoring runs), and --baseline reads PGD's row from such a file instead of rerunning
it. --set changes the config (e.g. --set purifiers.adp.method=gd: ADP with fixed-size steps).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_variant(text: str) -> tuple[str, dict]:
  """'name:key=value,key=value' -> (name, {key: value}) with ints, floats and 0/1 booleans."""
  name, _, rest = text.partition(":")
  changes = {}
  for item in filter(None, rest.split(",")):
    key, _, value = item.partition("=")
    if key in ("restore_best", "final_candidate"):
      changes[key] = bool(int(value))
    elif key == "losses":
      changes[key] = tuple(value.split("+"))
    else:
      changes[key] = float(value) if "." in value else int(value)
  return name, changes


def parse_value(text: str):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def gradient_noise(defense, params, x, y, s, key) -> str:
  """How much two independent EOT gradient estimates (s.n_eot samples each, CE, at the clean
  points) agree: the fraction of pixels whose signs agree (1: a deterministic gradient; 0.5:
  unrelated), and the mean over examples of the cosine between the two estimates."""
  import jax
  import jax.numpy as jnp
  from jaxpure.attacks import eot
  from jaxpure.purifiers.common import example_keys
  estimator = jax.jit(eot.exact_eot_gradient(defense, "ce", s.n_eot))
  index = jnp.arange(x.shape[0])
  grads = [estimator(params, example_keys(jax.random.fold_in(key, 7 + i), index), x, y)[1]
           for i in range(2)]
  a, b = (g.reshape(g.shape[0], -1) for g in grads)
  agree = float(jnp.mean(jnp.sign(a) == jnp.sign(b)))
  cosine = float(jnp.mean(jnp.sum(a * b, 1) / (jnp.linalg.norm(a, axis=1) *
                                               jnp.linalg.norm(b, axis=1) + 1e-30)))
  return (f"EOT gradient noise at the clean points ({s.n_eot} samples per estimate): sign "
          f"agreement {agree:.3f}, cosine {cosine:.3f}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_examples", type=int, default=64)
  parser.add_argument("--first", type=int, default=0)
  parser.add_argument("--scoring_runs", type=int, default=5)
  parser.add_argument("--variant", action="append", default=[])
  parser.add_argument("--set", action="append", default=[], help="config key=value")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no_pgd", action="store_true")
  parser.add_argument("--baseline", default="",
                      help="a --json file of an earlier run with the same examples, keys and "
                           "config: its pgd_eot_full row is the baseline (PGD is not rerun)")
  parser.add_argument("--json", default="")
  parser.add_argument("--noise", action="store_true",
                      help="also measure the EOT gradient's noise at the clean points")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  import jaxpure
  from jaxpure import attacks as attacks_lib
  from jaxpure.jobs import evaluation
  from jaxpure.jobs.evaluation import units
  from jaxpure.purifiers.common import example_keys

  overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
  config = jaxpure.load_config(args.config, overrides)
  defense, params = jaxpure.load_defense(config, args.workdir)
  x, y = jaxpure.load_examples(config, "test", args.num_examples, args.first)
  x, y = jnp.asarray(x), jnp.asarray(y)
  index = jnp.arange(args.first, args.first + x.shape[0])
  attack_key, score_key = jax.random.split(jax.random.key(args.seed))
  score_keys = units.scoring_keys(score_key, args.scoring_runs)

  @jax.jit
  def scored(x_adv):
    which = jnp.zeros((args.scoring_runs,), jnp.int32)
    return units.scoring_correct(defense, params, x_adv[None], which, y, index, score_keys)

  pgd = evaluation.attack_settings(config, "pgd_eot_full")
  budget = pgd.num_steps * pgd.n_eot
  rows, base = [], None
  if args.baseline:
    with open(args.baseline, encoding="utf-8") as f:
      base = np.asarray(next(r for r in json.load(f) if r["attack"] == "pgd_eot_full")["correct"])
  plan = [] if args.no_pgd or args.baseline else [("pgd_eot_full", "pgd_eot_full", pgd)]
  for text in args.variant:
    name, changes = parse_variant(text)
    s = dataclasses.replace(evaluation.attack_settings(config, "apgd_eot"), **changes)
    steps = max(budget // s.n_eot - 1, 1)
    plan.append((name, "apgd_eot", dataclasses.replace(s, num_steps=steps)))
  print(f"{x.shape[0]} examples from {args.first}, {budget} gradient samples per image, "
        f"{args.scoring_runs} scoring runs; {dict(overrides)}", flush=True)
  if args.noise:
    print(gradient_noise(defense, params, x, y, pgd, attack_key), flush=True)
  for label, name, s in plan:
    fn = attacks_lib.attack_function(name, defense, s)
    attack = jax.jit(lambda p, k, xx, yy: fn(p, example_keys(k, index), xx, yy))  # noqa: B023
    start = time.time()
    x_adv = jax.block_until_ready(attack(params, attack_key, x, y))
    correct = np.asarray(scored(x_adv)).mean(0)  # [B], mean over scoring runs
    seconds = time.time() - start
    acc, se = correct.mean(), correct.std(ddof=1) / np.sqrt(len(correct))
    row = {"attack": label, "accuracy": float(acc), "standard_error": float(se),
           "seconds": round(seconds, 1), "num_steps": s.num_steps, "n_eot": s.n_eot,
           "correct": correct.tolist(),
           "settings": {k: v for k, v in dataclasses.asdict(s).items()
                        if k in ("initial_step", "restore_best", "decision_samples",
                                 "final_candidate", "losses")}}
    if label == "pgd_eot_full":
      base = correct
    elif base is not None:
      d = correct - base
      row.update(paired_difference=float(d.mean()),
                 paired_standard_error=float(d.std(ddof=1) / np.sqrt(len(d))))
    rows.append(row)
    extra = (f"  APGD - PGD {row['paired_difference']:+.3f} +- {row['paired_standard_error']:.3f}"
             if "paired_difference" in row else "")
    print(f"{label:24s} {s.num_steps:3d} x {s.n_eot}  {acc:.3f} +- {se:.3f}{extra}  "
          f"({seconds:.0f} s)  {row['settings']}", flush=True)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
