"""Units of an evaluation: each a name, a batch function and a signature, run over the test
batches with results stored per batch (`store.BatchStore`).

A unit runs one or more programs per batch (`Stage`; an attack unit: the attack, then the
scoring), each `fn(params, batch, inputs) -> {name: array with a last batch axis}` and each
compiled once per compile key: units that differ only in their inputs (an attack and the
points of its eps sweep) share executables, and the attack units share one scoring program.
Every example's randomness comes from its index in the test split.
"""

import dataclasses
import functools
import json
import time
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpure import data, faults, parallel, training
from jaxpure.defense import Defense
from jaxpure.purifiers import remat
from jaxpure.purifiers.common import example_keys


@dataclasses.dataclass(frozen=True)
class Stage:
  """One compiled program of a unit: `fn(params, batch, inputs) -> {name: array}`, inputs
  being this unit's arrays for it (`dynamic`, traced) and the outputs of the unit's earlier
  stages named in `takes`. Stages with the same compile_key (and the same shapes and
  shardings of the outputs they take) share one executable. label: how the progress line
  names the program ("" for a unit's first)."""
  fn: Callable
  compile_key: str
  dynamic: dict = dataclasses.field(default_factory=dict)
  takes: tuple[str, ...] = ()
  label: str = ""


@dataclasses.dataclass(frozen=True)
class Unit:
  """name: the unit's name (also its folder); fn: the batch function of the unit's first
  program; batch_size: per batch; signature: the settings its results depend on (besides the
  shared ones); dynamic: traced inputs of fn; compile_key: units with the same key share one
  compiled fn; work: estimated cost per example in purifications (`attacks.purifications`),
  for the overall ETA; num_examples: run on the first num_examples examples only (default: all
  of the runner's); then: further programs run after fn on each batch (`Stage`). The unit's
  results are the union of its programs' outputs."""
  name: str
  fn: Callable
  batch_size: int
  signature: dict
  dynamic: dict = dataclasses.field(default_factory=dict)
  compile_key: str | None = None
  work: float = 1.0
  num_examples: int | None = None
  then: tuple[Stage, ...] = ()

  @property
  def stages(self) -> tuple[Stage, ...]:
    return (Stage(self.fn, self.compile_key or self.name, self.dynamic),) + self.then


def compile_stages(unit: Unit, params, batch, cache: dict | None = None,
                   on_compile=lambda stage: None, memory_budget: int | None = None,
                   remat_choices: dict | None = None) -> list:
  """The unit's stages compiled for this batch (each stage's inputs described by the earlier
  stages' outputs), taken from or added to `cache`; on_compile(stage) is called before each
  compilation. The cache's keys name neither the networks nor the defense: one cache serves
  the units of one evaluation (one Runner).

  A purifier whose remat policy is "auto" gets the fastest policy whose compiled program's
  temporary memory fits memory_budget bytes (default `remat.default_budget_bytes()`), chosen
  once per program (`remat.choose`); each choice is put in remat_choices under the program's
  name ("<unit>" or "<unit>: <stage label>", the unit that compiled it)."""
  cache = {} if cache is None else cache
  remat_choices = {} if remat_choices is None else remat_choices
  compiled, shapes = [], {}
  for stage in unit.stages:
    key = (stage.compile_key,) + tuple((k, str(shapes[k])) for k in stage.takes)
    if key not in cache:
      on_compile(stage)
      faults.reached("compile")
      inputs = dict(stage.dynamic, **{k: shapes[k] for k in stage.takes})
      budget = remat.default_budget_bytes() if memory_budget is None else memory_budget
      cache[key] = remat.choose(
          lambda: jax.jit(_fresh(stage.fn)).lower(params, batch, inputs).compile(), budget)
      if cache[key][1] is not None:
        remat_choices[unit.name + (f": {stage.label}" if stage.label else "")] = cache[key][1]
    compiled.append(cache[key][0])
    shapes.update(compiled[-1].out_info)
  return compiled


def _fresh(fn):
  """A new function object calling fn, with fn's name (the compiled module's name): each of
  `remat.choose`'s candidates must be traced anew, and jax.jit caches traces per function."""
  @functools.wraps(fn)
  def program(*args):
    return fn(*args)
  return program


def call_stages(unit: Unit, compiled: list, params, batch) -> dict:
  """The unit's results on one batch: its compiled stages (`compile_stages`) in order."""
  out = {}
  for stage, fn in zip(unit.stages, compiled):
    out.update(fn(params, batch, dict(stage.dynamic, **{k: out[k] for k in stage.takes})))
  return out


def run_unit(unit: Unit, params, batch) -> dict:
  """Compiles and runs the unit on one batch (outside a Runner)."""
  return call_stages(unit, compile_stages(unit, params, batch), params, batch)


def tag(name: str) -> int:
  """A stable integer for a name (folded into keys)."""
  return zlib.crc32(name.encode())


