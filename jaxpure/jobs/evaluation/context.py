"""What every evaluator of one evaluation shares (`Evaluation`): the config, the defense and
its networks, the attacks' settings, the keys, the test examples and the Runner that runs and
stores units; and `prepare`, which builds it from evaluate's arguments."""

import dataclasses
import os
from collections.abc import Callable

import jax

from jaxpure import attacks as attacks_lib, data, parallel
from jaxpure.defense import Defense
from jaxpure.errors import ConfigError, WorkdirError
from jaxpure.jobs import loading
from jaxpure.jobs.evaluation import budget as budget_lib, certify as certify_lib
from jaxpure.jobs.evaluation import settings as settings_lib
from jaxpure.jobs.evaluation import store as store_lib, units as units_lib


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """settings: the config's values the evaluators use (`settings.EvalSettings`; the config
  itself stays with `prepare`); defense, params ({network role: variables}) and loaded
  ({role: `loading.LoadedModel`}); attack_names: the attacks asked for; attacks: {attack:
  AttackSettings} (with the undefended baseline, at the searched budget); budget_attack: the
  settings of the budget attack where the search or the fixed-noise unit needs them (at the
  configured budget); sweep: {attack: [(eps, AttackSettings)]} of the eps sweep ({} without
  --sweep); sweep_eps: its eps; certification: the certify units' plan (None without
  --certify); searched: the budget search's record (None when the budget is fixed); runner:
  runs units over the examples [first, first + n) of test_split; shared: what every unit's
  results depend on; out_dir: where the report goes."""
  settings: settings_lib.EvalSettings
  defense: Defense
  params: dict
  loaded: dict
  attack_names: tuple[str, ...]
  attacks: dict
  budget_attack: object
  sweep: dict
  sweep_eps: tuple[float, ...]
  certification: object
  eval_key: jax.Array
  attack_key: jax.Array
  test_split: object
  first: int
  runner: units_lib.Runner
  shared: dict
  out_dir: str
  searched: dict | None = None

  @property
  def print_fn(self) -> Callable:
    return self.runner.print_fn


def output_dir(workdir: str, output: str | None) -> str:
  """The evaluation's folder (OUTPUT, default WORKDIR/eval), created."""
  out_dir = os.path.abspath(output or os.path.join(workdir, "eval"))
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot write the evaluation to {out_dir!r}: {e.strerror or e}; "
                       "pass --output DIR") from e
  return out_dir


def example_range(config, n_split: int, num_examples: int | None, print_fn) -> tuple[int, int]:
  """(first, n): the evaluated test examples [first, first + n) of a split of n_split."""
  first = config.eval.first_example
  if not 0 <= first < n_split:
    raise ConfigError(f"config.eval.first_example={first}; expected in [0, {n_split}) (the "
                      f"test split has {n_split} examples)")
  n_left = n_split - first
  n = min(num_examples or config.eval.num_examples or n_left, n_left)
  if num_examples and num_examples > n_left:
    print_fn(f"[eval] --num_examples={num_examples} is more than the {n_left} test examples "
             f"from index {first}; evaluating {n_left}")
  return first, n


def prepare(config, workdir: str, attack_names, num_examples: int | None, *, sweep: bool,
            certify: bool, mesh, print_fn, after_batch, output: str | None,
            checkpoint_steps: dict | None) -> Evaluation:
  """The Evaluation of evaluate's arguments: settings checked, networks loaded, the Runner
  made, and (config.eval.budget "auto") the attack budget searched."""
  defense = settings_lib.make_defense(config)
  attack_names = tuple(dict.fromkeys(attack_names))
  settings = settings_lib.read(config)
  attacks = settings_lib.all_attack_settings(config, attack_names, sweep)
  budget_attack = settings_lib.budget_attack_settings(config, attacks, attack_names)
  sweep_points = settings_lib.sweep_points(config, sweep)
  memory_budget = settings_lib.memory_budget_bytes(config)
  sweep_eps = tuple(float(e) for e in config.attack.sweep_eps) if sweep_points else ()
  eval_key, attack_key = jax.random.key(config.eval.seed), jax.random.key(config.attack.seed)
  certification = (certify_lib.make_plan(config, defense, eval_key, attack_key) if certify
                   else None)
  test_split = data.open_split(config.data.name, "test", config.data.data_dir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  loaded = loading.load_defense_models(config, workdir, mesh, steps=checkpoint_steps)
  out_dir = output_dir(workdir, output)
  params = {role: m.variables for role, m in loaded.items()}
  first, n = example_range(config, len(test_split), num_examples, print_fn)
  shared = {"num_examples": n, "networks": {k: m.fingerprint for k, m in loaded.items()},
            "defense": settings_lib.defense_settings(defense), "eval_seed": config.eval.seed,
            **({"first_example": first} if first else {})}
  runner = units_lib.Runner(params, test_split, n, mesh,
                            store_lib.BatchStore(os.path.join(out_dir, "batches"), print_fn),
                            shared, print_fn=print_fn, after_batch=after_batch,
                            is_writer=jax.process_index() == 0, first=first,
                            memory_budget=memory_budget)
  ev = Evaluation(settings, defense, params, loaded, attack_names, attacks, budget_attack,
                  sweep_points, sweep_eps, certification, eval_key, attack_key, test_split,
                  first, runner, shared, out_dir)
  return with_searched_budget(ev)


def with_searched_budget(ev: Evaluation) -> Evaluation:
  """ev with the automatic budget search's record, and every exact-gradient attack at the
  chosen budget (unchanged when the search does not run: `budget.search_budget`)."""
  searched = budget_lib.search_budget(ev)
  if searched is None:
    return ev
  chosen = searched["chosen"]
  attacks = {name: (attacks_lib.with_gradient_budget(name, s, chosen["num_steps"],
                                                     chosen["n_eot"])
                    if attacks_lib.SPECS[name].exact_gradient else s)
             for name, s in ev.attacks.items()}
  return dataclasses.replace(ev, attacks=attacks, searched=searched)
