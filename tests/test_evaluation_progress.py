"""The evaluation's progress accounting: the ETA over all planned units and the resume line.

Runner times each computed batch with time.perf_counter; a fake clock that advances one second
per reading makes every batch take exactly 1 s, so the overall ETA has known values.
"""

import itertools

import pytest

from jaxpure import data, parallel
from jaxpure.jobs.evaluation import store as store_lib, units as units_lib

N = 20  # with 8 devices and batch size 10: batches of 16 (16 real) and 16 (4 real) examples


def _unit(name, work):
  return units_lib.Unit(name, lambda params, batch, dynamic: {"ok": batch["label"] >= 0}, 10,
                        {"unit": name}, work=work)


def _runner(tmp_path, lines, etas):
  runner = None

  def after_batch(unit, batch):
    etas.append((unit, batch, runner.overall_eta()))
  runner = units_lib.Runner({}, data.open_split("digits", "test"), N, parallel.make_mesh(),
                            store_lib.BatchStore(str(tmp_path / "batches"), lines.append),
                            {"n": N}, print_fn=lines.append, after_batch=after_batch)
  return runner


@pytest.fixture
def one_second_batches(monkeypatch):
  clock = itertools.count()
  monkeypatch.setattr(units_lib.time, "perf_counter", lambda: float(next(clock)))


def test_overall_eta_counts_every_planned_unit_by_its_work(tmp_path, one_second_batches):
  lines, etas = [], []
  runner = _runner(tmp_path, lines, etas)
  a, b = _unit("a", 1.0), _unit("b", 3.0)
  runner.plan([a, b])
  assert runner.overall_eta() is None  # nothing measured yet
  assert [r["ok"].size for r in runner.run(a)] == [16, 4]
  runner.run(b)
  # a's first batch: 16 work in 1 s; left: 4 of a (4 work) + 20 of b (60 work) -> 64/16 s.
  # a done: 20 work in 2 s; left 60 -> 6 s. b's first batch: 68 work in 3 s; left 4 x 3 = 12.
  got = [(u, i, e) for u, i, e in etas]
  assert got == [("a", 0, pytest.approx(4.0)), ("a", 1, pytest.approx(6.0)),
                 ("b", 0, pytest.approx(12 * 3 / 68)), ("b", 1, pytest.approx(0.0))]
  assert any(l.endswith("all units: ETA 0m06s") for l in lines), lines


def test_a_resumed_run_says_what_it_reuses_and_plans_only_the_rest(tmp_path, one_second_batches):
  lines, etas = [], []
  _runner(tmp_path, lines, etas).run(_unit("a", 1.0))
  lines, etas = [], []
  runner = _runner(tmp_path, lines, etas)
  runner.plan([_unit("a", 1.0), _unit("b", 2.0)])
  assert "[eval] resuming: reusing 2 stored batches of 1 of the 2 units" in lines
  runner.run(_unit("a", 1.0))
  assert etas == []  # nothing computed for a
  runner.run(_unit("b", 2.0))
  # b's first batch: 32 work in 1 s; left 4 examples x 2 -> 8/32 s.
  assert etas[0] == ("b", 0, pytest.approx(0.25))


def test_only_a_run_with_stored_and_missing_batches_says_resuming(tmp_path, one_second_batches):
  units = lambda: [_unit("a", 1.0), _unit("b", 2.0)]  # noqa: E731
  lines, etas = [], []
  runner = _runner(tmp_path, lines, etas)
  runner.plan(units())  # a first run: nothing stored, nothing said about stored batches
  for unit in units():
    runner.run(unit)
  assert not [l for l in lines if "resum" in l or "stored" in l or "reus" in l], lines
  lines, etas = [], []
  runner = _runner(tmp_path, lines, etas)
  runner.plan(units())  # the same evaluation again: every batch (2 + 2) is stored
  assert [l for l in lines if l.startswith("[eval] all")] == [
      "[eval] all 4 batches of the 2 units are stored by an earlier run of the same networks "
      "and settings: nothing to compute"]
  assert not [l for l in lines if "resum" in l], lines


