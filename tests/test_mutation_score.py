"""The mutation score (benchmarks/mutation_score.py): the listed mutations still apply to the
sources, the script tells a caught mutant from a survivor and from a broken one, and (slow)
every listed mutation is caught by its tests."""

import io
import os

import pytest

from benchmarks import mutation_score as ms

REPORT_TEST = ("tests/test_report_statistics.py::test_run_scores_against_hand_computed_values",)


def test_every_mutation_applies_to_the_current_sources():
  # Each original text occurs exactly once (so the list cannot silently stop applying), each
  # names existing tests, and the list covers the bugs it must.
  assert ms.source_problems() == []
  assert len(ms.MUTATIONS) >= 25
  names = " ".join(m.name for m in ms.MUTATIONS)
  for bug in ("langevin: drift dropped", "apgd: oscillation clause", "apgd: stall clause",
              "ddof", "vp-sde: reverse drift's sign", "eot: the loss of one sample",
              "stopping mask", "checksum", "key not folded", "worst case: any attack",
              "paired test", "resubmissions", "cw:", "dlr:", "projection", "dsm:", "importer"):
    assert bug in names, bug


def test_listed_tests_run_even_when_the_default_selection_leaves_them_out(tmp_path):
  """A listed test marked slow (left out by setup.cfg's `-m "not slow"`) still runs."""
  (tmp_path / "tests").mkdir()
  (tmp_path / "setup.cfg").write_text('[tool:pytest]\naddopts = -m "not slow"\n'
                                      "markers =\n    slow: long\n")
  (tmp_path / "tests" / "test_a.py").write_text(
      "import pytest\n\n\n@pytest.mark.slow\ndef test_b():\n  assert False\n")
  returncode, output = ms.run_tests(str(tmp_path), ["tests/test_a.py::test_b"],
                                    str(tmp_path / "cache"), timeout=120)
  assert returncode == 1 and "FAILED tests/test_a.py::test_b" in output, output


def test_a_repeated_or_missing_original_is_a_problem(tmp_path):
  (tmp_path / "tests").mkdir()
  (tmp_path / "tests" / "test_a.py").write_text("def test_b():\n  pass\n")
  (tmp_path / "m.py").write_text("x = 1\nx = 1\n")
  twice = ms.Mutation("twice", "m.py", "x = 1", "x = 2", ("tests/test_a.py::test_b",))
  missing = ms.Mutation("missing", "m.py", "y = 1", "y = 2", ("tests/test_a.py::test_c",))
  problems = ms.source_problems(str(tmp_path), (twice, missing))
  assert problems == ["twice: 'x = 1' occurs 2 times in m.py, not once",
                      "missing: 'y = 1' occurs 0 times in m.py, not once",
                      "missing: no test tests/test_a.py::test_c"], problems


def test_outcomes_count_only_test_failures():
  assert ms.outcome(1, "FAILED tests/test_a.py::test_b - AssertionError\n") == (
      True, "failed tests/test_a.py::test_b")
  assert ms.outcome(0, "PASSED tests/test_a.py::test_b\n")[0] is False
  assert ms.outcome(2, "ERROR tests/test_a.py - ImportError\n")[0] is False  # collection error
  assert ms.outcome(5, "no tests ran\n")[0] is False
  assert ms.outcome(None, "")[0] is False  # timed out


@pytest.mark.slow  # three real pytest runs on copies of the sources
def test_a_caught_mutant_a_survivor_and_a_broken_mutant(tmp_path):
  """Real runs in copies of the sources: the ddof bug is caught by the hand-computed report
  test; a mutant that changes only a docstring survives; a mutant that does not compile is
  refused, not counted as caught."""
  cache = str(tmp_path / "cache")
  cases = {
      "ddof": ms.Mutation("ddof", "jaxpure/statistics.py", "np.std(per_example, ddof=1)",
                          "np.std(per_example, ddof=0)", REPORT_TEST),
      "docstring": ms.Mutation("docstring", "jaxpure/statistics.py", "(sample std, ddof 1,",
                               "(sample std, ddof one,", REPORT_TEST),
      "syntax": ms.Mutation("syntax", "jaxpure/statistics.py", "np.std(per_example, ddof=1)",
                            "np.std(per_example, ddof=1", REPORT_TEST),
  }
  got = {name: ms.run_mutation(m, str(tmp_path), cache, 300)[:2] for name, m in cases.items()}
  assert got["ddof"] == (True, "failed " + REPORT_TEST[0]), got
  assert got["docstring"] == (False, "all its tests passed"), got
  assert got["syntax"][0] is False and "does not compile" in got["syntax"][1], got
  assert set(os.listdir(tmp_path)) <= {"cache"}  # the copies are removed


@pytest.mark.slow  # about 10 minutes on two cores: ~40 pytest runs, each compiling its mutant
@pytest.mark.reference  # CI runs it with the reference tier: never cut by the slow budget
def test_every_listed_mutation_is_caught():
  # Some of the catching tests compare with PyTorch and AutoAttack (the torch extra).
  pytest.importorskip("torch", reason="needs the torch extra: pip install -e '.[torch]'")
  pytest.importorskip("pyautoattack.autopgd_base", reason="needs the torch extra")
  out = io.StringIO()
  status = ms.main([], out=out)
  text = out.getvalue()
  n = len(ms.MUTATIONS)
  assert f"mutations caught: {n} of {n} " in text and status == 0, text
  assert n >= 25
