"""The scripts in examples/ run as a user runs them (a subprocess outside the repository, the
package on the path) and print what they promise (slow: each compiles its attacks)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import write_random_workdir

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_evaluate_digits_example_prints_the_report_of_a_workdir(tmp_path):
  import json
  from configs import digits
  write_random_workdir(digits.get_config(), str(tmp_path / "digits"))
  out = _run(tmp_path, os.path.join(REPO, "examples", "evaluate_digits.py"),
             str(tmp_path / "digits"), "-n", "16", "--steps", "2", "--n_eot", "1")
  report = json.loads(out)
  assert list(report)[0] == "robust_accuracy_worst_case"
  assert report["robust_accuracy_worst_case"] <= min(report["robust_accuracy"].values())
  assert report["budget_status"] in ("converged", "cap reached: an upper bound")


def test_custom_defense_example_evaluates_a_user_defense(tmp_path):
  out = _run(tmp_path, os.path.join(REPO, "examples", "custom_defense.py"))
  found = re.search(r"clean ([0-9.]+)\s+defended ([0-9.]+)\s+worst case ([0-9.]+)\s+"
                    r"budget (converged|cap reached)", out)
  assert found, out
  clean, defended, worst = map(float, found.groups()[:3])
  assert clean > 0.8  # the fitted linear classifier
  assert worst <= defended


def test_import_and_purify_example_on_the_fixtures(tmp_path):
  pytest.importorskip("torch")
  out = _run(tmp_path, os.path.join(REPO, "examples", "import_and_purify.py"),
             os.path.join(REPO, "tests", "data", "ncsnv2_cifar10_ngf16.pth"),
             os.path.join(REPO, "tests", "data", "robustbench_wrn16_2.pt"))
  assert out.startswith("purified (4, 32, 32, 3) in [0.00, 1.00]")
