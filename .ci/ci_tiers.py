"""CI's test tiers: a pytest plugin that records what ran, and the checks `.ci/run` makes.

As a plugin (`PYTHONPATH=.ci python -m pytest -p ci_tiers ...`), driven by two environment
variables:
- JAXPURE_CI_INVENTORY=PATH: writes every collected test (one JSON line: node id, its
  `reference` / `slow` / `multihost` marks) before any deselection (`-m`, `-k`, conftest
  hooks), so a later check can tell a deselected test from one that does not exist. Run it with
  `--collect-only -n 0`.
- JAXPURE_CI_LOG=PATH: appends one JSON line per test phase report and per collection report
  that did not pass (a module skipped at import, say), as the tests run, so the file is
  complete up to the moment a run is stopped. Under pytest-xdist only the controller writes.

As a script:
- `python .ci/ci_tiers.py check-reference INVENTORY LOG`: exit 1, naming each, when a test
  marked `reference` did not pass (failed, skipped or never ran: deselected, or stopped) or
  when any collector was skipped or failed in the run (a module that is skipped at import
  hides its tests from the inventory); else prints how many passed and exits 0.
- `python .ci/ci_tiers.py not-run INVENTORY LOG MARKEXPR`: prints the tests of the inventory
  selected by MARKEXPR ("slow and not reference") that have no outcome in LOG (those a
  budget cut), one per line, after a count; exit 0.
"""

import json
import os
import sys

import pytest

MARKS = ("reference", "slow", "multihost")
_INVENTORY, _LOG = "JAXPURE_CI_INVENTORY", "JAXPURE_CI_LOG"


def _controller() -> bool:
  return not os.environ.get("PYTEST_XDIST_WORKER")


def _append(record: dict) -> None:
  path = os.environ.get(_LOG)
  if path and _controller():
    with open(path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")


@pytest.hookimpl(tryfirst=True)  # before `-m`, `-k` and the conftest's deselection
def pytest_collection_modifyitems(items):
  path = os.environ.get(_INVENTORY)
  if path and _controller():
    with open(path, "w", encoding="utf-8") as f:
      for item in items:
        marks = sorted({m.name for m in item.iter_markers()} & set(MARKS))
        f.write(json.dumps({"nodeid": item.nodeid, "marks": marks}) + "\n")


def pytest_collectreport(report):
  if report.outcome != "passed":
    _append({"nodeid": report.nodeid, "when": "collect", "outcome": report.outcome,
             "why": _why(report)})


def pytest_runtest_logreport(report):
  _append({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
           "why": _why(report) if report.outcome != "passed" else ""})


def _why(report) -> str:
  longrepr = report.longrepr
  if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
    return str(longrepr[2])
  text = str(longrepr or "")
  return text.strip().splitlines()[-1] if text.strip() else ""


# --------------------------------------------------------------------------- checks


def read_inventory(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return {r["nodeid"]: set(r["marks"]) for r in map(json.loads, f) if r}


def read_log(path: str) -> tuple[dict, list]:
  """(outcome per test node id, with its reason: "failed" if a phase failed, else "skipped"
  if one was skipped, else "passed" if the test's call passed, else "stopped" (its setup ran,
  then the run ended); the collection reports that did not pass)."""
  phases, collectors = {}, []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for r in map(json.loads, f):
        if r["when"] == "collect":
          collectors.append(r)
        else:
          phases.setdefault(r["nodeid"], []).append(r)
  outcomes = {}
  for nodeid, reports in phases.items():
    for outcome in ("failed", "skipped"):
      hit = [r for r in reports if r["outcome"] == outcome]
      if hit:
        outcomes[nodeid] = (outcome, hit[0]["why"])
        break
    else:
      ran = any(r["when"] == "call" and r["outcome"] == "passed" for r in reports)
      outcomes[nodeid] = ("passed", "") if ran else ("stopped", "")
  return outcomes, collectors


def selected(marks: set, markexpr: str) -> bool:
  """pytest's -m semantics: mark names are true when present; and/or/not/parentheses."""
  names = {name: name in marks for name in MARKS}
  return bool(eval(markexpr, {"__builtins__": {}}, names))  # pylint: disable=eval-used


def check_reference(inventory_path: str, log_path: str, out=print) -> int:
  inventory = read_inventory(inventory_path)
  outcomes, collectors = read_log(log_path)
  reference = [n for n, marks in inventory.items() if "reference" in marks]
  problems = [f"{c['outcome']} while collecting {c['nodeid'] or 'the session'}: {c['why']}"
              for c in collectors]
  for nodeid in reference:
    outcome, why = outcomes.get(nodeid, ("not run (deselected or stopped)", ""))
    if outcome != "passed":
      problems.append(f"{outcome}: {nodeid}" + (f" ({why})" if why else ""))
  if not reference:
    problems.append("no test is marked reference")
  if problems:
    out(f"ci: the reference tier is incomplete: {len(problems)} problem(s)")
    for p in problems:
      out(f"ci:   {p}")
    return 1
  out(f"ci: reference tier: all {len(reference)} reference tests passed")
  return 0


def not_run(inventory_path: str, log_path: str, markexpr: str, out=print) -> list:
  inventory = read_inventory(inventory_path)
  outcomes, _ = read_log(log_path)
  missing = [n for n, marks in inventory.items()
             if selected(marks, markexpr) and outcomes.get(n, ("stopped",))[0] == "stopped"]
  out(f"ci: {len(missing)} test(s) selected by -m '{markexpr}' did not run:")
  for n in missing:
    out(f"ci:   {n}")
  return missing


def main(argv) -> int:
  if len(argv) == 3 and argv[0] == "check-reference":
    return check_reference(*argv[1:])
  if len(argv) == 4 and argv[0] == "not-run":
    not_run(*argv[1:])
    return 0
  print("usage: ci_tiers.py check-reference INVENTORY LOG | not-run INVENTORY LOG MARKEXPR",
        file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