def test_a_unit_on_its_first_examples_is_shared_by_evaluations_of_more_examples(tmp_path):
  """A unit on its first k examples (the budget curves) is stored under k, not under the
  evaluation's count: an evaluation of more examples reads it, one of fewer than k (other
  examples) computes it, and a unit over all examples is never shared across counts."""
  def runner(n, computed):
    return units_lib.Runner({}, data.open_split("digits", "test"), n, parallel.make_mesh(),
                            store_lib.BatchStore(str(tmp_path / "batches"), lambda s: None),
                            {"num_examples": n}, print_fn=lambda s: None,
                            after_batch=lambda unit, batch: computed.append(unit))
  first8 = lambda: units_lib.Unit("first8", lambda p, b, d: {"i": b["index"]}, 10,  # noqa: E731
                                  {"unit": "first8"}, num_examples=8)
  every = lambda: _unit("every", 1.0)  # noqa: E731
  computed = []
  runner(20, computed).run(first8())
  runner(20, computed).run(every())
  assert computed == ["first8", "every", "every"]
  computed = []
  more = runner(24, computed)
  assert [r["i"].tolist() for r in more.run(first8())] == [list(range(8))]
  more.run(every())
  assert computed == ["every", "every"]  # first8 read, every recomputed for 24 examples
  computed = []
  assert [r["i"].tolist() for r in runner(6, computed).run(first8())] == [list(range(6))]
  assert computed == ["first8"]


def test_units_without_a_plan_show_no_overall_eta(tmp_path, one_second_batches):
  lines, etas = [], []
  _runner(tmp_path, lines, etas).run(_unit("a", 1.0))
  assert etas == [("a", 0, None), ("a", 1, None)]
  assert not any("all units" in l for l in lines)


def test_attack_cost_estimates_follow_the_budget():
  from jaxpure import attacks
  s = attacks.AttackSettings(num_steps=10, n_eot=2)
  assert attacks.purifications("pgd_clf", s, restarts=4) == 0
  bpda, exact = (attacks.purifications(n, s, 4) for n in ("bpda_eot", "pgd_eot_full"))
  assert exact == attacks.EXACT_GRADIENT_COST * bpda > 0
  twice = attacks.AttackSettings(num_steps=20, n_eot=2)
  assert attacks.purifications("pgd_eot_full", twice, 4) == 2 * exact
  one, two = (attacks.purifications("apgd_eot", attacks.AttackSettings(
      num_steps=10, n_eot=2, losses=("ce", "dlr"), warm_restarts=w), 4) for w in (0, 1))
  assert two == 2 * one > 2 * exact
  # a final-iterate candidate adds the choice's R purifications per candidate
  single = attacks.AttackSettings(num_steps=10, n_eot=2, losses=("ce",), final_candidate=False)
  both = attacks.AttackSettings(num_steps=10, n_eot=2, losses=("ce",), final_candidate=True)
  assert attacks.purifications("apgd_eot", both, 4) == attacks.purifications(
      "apgd_eot", single, 4) + 2 * 4


@pytest.mark.parametrize("config_name", ["default", "digits", "smoke", "digits_diffpure"])
def test_every_attack_setting_in_the_config_reaches_the_attack(config_name):
  """Each key of an attack's config section that names an AttackSettings field arrives in
  the settings the evaluation builds (a key the evaluation forgot would be silently ignored)."""
  import dataclasses
  import importlib
  from jaxpure import attacks
  from jaxpure.jobs import evaluation
  config = importlib.import_module(f"configs.{config_name}").get_config()
  fields = {f.name for f in dataclasses.fields(attacks.AttackSettings)}

  def changed(value):  # another valid value of the same kind
    if isinstance(value, bool):
      return not value
    if isinstance(value, (int, float)):
      return value + 1 if isinstance(value, int) else value * 2 + 0.01
    if isinstance(value, str):
      return "dlr" if value != "dlr" else "ce"
    return ("dlr",) if tuple(value) != ("dlr",) else ("ce",)

  for name in attacks.ATTACKS:
    section = config.attack[name]
    for key in section:
      assert key in fields, (name, key)
      original = section[key]
      for value in (changed(original), original):  # a changed value, then the config's again
        section[key] = value
        s = evaluation.attack_settings(config, name)
        want = tuple(value) if isinstance(value, (list, tuple)) else value
        assert getattr(s, key) == want, (config_name, name, key, value)