def scoring_keys(key, runs: int):
  """The keys [runs] of `runs` independent scorings: run 0 uses `key` itself, run r > 0
  fold_in(key, r)."""
  return jnp.stack([key] + [jax.random.fold_in(key, r) for r in range(1, runs)])


def scoring_correct(defense: Defense, params, points, which, y, index, keys):
  """[K, B] bool: scoring k asks whether the defense (R purifications, mean softmax)
  classifies points[which[k]] [B, H, W, C] as y [B] with the k-th scoring key of keys [K]
  (per-example keys fold in `index` [B]). points: [P, B, H, W, C]; which: [K] int32 in
  [0, P). The K scorings go through one `lax.map` (one compiled copy of the defense,
  whatever K), each reading its point by index (no copies of the points)."""
  correct = lambda a: defense.predict(  # noqa: E731
      params, points[a[0]], example_keys(a[1], index))["mean_softmax"] == y
  if keys.shape[0] == 1:
    return correct((which[0], keys[0]))[None]
  return jax.lax.map(correct, (which, keys))


def scoring_stage(defense: Defense, score_key, scoring_runs: int, batch_size: int) -> Stage:
  """Scores an attack stage's points `x_adv` [B, H, W, C]: defended_correct [runs, B] by
  `scoring_correct` with `scoring_keys(score_key, runs)`, bare_correct [B] on the bare
  classifier. The key is an input: one executable scores every attack unit of an evaluation
  with the same number of runs and batch size."""
  impl = jax.random.key_impl(score_key)

  def fn(params, batch, inputs):
    s_k = jax.random.wrap_key_data(inputs["score_key"], impl=impl)
    x_adv, y = inputs["x_adv"], batch["label"]
    runs = scoring_correct(defense, params, x_adv[None], jnp.zeros(scoring_runs, jnp.int32), y,
                           batch["index"], scoring_keys(s_k, scoring_runs))
    bare = jnp.argmax(defense.classify(params, x_adv), -1) == y
    return {"defended_correct": runs, "bare_correct": bare}
  key = json.dumps({"scoring_runs": scoring_runs, "batch_size": batch_size})
  return Stage(fn, key, {"score_key": np.asarray(jax.random.key_data(score_key))},
               takes=("x_adv",), label="the scoring")


