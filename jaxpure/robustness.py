"""Robustness of a defense on arrays, with no files: `evaluate_defense`, the Python
counterpart of evaluate.py (whose report it mirrors) for a defense loaded from a workdir
(`jaxpure.load_defense`) or written by the user (`jaxpure.custom_defense`).

Randomness, all from `seed`: attack `name` attacks example i with
fold_in(fold_in(fold_in(key(seed), 0), crc32(name)), i) (`attack_key`, then the attack
functions' per-example keys); scoring run r of any attacked point of example i classifies it
with the defense's R restarts drawn from fold_in(fold_in(fold_in(key(seed), 1), r), i); the
clean input's defended prediction uses fold_in(fold_in(key(seed), 2), i). Example i is x[i]
(the budget subset's examples, when given apart, are numbered on after x's).
"""

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxpure import attacks as attacks_lib, statistics
from jaxpure.attacks import functions
from jaxpure.defense import READOUTS
from jaxpure.jobs.evaluation import attack as attack_lib, budget as budget_lib
from jaxpure.purifiers.common import example_keys

#: The attack functions' names (`jaxpure.attacks.pgd_eot`, ...) that differ from the
#: evaluation's (the names of evaluate.py's report, which this report uses too).
ALIASES = {"pgd_eot": "pgd_eot_full"}


def attack_name(name: str) -> str:
  """The evaluation's name of attack `name` (an alias of ALIASES or a name of ATTACKS)."""
  name = ALIASES.get(name, name)
  if name not in attacks_lib.ATTACKS:
    raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ALIASES)} or "
                     f"{attacks_lib.ATTACKS}")
  return name


def attack_key(seed: int, name: str) -> jax.Array:
  """The key attack `name` draws from (before the per-example fold_in)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0),
                            zlib.crc32(name.encode()))


def scoring_keys(seed: int, runs: int) -> jax.Array:
  """[runs] keys of the independent scorings of attacked points (before the per-example
  fold_in)."""
  key = jax.random.fold_in(jax.random.key(seed), 1)
  return jnp.stack([jax.random.fold_in(key, r) for r in range(runs)])


def make_settings(name: str, *, eps: float, norm: str, steps: int, n_eot: int,
                  step_size: float | None = None, **changes) -> attacks_lib.AttackSettings:
  """Attack `name`'s settings: the shared threat model and budget (a fixed step size of
  2.5 eps / steps unless given; the blind attack takes one sample per step) and `changes`
  (any other AttackSettings field)."""
  blind = attacks_lib.SPECS[name].blind
  return attacks_lib.AttackSettings(**{
      "norm": norm, "eps": eps, "num_steps": steps, "n_eot": 1 if blind else n_eot,
      "step_size": functions._default_step(eps, steps, step_size), **changes})


def make_scorer(defense, runs: int):
  """Jitted `score(params, points [K, B, H, W, C], y [B], indices [B], keys [runs])` ->
  [K, runs, B] bool: whether the defense (R restarts, mean softmax) classifies each point
  correctly in each scoring run. All K x runs scorings go through one `lax.map`."""

  def score(params, points, y, indices, keys):
    k = points.shape[0]
    which = jnp.repeat(jnp.arange(k), runs)
    run_keys = jnp.concatenate([keys] * k)
    correct = lambda a: defense.predict(  # noqa: E731
        params, points[a[0]], example_keys(a[1], indices))["mean_softmax"] == y
    return jax.lax.map(correct, (which, run_keys)).reshape((k, runs) + y.shape)
  return jax.jit(score)


def over_batches(fn, batch_size: int, x, y, indices) -> dict:
  """fn(x_b, y_b, indices_b) -> {name: array with the batch axis last} over
  batches of batch_size (the last one padded with its last example, the padding dropped),
  concatenated: one compiled program for every batch."""
  n = x.shape[0]
  pad = -n % batch_size
  if pad:
    x, y, indices = (jnp.concatenate([a, jnp.repeat(a[-1:], pad, 0)]) for a in (x, y, indices))
  parts = [jax.device_get(fn(x[i:i + batch_size], y[i:i + batch_size],
                             indices[i:i + batch_size]))
           for i in range(0, n + pad, batch_size)]
  return {key: np.concatenate([p[key] for p in parts], -1)[..., :n] for key in parts[0]}


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every part of one evaluation shares."""
  defense: object
  params: object
  seed: int
  scoring_runs: int
  batch_size: int

  def score(self, points, y, indices):
    return make_scorer(self.defense, self.scoring_runs)(
        self.params, points, y, indices, scoring_keys(self.seed, self.scoring_runs))


