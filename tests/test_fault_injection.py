"""Fault injection (issue 29): SIGKILL at random, seeded points of train.py and evaluate.py
leaves nothing lost or duplicated (the slow test), and the pieces it relies on can tell a
fault: the kill points of jaxpure.faults, and the comparisons of benchmarks/fault_injection.py
(each shown to report a changed bit, a duplicate metrics line, a leftover temporary file)."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from benchmarks import fault_injection as fi
from jaxpure import checkpoint, faults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- kill points
def _python(code: str, kill_at: str | None):
  env = {k: v for k, v in os.environ.items() if k != faults.ENV}
  if kill_at is not None:
    env[faults.ENV] = kill_at
  t0 = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  return proc, time.monotonic() - t0


_ARRIVALS = """
from jaxpure import faults
for i in range(1, 4):
  faults.reached("batch_store")
  faults.reached("step")
  print("after step", i, flush=True)
"""


def test_a_kill_point_kills_at_its_nth_arrival_and_not_before():
  proc, _ = _python(_ARRIVALS, "step:2")
  assert proc.returncode == -9, proc.stderr
  assert proc.stdout.splitlines() == ["after step 1"]  # killed at the 2nd step, not the
  assert proc.stderr.strip() == "[fault injection] SIGKILL at step #2 +0.000 s"  # batch_store
  unset, _ = _python(_ARRIVALS, None)
  assert unset.returncode == 0 and unset.stdout.splitlines() == [
      "after step 1", "after step 2", "after step 3"]
  beyond, _ = _python(_ARRIVALS, "step:4")  # never reached: the job ends normally
  assert beyond.returncode == 0 and len(beyond.stdout.splitlines()) == 3


def test_a_delayed_kill_lets_the_job_go_on_until_the_delay_is_over():
  code = ("import time\nfrom jaxpure import faults\nfaults.reached('compile')\n"
          "print('went on', flush=True)\ntime.sleep(30)\nprint('not reached')")
  proc, seconds = _python(code, "compile:1:0.5")
  assert proc.returncode == -9 and proc.stdout.splitlines() == ["went on"]
  assert 0.5 <= seconds < 25, seconds
  assert "SIGKILL at compile #1 +0.500 s" in proc.stderr


@pytest.mark.parametrize("spec", ["nowhere:1", "step", "step:0", "step:1:-1", "step:x"])
def test_a_malformed_kill_point_is_refused(spec):
  with pytest.raises(ValueError):
    faults.parse(spec)


# ----------------------------------------------------------------------------- comparisons
def _write_metrics(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


REF_METRICS = [{"step": 2, "model": "score", "loss": 1.5, "steps_per_sec": 3.0},
               {"step": 4, "model": "score", "loss": 1.25, "steps_per_sec": 4.0}]


def test_metrics_comparison_reports_duplicates_cut_lines_and_other_values(tmp_path):
  ref, got = tmp_path / "ref.jsonl", tmp_path / "got.jsonl"
  _write_metrics(ref, REF_METRICS)
  _write_metrics(got, [dict(r, steps_per_sec=9.0) for r in REF_METRICS])  # only steps/s
  assert fi.metrics_problems(str(got), str(ref)) == []
  _write_metrics(got, REF_METRICS + REF_METRICS[1:])  # step 4 logged twice
  (problem,) = fi.metrics_problems(str(got), str(ref))
  assert "more than one line" in problem and "('score', 4)" in problem
  got.write_text(json.dumps(REF_METRICS[0]) + "\n" + '{"step": 4, "mod\n')  # cut by a kill
  assert "line 2 is not JSON" in fi.metrics_problems(str(got), str(ref))[0]
  _write_metrics(got, REF_METRICS[:1])  # a step missing
  assert "differ from the reference" in fi.metrics_problems(str(got), str(ref))[0]
  _write_metrics(got, [REF_METRICS[0], dict(REF_METRICS[1], loss=1.2500001)])
  assert "('score', 4)" in fi.metrics_problems(str(got), str(ref))[0]


def test_leftovers_are_the_temporary_files_and_folders_only(tmp_path):
  for rel in ("report.json", "batches/clean/h/00000.npz", "checkpoints/score/2/state/x"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text("kept")
  assert fi.leftovers(str(tmp_path)) == []
  left = ["report.json.tmp", "batches/clean/h/00001.npz.tmp.npz",
          "checkpoints/score/4.orbax-checkpoint-tmp", ".write_test_123"]
  for rel in left:
    (tmp_path / rel).write_text("") if "orbax" not in rel else (tmp_path / rel).mkdir()
  assert fi.leftovers(str(tmp_path)) == sorted(left)


def _eval_dir(root, *, flip=False, seconds=1.0, accuracy=0.5, timing=3.0):
  """A small evaluation output folder: a report, a per-settings report, a stored batch."""
  (root / "reports").mkdir(parents=True)
  (root / "batches" / "clean" / "h").mkdir(parents=True)
  report = {"clean_accuracy": accuracy, "timings": {"clean": {"seconds": timing}},
            "attacks": {"pgd_clf": {"settings": {"eps": 0.1}, "seconds": timing}}}
  (root / "report.json").write_text(json.dumps(report))
  (root / "reports" / "report_h.json").write_text(json.dumps(report))
  x = np.linspace(0, 1, 8, dtype=np.float32)
  if flip:
    x.view(np.uint32)[3] ^= 1  # one bit of one float
  np.savez(root / "batches" / "clean" / "h" / "00000.npz", x=x, seconds=np.asarray(seconds))
  (root / "purification.png").write_bytes(b"\x89PNG same")
  return str(root)


def test_evaluation_comparison_ignores_timings_and_finds_one_changed_bit(tmp_path):
  ref = _eval_dir(tmp_path / "ref")
  assert fi.compare_eval(_eval_dir(tmp_path / "same", seconds=7.0, timing=9.0), ref) == []
  (problem,) = fi.compare_eval(_eval_dir(tmp_path / "flip", flip=True), ref)
  assert problem.startswith("batches/clean/h/00000.npz: x differs"), problem
  problems = fi.compare_eval(_eval_dir(tmp_path / "acc", accuracy=0.45), ref)
  assert problems == ["report.json differs (timings aside)",
                      "reports/report_h.json differs (timings aside)"]
  extra = _eval_dir(tmp_path / "extra")
  (tmp_path / "extra" / "batches" / "clean" / "h" / "00001.npz.tmp.npz").write_bytes(b"")
  problems = fi.compare_eval(extra, ref)
  assert problems[0] == "temporary file left: batches/clean/h/00001.npz.tmp.npz"
  assert "only here ['batches/clean/h/00001.npz.tmp.npz']" in problems[1]


def test_checkpoint_arrays_are_read_back_bit_for_bit(tmp_path):
  identity = checkpoint.model_identity("score", "toy", {"width": 3}, (4, 4, 1))
  w = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  variables = {"params": {"w": w, "b": np.arange(3, dtype=np.int32)}}
  a = checkpoint.save_variables(str(tmp_path / "a"), variables, identity)
  flipped = w.copy()
  flipped.view(np.uint32)[1, 2] ^= 1
  b = checkpoint.save_variables(
      str(tmp_path / "b"), {"params": {"w": flipped, "b": np.arange(3, dtype=np.int32)}},
      identity)
  got = fi.checkpoint_arrays(a)
  assert sorted(got) == ["['params']['b']", "['params']['w']"]
  assert got["['params']['w']"].tobytes() == w.tobytes()
  assert fi._same_arrays(got, fi.checkpoint_arrays(a)) is None
  assert fi._same_arrays(got, fi.checkpoint_arrays(b)) == (
      "['params']['w'] differs (float32(3, 4) vs float32(3, 4))")


def test_the_phase_of_a_kill_is_read_from_what_it_left(tmp_path):
  run = lambda *lines: fi.Run(-9, [(0.0, l) for l in lines], time.time() - 1, 1.0)  # noqa
  compiling = "[score] compiling the train step (the first step includes it) ..."
  assert fi.phase_hit(run("[score] resumed from X at step 2", compiling,
                          "W1206 04:12:56.763048 1 checkpoint_manager.py:1466] Waiting"),
                      str(tmp_path))[0] == "compile"
  assert fi.phase_hit(run(compiling, "[score] compiled; step 1 took 2.7 s"),
                      str(tmp_path))[0] == "step"
  assert fi.phase_hit(run("[eval] clean: batch 1/2  8/16 images"), str(tmp_path))[0] == "step"
  # after a model's last step comes the next model or the summary; after a unit's last batch
  # the next unit or the report
  assert fi.phase_hit(run("[classifier] step 4/4  loss 2.2518"), str(tmp_path))[0] == "other"
  assert fi.phase_hit(run("[score] step 2/4  loss 53.9439"), str(tmp_path))[0] == "step"
  assert fi.phase_hit(run("[eval] pgd_clf: batch 2/2  16/16 images"), str(tmp_path))[0] == "other"
  assert fi.phase_hit(run(), str(tmp_path)) == ("other", "no output yet")
  old = tmp_path / "checkpoints" / "score" / "4.orbax-checkpoint-tmp"
  old.mkdir(parents=True)
  os.utime(old, (time.time() - 60, time.time() - 60))  # left by an earlier run: not this kill
  assert fi.phase_hit(run(compiling), str(tmp_path))[0] == "compile"
  (old / "state").mkdir()  # written during this run
  assert fi.phase_hit(run(compiling), str(tmp_path)) == (
      "checkpoint write", "left checkpoints/score/4.orbax-checkpoint-tmp")
  batch = tmp_path / "eval" / "batches" / "clean" / "h" / "00001.npz.tmp.npz"
  batch.parent.mkdir(parents=True)
  batch.write_bytes(b"")
  assert fi.phase_hit(run("[eval] clean: compiling ..."), str(tmp_path / "eval")) == (
      "batch store", "left batches/clean/h/00001.npz.tmp.npz")


# ----------------------------------------------------------------------------- the whole thing
@pytest.mark.slow  # about 40 runs of train.py and evaluate.py (minutes)
@pytest.mark.reference  # bit-exact resume after kills: CI runs it with the reference tier, never cut
def test_random_sigkills_leave_the_same_checkpoints_and_reports(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  result = fi.main(["--kills", "20", "--seed", "0", "--workdir", str(tmp_path)])
  out = capsys.readouterr().out
  assert result["kills"] >= 20
  for trial in result["trials"]:
    assert trial["problems"] == [], (trial, out[-4000:])
  assert result["survived"] == result["kills"]
  assert f"kills survived: {result['kills']} of {result['kills']}" in out.splitlines()
  for phase in fi.PHASES:  # read from what each kill left, not from what was planned
    assert result["by_phase"][phase] >= 1, (result["by_phase"], out[-4000:])


def test_kills_are_planned_at_points_the_resumed_run_still_reaches(tmp_path):
  train = fi.Reference(20.0, 4.0, 3.0, {"score": (4, 2), "classifier": (4, 2)})
  assert fi.points_left("train", train, str(tmp_path / "none")) == {
      "compile": 2, "step": 8, "checkpoint_write": 4}
  (tmp_path / "t" / "checkpoints" / "score" / "2").mkdir(parents=True)  # score at step 2
  (tmp_path / "t" / "checkpoints" / "score" / "4.orbax-checkpoint-tmp").mkdir()  # not a step
  assert fi.points_left("train", train, str(tmp_path / "t")) == {
      "compile": 2, "step": 2 + 4, "checkpoint_write": 1 + 2}
  evaluation = fi.Reference(15.0, 4.0, 3.0, {"clean": (2, 1), "pgd_clf": (2, 2)})
  unit = tmp_path / "e" / "batches" / "clean" / "h"
  unit.mkdir(parents=True)
  for name in ("00000.npz", "00001.npz.tmp.npz"):  # one stored, one cut short
    (unit / name).write_bytes(b"")
  assert fi.points_left("eval", evaluation, str(tmp_path / "e")) == {
      "compile": 1 + 2, "step": 1 + 2, "batch_store": 1 + 2}
  import random
  rng = random.Random(0)
  for _ in range(50):
    left = {"compile": 0, "step": 1, "batch_store": 0}
    plan = fi.plan_kill(rng, "eval", evaluation, left)
    assert plan["planned"] == "time" or plan["kill_point"].startswith("step:1:")
    if plan["planned"] == "time":  # a quarter of the work left: the first quarter of the run
      assert 4.0 <= plan["kill_after"] <= 4.0 + 11.0 / 4