class Runner:
  """Runs units over n test examples from index `first`, storing each batch as it finishes.

  shared_signature: what every unit's results depend on (networks' fingerprints, defense
  settings, n, seeds). after_batch(unit, batch) is called after each computed batch.
  `plan(units)` announces every unit of the evaluation up front: the progress lines then also
  give an ETA for all of them (the examples still to compute times each unit's estimated
  work, at the speed measured so far after compilation; compilations are not counted).
  """

  def __init__(self, params, test_split, n: int, mesh, store, shared_signature: dict, *,
               print_fn=print, after_batch=lambda unit, batch: None, is_writer: bool = True,
               first: int = 0, memory_budget: int | None = None):
    self.params, self.test_split, self.n, self.mesh = params, test_split, n, mesh
    self.memory_budget = memory_budget
    #: {program name: `remat.choose`'s record} of the programs that chose an "auto" policy.
    self.remat_choices: dict[str, dict] = {}
    self.first = first
    self.store, self.shared = store, shared_signature
    self.print_fn, self.after_batch, self.is_writer = print_fn, after_batch, is_writer
    self.timings: dict[str, dict] = {}
    self._compiled: dict[str, object] = {}
    self._left: dict[str, tuple[int, float]] = {}  # planned unit -> (examples to compute, work)
    self._work_done, self._work_seconds = 0.0, 0.0

  def on_examples(self, first: int, n: int) -> "Runner":
    """A Runner like this one over the n examples from index `first` (the budget subset),
    sharing its store, its record of remat choices and its settings."""
    sub = Runner(self.params, self.test_split, n, self.mesh, self.store,
                 dict(self.shared, num_examples=n, first_example=first),
                 print_fn=self.print_fn, after_batch=self.after_batch,
                 is_writer=self.is_writer, first=first, memory_budget=self.memory_budget)
    sub.remat_choices = self.remat_choices  # one record of the evaluation's programs
    return sub

  def _signature(self, unit: Unit, batch_size: int) -> dict:
    # A unit on its own first examples depends on those, not on how many the evaluation
    # reports: a 256-example evaluation reads the 64-example budget curves of a 64-example one.
    shared = dict(self.shared, num_examples=self._n(unit)) if unit.num_examples else self.shared
    return dict(shared, batch_size=batch_size, **unit.signature)

  def plan(self, units: list[Unit]) -> None:
    """Announces the units to run (for the overall ETA) and says how many stored batches an
    earlier run left for them: "resuming" when some are stored and some are left to compute,
    "nothing to compute" when every batch is stored; nothing when none is."""
    stored_units, stored_batches, total = 0, 0, 0
    for unit in units:
      n = self._n(unit)
      bs, num_batches = self._batch_count(unit.batch_size, n)
      stored = min(num_batches, self.store.count(unit.name, self._signature(unit, bs)))
      stored_units += stored > 0
      stored_batches += stored
      total += num_batches
      self._left[unit.name] = (max(0, n - stored * bs), unit.work)
    if stored_batches and stored_batches == total:
      self.print_fn(f"[eval] all {total} batches of the {len(units)} units are stored by an "
                    "earlier run of the same networks and settings: nothing to compute")
    elif stored_batches:
      self.print_fn(f"[eval] resuming: reusing {stored_batches} stored batches of "
                    f"{stored_units} of the {len(units)} units")

  def overall_eta(self) -> float | None:
    """Seconds left for every planned unit, or None before any post-compile measurement."""
    if not self._left or self._work_done <= 0:
      return None
    left = sum(examples * work for examples, work in self._left.values())
    return left * self._work_seconds / self._work_done

  def _n(self, unit: Unit) -> int:
    return min(unit.num_examples or self.n, self.n)

  def _batch_count(self, batch_size: int, n: int) -> tuple[int, int]:
    batch_size = parallel.round_up_to_devices(min(batch_size, n), self.mesh)
    return batch_size, -(-n // batch_size)

  def _batches(self, batch_size: int, n: int):
    batch_size, num_batches = self._batch_count(batch_size, n)
    return batch_size, num_batches, data.eval_batches(self.test_split, batch_size, self.mesh, n,
                                                      self.first)

  def run(self, unit: Unit) -> list[dict]:
    """The unit's per-batch results (stored ones reused, the rest computed and stored)."""
    n = self._n(unit)
    bs, num_batches, it = self._batches(unit.batch_size, n)
    stored_count = self.store.open_unit(unit.name, self._signature(unit, bs), self.is_writer)
    if stored_count:
      self.print_fn(f"[eval] {unit.name}: found {min(stored_count, num_batches)} of "
                    f"{num_batches} batches stored by an earlier run of the same networks "
                    "and settings")
    compiled, compile_s, run_s, done, results, reused = None, 0.0, 0.0, 0, [], 0
    for i, batch in enumerate(it):
      mask = np.asarray(jax.device_get(batch["mask"]))
      stored = self.store.load(unit.name, i)
      if stored is not None:
        reused += 1
      else:
        if compiled is None:
          t0 = time.perf_counter()
          compiled = compile_stages(
              unit, self.params, batch, self._compiled, lambda stage: self.print_fn(
                  f"[eval] {unit.name}: compiling{' ' + stage.label if stage.label else ''} ..."),
              self.memory_budget, self.remat_choices)
          compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = jax.device_get(call_stages(unit, compiled, self.params, batch))
        seconds = time.perf_counter() - t0
        stored = {k: np.asarray(v)[..., mask] for k, v in out.items() if k != "x_adv"}
        if "x_adv" in out:
          stored["x_adv"] = np.asarray(out["x_adv"])[mask]
        stored["seconds"] = np.asarray(seconds)
        if self.is_writer:
          self.store.save(unit.name, i, stored)
        run_s += seconds
        done += int(mask.sum())
        shown = min(n, (i + 1) * bs)
        eta = run_s / done * (n - shown) if done else float("inf")
        overall = self._account(unit, int(mask.sum()), seconds)
        overall = (f"  all units: ETA {training.format_duration(overall)}"
                   if overall is not None else "")
        self.print_fn(f"[eval] {unit.name}: batch {i + 1}/{num_batches}  {shown}/{n} "
                      f"images  {done / max(run_s, 1e-9):.2f} img/s  "
                      f"ETA {training.format_duration(eta)}{overall}")
        self.after_batch(unit.name, i)
        faults.reached("step")
      results.append(stored)
    if reused:
      self.print_fn(f"[eval] {unit.name}: reused {reused} stored batches, computed "
                    f"{num_batches - reused}")
    if unit.name in self._left:
      self._left[unit.name] = (0, unit.work)
    total_s = float(sum(float(r["seconds"]) for r in results))
    self.timings[unit.name] = {"compile_seconds_this_run": compile_s, "seconds": total_s,
                               "images_per_second": n / total_s if total_s else None,
                               "reused_batches": reused}
    return results

  def _account(self, unit: Unit, examples: int, seconds: float) -> float | None:
    """Books a computed batch (its run time, compilation excluded) for the overall ETA;
    returns that ETA (None when nothing is planned)."""
    self._work_done += examples * unit.work
    self._work_seconds += seconds
    if unit.name in self._left:
      left, work = self._left[unit.name]
      self._left[unit.name] = (max(0, left - examples), work)
    return self.overall_eta()


def concat(results: list[dict], key: str) -> np.ndarray:
  """One stored quantity over all batches (batch axis last)."""
  return np.concatenate([r[key] for r in results], axis=-1)

