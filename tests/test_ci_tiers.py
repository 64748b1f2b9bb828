"""CI's tiers (.ci/tiers.sh, .ci/ci_tiers.py) on a small pytest project made here: the
reference tier fails when a reference test is skipped, hidden by a module skipped at import,
deselected or failing, and passes when all pass; the budgeted slow tier names the tests it cut."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIERS = os.path.join(REPO, ".ci", "tiers.sh")

INI = """\
[pytest]
testpaths = tests
addopts = -m "not slow" -n 2 --dist loadfile
markers =
    slow: slow
    reference: reference
    multihost: multihost
"""
CONFTEST = """\
def pytest_collection_modifyitems(config, items):  # as the project's: multihost on request
  if "multihost" in (config.option.markexpr or ""):
    return
  gone = [i for i in items if i.get_closest_marker("multihost")]
  config.hook.pytest_deselected(items=gone)
  items[:] = [i for i in items if not i.get_closest_marker("multihost")]
"""
PASSING = """\
import pytest

@pytest.mark.reference
def test_ref():
  pass

@pytest.mark.reference
@pytest.mark.parametrize("k", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_ref_param(k):
  pass

def test_plain():
  pass
"""


def _project(root, files):
  (root / "tests").mkdir()
  (root / "pytest.ini").write_text(INI)
  (root / "tests" / "conftest.py").write_text(CONFTEST)
  for name, text in files.items():
    (root / "tests" / name).write_text(textwrap.dedent(text))


def _bash(root, script, **env):
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
             CI_OUT=str(root / "ci"), **env)
  env.pop("PYTEST_XDIST_WORKER", None)  # this test may itself run in a worker
  (root / "ci").mkdir()
  return subprocess.run(["bash", "-c", f"source {TIERS}\n{script}"], cwd=root, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def test_reference_tier_fails_on_a_skipped_hidden_deselected_or_failing_reference_test(tmp_path):
  _project(tmp_path, {
      "test_a.py": PASSING + """
@pytest.mark.reference
def test_ref_skips():
  pytest.skip("torch is not installed")

@pytest.mark.reference
def test_ref_fails():
  assert 1 + 1 == 3
""",
      "test_b.py": """\
import pytest
pytest.importorskip("a_module_that_is_not_there")
pytestmark = pytest.mark.reference

def test_hidden():
  pass
""",
      "test_c.py": """\
import pytest

@pytest.mark.reference
@pytest.mark.multihost
def test_ref_deselected():
  pass
"""})
  r = _bash(tmp_path, "reference_tier")
  assert r.returncode == 1, r.stdout + r.stderr
  problems = sorted(line for line in r.stdout.splitlines() if line.startswith("ci:   "))
  assert problems == sorted([
      "ci:   failed: tests/test_a.py::test_ref_fails (tests/test_a.py:%d: AssertionError)"
      % (PASSING.count("\n") + 8),
      "ci:   not run (deselected or stopped): tests/test_c.py::test_ref_deselected",
      "ci:   skipped while collecting tests/test_b.py: Skipped: could not import "
      "'a_module_that_is_not_there': No module named 'a_module_that_is_not_there'",
      "ci:   skipped: tests/test_a.py::test_ref_skips (Skipped: torch is not installed)"]), r.stdout
  assert "ci: the reference tier failed (pytest exit 1, check exit 1)" in r.stdout


def test_reference_tier_passes_when_every_reference_test_passed(tmp_path):
  _project(tmp_path, {"test_a.py": PASSING})
  r = _bash(tmp_path, "reference_tier")
  assert r.returncode == 0, r.stdout + r.stderr
  # the slow reference test ran too: the tier is not `-m "not slow"`
  assert "ci: reference tier: all 3 reference tests passed" in r.stdout, r.stdout


def test_slow_tier_is_stopped_at_the_budget_and_names_the_tests_it_cut(tmp_path):
  _project(tmp_path, {"test_a.py": PASSING, "test_d.py": """\
import time
import pytest

@pytest.mark.slow
def test_1_quick():
  pass

@pytest.mark.slow
def test_2_sleeps():
  time.sleep(60)

@pytest.mark.slow
def test_3_after():
  pass
"""})
  r = _bash(tmp_path, "slow_tier 5", CI_MIN_SLOW_S="1")
  assert r.returncode == 0, r.stdout + r.stderr
  assert "ci: the other slow tests were stopped after 5 s" in r.stdout
  # the slow reference test is not part of this tier; the quick one ran
  assert r.stdout.splitlines()[-3:] == [
      "ci: 2 test(s) selected by -m 'slow and not reference' did not run:",
      "ci:   tests/test_d.py::test_2_sleeps", "ci:   tests/test_d.py::test_3_after"], r.stdout