def _clean(run: _Run, x, y, indices) -> dict:
  """Per example: the bare classifier's correctness (when the defense has one) and the
  defense's by each read-out, on the clean input."""
  key = jax.random.fold_in(jax.random.key(run.seed), 2)
  bare = getattr(run.defense, "has_split", True)

  @jax.jit
  def fn(xb, yb, ib):
    out = {k: v == yb for k, v in run.defense.predict(run.params, xb,
                                                      example_keys(key, ib)).items()}
    if bare:
      out["clean"] = jnp.argmax(run.defense.classify(run.params, xb), -1) == yb
    return out
  return over_batches(fn, run.batch_size, x, y, indices)


def _attacked(run: _Run, name: str, s, x, y, indices) -> dict:
  """Attack `name` with settings s: per example the defense's correctness in each scoring
  run [runs, n], the bare classifier's (when there is one) and the distance to x."""
  attack = functions.jitted(name, run.defense, s)
  key, bare = attack_key(run.seed, name), getattr(run.defense, "has_split", True)

  def fn(xb, yb, ib):
    x_adv = attack(run.params, key, xb, yb, ib)
    d = x_adv - xb
    out = {"runs": run.score(x_adv[None], yb, ib)[0],
           "distance": (jnp.max(jnp.abs(d), axis=(1, 2, 3)) if s.norm == "linf"
                        else jnp.sqrt(jnp.sum(d ** 2, axis=(1, 2, 3))))}
    if bare:
      out["bare"] = jnp.argmax(run.defense.classify(run.params, x_adv), -1) == yb
    return out
  return over_batches(fn, run.batch_size, x, y, indices)


def _search(run: _Run, name: str, s, data, max_gradients: int, level: float) -> dict:
  """`budget.search` of attack `name` from settings s on data (x, y, indices), each
  comparison an attack trajectory scored in memory."""
  x, y, indices = data
  key = attack_key(run.seed, name)

  def run_points(settings, record):
    settings = dataclasses.replace(settings, num_steps=max(record))
    trajectory = attacks_lib.attack_trajectory(name, run.defense, settings, tuple(record))
    points = jax.jit(lambda xb, yb, ib: trajectory(run.params, example_keys(key, ib), xb, yb))

    def fn(xb, yb, ib):
      return {"correct": run.score(points(xb, yb, ib), yb, ib)}
    return over_batches(fn, run.batch_size, x, y, indices)["correct"]
  record = budget_lib.search(name, s, max_gradients, run_points, level)
  record["examples"] = {"first": int(indices[0]), "count": int(x.shape[0])}
  return record


def _budget_data(x, y, budget_data, budget_examples: int):
  """(x, y, indices) of the budget search: budget_data (numbered after x's examples) or the
  first budget_examples of x."""
  if budget_data is not None:
    bx, by = (jnp.asarray(a) for a in budget_data)
    return bx, by, jnp.arange(bx.shape[0]) + x.shape[0]
  k = min(budget_examples, x.shape[0])
  return x[:k], y[:k], jnp.arange(k)


