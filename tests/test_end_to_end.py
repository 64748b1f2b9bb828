"""The README's main job, as a user runs it, with the thresholds the issues promise (slow)."""

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.reference]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_digits_train_then_evaluate(tmp_path):
  workdir = tmp_path / "digits"
  t0 = time.time()
  proc = subprocess.run([sys.executable, "train.py", "--config", "configs/digits.py",
                         "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True,
                        timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  train_s = time.time() - t0
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["classifier"]["test_accuracy"] >= 0.95
  assert summary["score"]["denoise_psnr_gain_db"] >= 4.0
  proc = subprocess.run([sys.executable, "evaluate.py", "--config", "configs/digits.py",
                         "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True,
                        timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / "eval" / "report.json").read_text())
  assert report["defended_clean_accuracy"] >= 0.90
  for png in ("purification.png", "steps.png"):
    assert (workdir / "eval" / png).exists()
  print(f"train {train_s:.0f} s, summary {summary}, defended {report['defended_clean_accuracy']}")
