"""The package's layout rules: no function in jaxpure/ longer than MAX_LINES lines (a function
that plans, runs and formats is three functions). Data literals of the configs are not code and
are not under jaxpure/."""

import ast
import pathlib

MAX_LINES = 60
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxpure"


def long_functions(root: pathlib.Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
  """"path:line name (N lines)" of every function or method under root longer than limit
  lines, its decorators and docstring included."""
  found = []
  for path in sorted(root.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        length = node.end_lineno - first + 1
        if length > limit:
          found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} "
                       f"({length} lines)")
  return found


def test_no_function_is_longer_than_the_limit():
  assert long_functions() == []


def test_the_check_finds_a_long_function(tmp_path):
  body = "\n".join(f"  x{i} = {i}" for i in range(MAX_LINES))
  (tmp_path / "pkg").mkdir()
  (tmp_path / "pkg" / "m.py").write_text(f"def short():\n  return 1\n\n\ndef long():\n{body}\n")
  assert long_functions(tmp_path / "pkg") == [f"pkg/m.py:5 long ({MAX_LINES + 1} lines)"]


def test_the_evaluation_call_path_stays_short(capsys):
  """The walk from the evaluation's entry function following the config
  (benchmarks/call_walk.py) has at most 25 stops in at most 12 modules, at most 4 returns to
  a module higher up and no module visited more than 3 times; so has the walk of every call
  the entry function makes."""
  from benchmarks import call_walk
  for args in ([], ["--all_calls", "--depth", "1"]):
    r = call_walk.main(args)
    assert r["stops"] <= 25 and r["modules"] <= 12, (args, r)
    assert r["returns_to_a_higher_module"] <= 4 and r["max_visits_per_module"] <= 3, (args, r)
  assert "stops" in capsys.readouterr().out


def test_the_call_walk_counts_returns_and_visits(tmp_path):
  from benchmarks import call_walk
  pkg = tmp_path / "jaxpure" / "jobs" / "evaluation"
  pkg.mkdir(parents=True)
  (tmp_path / "jaxpure" / "__init__.py").write_text("")
  (tmp_path / "jaxpure" / "jobs" / "__init__.py").write_text("")
  (pkg / "__init__.py").write_text(
      "from jaxpure.jobs.evaluation import a\n\n"
      "def evaluate(config):\n  a.f(config)\n  helper(config)\n  a.g(1)\n  a.f(config)\n\n"
      "def helper(config):\n  return 1\n")
  (pkg / "a.py").write_text(
      "from jaxpure.jobs import evaluation\n\n"
      "def f(config):\n  return evaluation.helper(config)\n\n"
      "def g(other):\n  return 2\n")
  walker = call_walk.Walker(call_walk.read_modules(str(tmp_path)), 100, follow_config=True)
  walker.walk(*call_walk.ENTRY)
  # evaluate -> a.f -> helper (back up in the entry module); a.g is not passed the config
  assert walker.stops == [("jaxpure.jobs.evaluation", "evaluate"),
                          ("jaxpure.jobs.evaluation.a", "f"),
                          ("jaxpure.jobs.evaluation", "helper")]
  r = call_walk.counts(walker)
  assert (r["stops"], r["modules"], r["returns_to_a_higher_module"],
          r["max_visits_per_module"]) == (3, 2, 1, 2)