def evaluate_defense(defense, params, x, y, *, eps: float, norm: str = "linf",
                     attacks=("pgd_eot", "apgd_eot"), budget: str = "auto", steps: int = 20,
                     n_eot: int = 4, step_size: float | None = None,
                     attack_settings: dict | None = None, seed: int = 0,
                     scoring_runs: int = 1, resubmissions: int = 0, batch_size: int = 128,
                     budget_data=None, budget_examples: int = 64,
                     budget_attack: str = "pgd_eot", max_gradients_per_image: int = 8000,
                     budget_level: float = statistics.DEFAULT_LEVEL) -> dict:
  """Clean, defended and robust accuracy of `defense` with `params` on x [n, H, W, C] in
  [0, 1], labels y [n]: the report dict of evaluate.py's report.json (its accuracy, scoring,
  worst-case and budget sections), worst case over the attacks first.

  attacks: names (`pgd_eot`, `apgd_eot`, `bpda_eot`, `bpda_eot_adp`, `pgd_clf`, ...), each
  with eps/norm and steps x n_eot (step_size: fixed-step attacks, default 2.5 eps / steps),
  changed per attack by attack_settings {name: {AttackSettings field: value}}.
  budget: "auto" (with an exact-gradient attack among `attacks`): first the paired budget
  search of budget_attack from steps x n_eot, doubling steps then EOT samples until a
  doubling no longer breaks significantly more examples (one-sided sign test at
  budget_level) or max_gradients_per_image would be passed; every exact-gradient attack then
  runs at the chosen budget. The search runs on budget_data = (x_b, y_b) when given (held
  out: the honest choice), else on the first budget_examples of x. "fixed": as given.
  scoring_runs: independent runs of the defense scoring each attacked point (the report's
  mean over runs, all-runs and majority scores; resubmissions: M of the unbiased
  M-resubmission robustness, 0: M = runs). See the module docstring for the keys.
  """
  if budget not in ("auto", "fixed"):
    raise ValueError(f"budget={budget!r}; expected 'auto' or 'fixed'")
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
  if x.ndim != 4 or y.shape != x.shape[:1]:
    raise ValueError(f"x {x.shape}, y {y.shape}; expected x [n, H, W, C] and y [n]")
  names = list(dict.fromkeys(attack_name(a) for a in attacks))
  given = {attack_name(k): v for k, v in (attack_settings or {}).items()}
  common = dict(eps=eps, norm=norm, steps=steps, n_eot=n_eot, step_size=step_size)
  settings = {a: make_settings(a, **common, **given.get(a, {})) for a in names}
  run = _Run(defense, params, seed, scoring_runs, batch_size)
  searched = None
  exact = [a for a in names if attacks_lib.SPECS[a].exact_gradient]
  if budget == "auto" and exact:
    b_name = attack_name(budget_attack)
    b_settings = settings.get(b_name) or make_settings(b_name, **common, **given.get(b_name, {}))
    searched = _search(run, b_name, b_settings, _budget_data(x, y, budget_data, budget_examples),
                       max_gradients_per_image, budget_level)
    chosen = searched["chosen"]
    for a in exact:
      settings[a] = attacks_lib.with_gradient_budget(a, settings[a], chosen["num_steps"],
                                                     chosen["n_eot"])
  indices = jnp.arange(x.shape[0])
  clean = _clean(run, x, y, indices)
  attacked = {a: _attacked(run, a, settings[a], x, y, indices) for a in names}
  return _report(defense, clean, attacked, settings, searched, scoring_runs, resubmissions,
                 dict(seed=seed, norm=norm, eps=eps))


def _report(defense, clean, attacked, settings, searched, scoring_runs, resubmissions,
            threat) -> dict:
  """The report dict (evaluate.py's keys where they apply: its attack section is
  `attack.section`'s), worst case first."""
  n = int(next(iter(clean.values())).shape[-1])
  results = {a: attack_lib.AttackResult(runs=r["runs"], defended=r["runs"].mean(0),
                                        bare=r.get("bare"), distance=r["distance"],
                                        x_adv=np.zeros((0,)))
             for a, r in attacked.items()}
  section = attack_lib.section(results, settings, scoring_runs, resubmissions)
  first = ("robust_accuracy_worst_case", "robust_accuracy_worst_case_standard_error")
  return {
      **{k: section[k] for k in first},
      "num_examples": n,
      "clean_accuracy": float(clean["clean"].mean()) if "clean" in clean else None,
      "defended_clean_accuracy": float(clean["mean_softmax"].mean()),
      "defended_accuracy_by_readout": {k: float(clean[k].mean()) for k in READOUTS},
      **{k: v for k, v in section.items() if k not in first},
      "budget_search": searched,
      "budget_status": searched["status"] if searched else "fixed",
      "settings": {"defense": {"purifier": defense.family.NAME, "restarts": defense.restarts},
                   **threat},
  }
