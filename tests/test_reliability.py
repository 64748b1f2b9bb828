"""Reliability (issue 14): damaged checkpoints, broken config files, a read-only workdir,
honest progress lines, labelled pictures, and evaluation results that are never stale or lost.

One smoke run, train.py's (conftest's `smoke_run`, shared with the CLI tests), serves the
whole module; tests that damage or retrain work on copies of it. The CLIs run as subprocesses
only where their one-line error and exit 2 are what is tested.
"""

import glob
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from jaxpure import checkpoint, data, images, model_specs, parallel, plots, training
from jaxpure.errors import (CheckpointDamagedError, ConfigError, NonFiniteLossError,
                            WorkdirError)
from jaxpure.jobs import evaluation, loading, train as train_job
from jaxpure.jobs.evaluation import pictures
from conftest import copy_workdir, subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "configs/smoke.py"
N_EVAL = 20  # evaluation examples: 3 batches of 8


def _run(script, *args, timeout=600):
  return subprocess.run([sys.executable, script, *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc) -> str:
  """The single "error:" line of a CLI that must have exited 2 without a traceback."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def _eval_config():
  config = smoke.get_config()
  config.eval.batch_size = 8
  return config


class _Recorder:
  """Wraps images.save_grid: records each call's file name, labels and title."""

  def __init__(self):
    self.calls, self._real = {}, images.save_grid

  def __enter__(self):
    def record(path, rows, *args, **kwargs):
      self.calls[os.path.basename(path)] = dict(rows=len(rows), **kwargs)
      return self._real(path, rows, *args, **kwargs)
    images.save_grid = record
    return self

  def __exit__(self, *exc):
    images.save_grid = self._real


@pytest.fixture(scope="module")
def trained(smoke_run, tmp_path_factory):
  """(workdir, printed lines) of one smoke run: both models, 4 steps each, checkpoints at
  steps 2 and 4 (a copy of the session's)."""
  workdir = copy_workdir(smoke_run[0], tmp_path_factory.mktemp("trained") / "w")
  return workdir, smoke_run[1].stdout.splitlines()


# ----------------------------------------------------------------------------- damaged checkpoints
def _data_files(step_dir):
  return sorted(f for f in glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True)
                if os.path.isfile(f))


def _damage(step_dir, how: str) -> str:
  """Damages checkpoint folder `step_dir` in one of the ways of issue 14; returns the path the
  error must name (a file, or the folder whose files are damaged)."""
  if how == "truncated_data":  # every data file of the OCDBT store cut in half
    for f in _data_files(step_dir):
      os.truncate(f, os.path.getsize(f) // 2)
    return str(step_dir / "state")
  if how == "overwritten_data":  # bytes in the middle of every data file overwritten
    for f in _data_files(step_dir):
      with open(f, "r+b") as h:
        h.seek(os.path.getsize(f) // 2)
        h.write(b"\xff" * 64)
    return str(step_dir / "state")
  if how == "truncated_manifest":
    path = step_dir / "state" / "manifest.ocdbt"
    os.truncate(path, 10)
    return str(path)
  if how == "garbled_metadata":
    path = step_dir / "metadata" / "metadata"
    path.write_text('{"format": 2, "kind": "sco')
    return str(path)
  if how == "missing_state":
    shutil.rmtree(step_dir / "state")
    return str(step_dir / "state")
  raise ValueError(how)


def _params_of(state_or_variables):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state_or_variables))]


@pytest.mark.slow  # two training runs; the evaluation-side damage tests stay in the default suite
def test_training_continues_from_the_older_checkpoint_when_the_latest_is_damaged(
    trained, tmp_path):
  # One end-to-end case (a few seconds of compiling and restoring); the other kinds of damage
  # are told apart by the same code, tested below for evaluation and the train CLI.
  how = "overwritten_data"
  workdir = copy_workdir(trained[0], tmp_path / "w")
  named = _damage(workdir / "checkpoints" / "score" / "4", how)
  config, mesh = smoke.get_config(), parallel.make_mesh()
  lines = []
  state, completed = train_job.train_model(
      model_specs.SCORE, config, str(workdir), data.open_split("digits", "train"),
      jax.random.fold_in(jax.random.key(config.seed), 0), mesh, should_stop=lambda: False,
      print_fn=lines.append)
  assert completed and int(state.step) == 4
  warnings = [l for l in lines if "warning" in l]
  assert len(warnings) == 1, lines
  assert "is damaged" in warnings[0] and named in warnings[0], warnings[0]
  assert "continuing from the older checkpoint at step 2" in warnings[0]
  assert any("resumed from" in l and "at step 2" in l for l in lines), lines
  # The damaged folder is kept aside, not deleted, and step 4 was written again...
  moved = os.listdir(workdir / "checkpoints" / "damaged" / "score")
  assert len(moved) == 1 and moved[0].startswith("4-"), moved
  assert checkpoint.checkpoint_steps(str(workdir / "checkpoints" / "score")) == [2, 4]
  # ...bit-exactly as in the undamaged run (resuming from step 2 replays steps 3 and 4).
  again = loading.load_model(model_specs.SCORE, config, str(workdir), mesh)
  first = loading.load_model(model_specs.SCORE, config, str(trained[0]), mesh)
  assert again.step == 4 and again.fingerprint == first.fingerprint


# TensorStore may finish a failed read after orbax closed its event loop: harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", ["truncated_data", "overwritten_data", "truncated_manifest",
                                 "garbled_metadata", "missing_state"])
def test_evaluation_names_the_damaged_file_and_the_older_checkpoint_to_use(
    trained, tmp_path, how):
  workdir = copy_workdir(trained[0], tmp_path / "w")
  step_dir = workdir / "checkpoints" / "score" / "4"
  named = _damage(step_dir, how)
  mesh = parallel.make_mesh()
  # Evaluation checks every saved part, also those it does not use (the optimizer state).
  with pytest.raises(CheckpointDamagedError) as e:
    loading.load_model(model_specs.SCORE, _eval_config(), str(workdir), mesh)
  message = str(e.value)
  assert "\n" not in message and f"checkpoint {step_dir} is damaged" in message, message
  assert named in message, message
  assert "--checkpoint_step score=2" in message, message
  if how == "missing_state":  # the advice works: the older checkpoint is evaluated
    older = loading.load_defense_models(_eval_config(), str(workdir), mesh, steps={"score": 2})
    assert older["score"].step == 2 and older["classifier"].step == 4


def _alter_checksum(workdir, kind, part):
  """Changes the checksum saved for `part` of checkpoint 4, as if its stored bytes had
  changed."""
  path = workdir / "checkpoints" / kind / "4" / "metadata" / "metadata"
  metadata = json.loads(path.read_text())
  assert set(metadata["checksums"]) >= {"ema_params", "params", "opt_state", "step"}
  metadata["checksums"][part] = "0" * 64
  path.write_text(json.dumps(metadata))


# Evaluation uses only the EMA parameters and model state, and checks every part as training
# does (training restores all of them, and calls each mismatch damage).
@pytest.mark.parametrize("part", ["ema_params", "step", "opt_state", "params"])
def test_arrays_that_differ_from_their_saved_checksum_are_damage(trained, tmp_path, part):
  workdir = copy_workdir(trained[0], tmp_path / "w")
  _alter_checksum(workdir, "classifier", part)
  with pytest.raises(CheckpointDamagedError, match="checksum") as e:
    loading.load_model(model_specs.CLASSIFIER, _eval_config(), str(workdir),
                       parallel.make_mesh())
  assert f"the arrays of {part!r}" in str(e.value)
  assert "--checkpoint_step classifier=2" in str(e.value)
  checkpointer = train_job.checkpointer(model_specs.CLASSIFIER, _eval_config(), str(workdir))
  state = train_job.init_train_state(model_specs.CLASSIFIER, _eval_config(),
                                     model_specs.CLASSIFIER.build(_eval_config()),
                                     jax.random.key(0), parallel.make_mesh())
  with pytest.raises(CheckpointDamagedError, match=f"the arrays of {part!r}"):
    checkpointer.restore(state, 4)  # what training calls damaged, evaluation does too
  checkpointer.close()


def test_evaluate_cli_on_an_altered_step_checksum_is_one_line_exit_2(trained, tmp_path):
  workdir = copy_workdir(trained[0], tmp_path / "w")
  _alter_checksum(workdir, "score", "step")
  line = _one_line_error(_run("evaluate.py", "--config", SMOKE, "--workdir", str(workdir),
                              "--num_examples=8", "--output", str(tmp_path / "out")))
  assert f"checkpoint {workdir}/checkpoints/score/4 is damaged" in line, line
  assert "'step'" in line and "--checkpoint_step score=2" in line, line
  assert not (tmp_path / "out" / "report.json").exists()


def test_train_cli_without_a_restorable_checkpoint_is_one_line_exit_2(trained, tmp_path):
  """Training tells a garbled metadata JSON and a missing state folder for damage too."""
  workdir = copy_workdir(trained[0], tmp_path / "w")
  named = _damage(workdir / "checkpoints" / "score" / "4", "garbled_metadata")
  _damage(workdir / "checkpoints" / "score" / "2", "missing_state")
  line = _one_line_error(_run("train.py", "--config", SMOKE, "--workdir", str(workdir),
                              "--models=score"))
  assert named in line and "damaged too" in line, line
  # Nothing was moved or deleted when no checkpoint restores.
  assert sorted(os.listdir(workdir / "checkpoints" / "score")) == ["2", "4"]
  assert not (workdir / "checkpoints" / "damaged").exists()


def test_evaluate_cli_on_a_damaged_checkpoint_is_one_line_exit_2(trained, tmp_path):
  workdir = copy_workdir(trained[0], tmp_path / "w")
  named = _damage(workdir / "checkpoints" / "score" / "4", "truncated_manifest")
  line = _one_line_error(_run("evaluate.py", "--config", SMOKE, "--workdir", str(workdir),
                              "--num_examples=8"))
  assert named in line and "--checkpoint_step score=2" in line, line
  bad = _one_line_error(_run("evaluate.py", "--config", SMOKE, "--workdir", str(workdir),
                             "--checkpoint_step=score=latest"))
  assert "--checkpoint_step" in bad, bad


@pytest.mark.slow  # 34 s: a whole CLI evaluation; the flag's refusals stay in the default suite
def test_evaluate_cli_checkpoint_step_evaluates_the_older_checkpoint(trained, tmp_path):
  workdir = copy_workdir(trained[0], tmp_path / "w")
  _damage(workdir / "checkpoints" / "score" / "4", "garbled_metadata")
  proc = _run("evaluate.py", "--config", SMOKE, "--workdir", str(workdir), "--num_examples=8",
              "--checkpoint_step=score=2", "--output", str(tmp_path / "out"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["networks"]["score"]["step"] == 2
  assert report["networks"]["classifier"]["step"] == 4


# ----------------------------------------------------------------------------- config files
BAD_CONFIGS = {
    "syntax": ("def get_config(:\n  pass\n", 1, "SyntaxError"),
    "import": ("import jaxpure_no_such_module\n\ndef get_config():\n  return None\n", 1,
               "ModuleNotFoundError"),
    "name": ("from configs import digits\n\n\ndef get_config():\n  config = digits.get_config()\n"
             "  config.score.lr = learning_rate\n  return config\n", 6, "NameError"),
    "get_config_raises": ("def get_config():\n  raise ValueError('no such preset')\n", 2,
                          "ValueError"),
}


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_broken_config_file_is_one_line_with_file_line_and_error(tmp_path, script, kind):
  text, line_no, error = BAD_CONFIGS[kind]
  path = tmp_path / f"bad_{kind}.py"
  path.write_text(text)
  line = _one_line_error(_run(script, "--config", str(path), "--workdir", str(tmp_path / "w")))
  assert f"{path}, line {line_no}: {error}" in line, line


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_config_file_without_get_config_is_one_line(tmp_path, script):
  path = tmp_path / "no_get_config.py"
  path.write_text("LR = 0.1\n")
  line = _one_line_error(_run(script, f"--config={path}", "--workdir", str(tmp_path / "w")))
  assert str(path) in line and "defines no get_config()" in line, line
  assert "override" not in line, line


# ----------------------------------------------------------------------------- read-only workdir
def _snapshot(root) -> dict:
  """{relative path: (kind, mode, mtime_ns, content hash)} of everything under root."""
  found = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.lstat(path)
      digest = None
      if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      found[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_mtime_ns,
                                            digest)
  return found


@pytest.fixture(scope="module")
def first_eval(trained, tmp_path_factory):
  """The first evaluation of the trained run, made on a read-only workdir with --output:
  (workdir, output dir, report, printed lines, snapshots of the workdir before and after)."""
  workdir = copy_workdir(trained[0], tmp_path_factory.mktemp("ro") / "w")
  out = tmp_path_factory.mktemp("eval_out")
  before = _snapshot(workdir)
  modes = {}
  for dirpath, dirnames, filenames in os.walk(workdir):
    for name in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
      modes[name] = os.stat(name).st_mode
  for path, mode in modes.items():
    os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
  try:
    lines = []
    report = evaluation.evaluate(_eval_config(), str(workdir), (), N_EVAL, print_fn=lines.append,
                                 output_dir=str(out))
  finally:
    for path, mode in sorted(modes.items(), reverse=True):
      os.chmod(path, mode)
  after = _snapshot(workdir)
  return workdir, out, report, lines, before, after


def test_evaluate_on_a_read_only_workdir_with_output_writes_nothing_into_it(first_eval):
  workdir, out, report, _, before, after = first_eval
  # As root, chmod does not stop writes: compare every entry's mode, mtime and content.
  assert after == before
  assert not (workdir / "eval").exists()
  assert report["num_examples"] == N_EVAL
  for name in ("report.json", "purification.png", "steps.png"):
    assert (out / name).exists(), name


def test_evaluate_on_an_empty_workdir_creates_nothing_in_it(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(WorkdirError, match="no score checkpoint"):
    evaluation.evaluate(_eval_config(), str(empty), (), 8, print_fn=lambda s: None,
                        output_dir=str(tmp_path / "out"))
  assert os.listdir(empty) == []


def test_evaluate_without_output_on_an_unwritable_workdir_says_pass_output(trained, tmp_path):
  workdir = copy_workdir(trained[0], tmp_path / "w")
  # A file where the default output folder goes stops root too (read-only permissions do not).
  (workdir / "eval").write_text("not a folder")
  with pytest.raises(WorkdirError, match=r"cannot write the evaluation to '.*/w/eval'.*; pass "
                                         r"--output DIR"):
    evaluation.evaluate(_eval_config(), str(workdir), (), 8, print_fn=lambda s: None)
  assert (workdir / "eval").read_text() == "not a folder"
  if os.geteuid() != 0:  # read-only permissions, where they hold
    (workdir / "eval").unlink()
    os.chmod(workdir, 0o555)
    try:
      with pytest.raises(WorkdirError, match="--output"):
        evaluation.evaluate(_eval_config(), str(workdir), (), 8, print_fn=lambda s: None)
    finally:
      os.chmod(workdir, 0o755)


# ----------------------------------------------------------------------------- progress lines
def test_training_prints_compiling_before_the_first_step(trained):
  lines = trained[1]
  for model in ("score", "classifier"):
    mine = [l for l in lines if l.startswith(f"[{model}]")]
    assert "compiling" in mine[0], mine
    assert any("compiled; step 1 took" in l for l in mine), mine
    assert mine.index(next(l for l in mine if " step 2/4" in l)) > 0


class _FakeCheckpointer:
  def __init__(self, latest=None):
    self.latest = latest

  def latest_step(self):
    return self.latest

  def should_save(self, step):
    return False

  def save(self, step, state, force=False):
    self.latest = step
    return True

  def wait(self):
    pass


def _fake_loop(first_step_seconds, finite=True, grad_clip=0.0, latest=None, num_steps=6):
  """train_loop over a fake step that takes `first_step_seconds` once (a compile), then ~0."""
  calls = []

  def step(state, batch, key):
    if not calls:
      time.sleep(first_step_seconds)
    calls.append(1)
    metrics = {"loss": jnp.float32(1.0), "finite": jnp.bool_(finite)}
    return state.replace(step=state.step + 1), metrics

  state = training.TrainState(step=jnp.int32(0), params={}, model_state={}, opt_state=(),
                              ema_params={}, ema_state=())
  lines = []
  training.train_loop(model="score", state=state, train_step=step, batches=lambda i: None,
                      key=jax.random.key(0), num_steps=num_steps,
                      checkpointer=_FakeCheckpointer(latest), log_every=2,
                      log_metrics=lambda r: None, print_fn=lines.append, grad_clip=grad_clip)
  return lines


def test_eta_counts_only_steps_after_the_compiling_first_one():
  lines = _fake_loop(first_step_seconds=3.0)
  assert lines[0].startswith("[score] compiling")
  assert "step 1 took 3." in lines[1], lines
  first_log = next(l for l in lines if "step 2/6" in l)
  # 4 steps left at ~0 s each; counting the 3 s first step would say ETA 0m06s.
  assert first_log.endswith("ETA 0m00s"), first_log


@pytest.mark.parametrize("grad_clip,latest", [(0.0, None), (1.0, None), (1.0, 2)])
def test_nan_message_says_what_was_kept_and_fitting_advice(grad_clip, latest):
  with pytest.raises(NonFiniteLossError) as e:
    _fake_loop(first_step_seconds=0.0, finite=False, grad_clip=grad_clip, latest=latest)
  message = str(e.value)
  assert "None" not in message, message
  if latest is None:
    assert "no checkpoint was saved yet" in message, message
  else:
    assert f"kept at step {latest}" in message, message
  if grad_clip:
    assert "enable" not in message and "grad_clip=1" in message, message
  else:
    assert "enable gradient clipping" in message, message


def test_num_steps_zero_without_a_checkpoint_is_refused(tmp_path):
  config = smoke.get_config()
  config.score.num_steps = 0
  with pytest.raises(ConfigError, match="num_steps=0"):
    train_job.run(config, str(tmp_path / "w"), ("score",), print_fn=lambda s: None)
  assert not (tmp_path / "w" / "checkpoints").exists()


# ----------------------------------------------------------------------------- labelled pictures
def _ink_bands(png) -> list[tuple[int, int]]:
  """Runs of pixel rows that hold dark pixels (text), top to bottom."""
  import matplotlib.image
  img = matplotlib.image.imread(png)[..., :3].mean(-1)
  inked = (img < 0.5).any(axis=1)
  bands, start = [], None
  for y, on in enumerate(list(inked) + [False]):
    if on and start is None:
      start = y
    elif not on and start is not None:
      bands.append((start, y))
      start = None
  return bands


def test_grid_labels_and_title_are_drawn(tmp_path):
  white = np.ones((8, 8, 8, 1), np.float32)  # white images: every dark pixel is text
  labels = ["clean", "noised, restart 1", "purified, restart 1"]
  path = images.save_grid(str(tmp_path / "g.png"), [white] * 3, row_labels=labels,
                          title="a title")
  assert len(_ink_bands(path)) == 1 + len(labels)  # the title, then one band per row label
  with pytest.raises(ValueError, match="labels"):
    images.save_grid(str(tmp_path / "h.png"), [white] * 3, row_labels=labels[:2])


def test_training_pictures_are_labelled(trained, tmp_path):
  workdir = copy_workdir(trained[0], tmp_path / "w")
  for name in ("denoising.png", "samples.png"):
    (workdir / name).unlink()
  with _Recorder() as pictures_made:  # a finished run run again: no step, the summary anew
    assert train_job.run(smoke.get_config(), str(workdir), print_fn=lambda s: None)
  calls = pictures_made.calls
  assert calls["denoising.png"]["row_labels"] == ["clean", "noised σ=0.25",
                                                  "denoised (one step)"]
  assert "samples" in calls["samples.png"]["title"]
  for name in ("denoising.png", "samples.png"):
    assert (workdir / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluation_pictures_are_labelled(trained, tmp_path):
  config = _eval_config()
  mesh = parallel.make_mesh()
  loaded = loading.load_defense_models(config, str(trained[0]), mesh)
  params = {k: m.variables for k, m in loaded.items()}
  split = data.open_split("digits", "test")
  x, _ = data.read_all(split, 8)
  attacked = {name: np.clip(x + 0.1 * i, 0, 1) for i, name in
              enumerate(["pgd_clf", "pgd_eot_full"], 1)}
  steps = config.purifiers.adp.max_iter
  report = {"accuracy_by_step": [0.5] * (steps + 1), "clean_accuracy": 0.6,
            "attacks": {n: {} for n in attacked}, "robust_accuracy": {"pgd_clf": 0.3,
                                                                      "pgd_eot_full": 0.2},
            "undefended_robust_accuracy": 0.1, "settings": {"eps": 0.2, "norm": "linf"},
            "eps_sweep": {"pgd_eot_full": [{"eps": e, "defended_accuracy": a,
                                            "bare_accuracy": b}
                                           for e, a, b in [(0.1, .5, .2), (0.5, 0., 0.)]]}}
  mask = np.ones((config.defense.restarts, steps, 8), bool)
  with _Recorder() as rec:
    pictures.write_all(str(tmp_path), evaluation.settings.read(config),
                       evaluation.make_defense(config), params, split,
                       jax.random.key(0), report, {"alpha": np.full(mask.shape, 0.01)}, mask,
                       attacked)
  assert rec.calls["purification.png"]["row_labels"] == [
      "clean", "noised, restart 1", "purified, restart 1", "noised, restart 2",
      "purified, restart 2"]
  assert rec.calls["adversarial.png"]["row_labels"] == [
      "clean", "pgd_clf adversarial", "pgd_clf purified", "pgd_eot_full adversarial",
      "pgd_eot_full purified"]
  for name in ("purification.png", "adversarial.png", "steps.png", "eps_sweep.png"):
    assert (tmp_path / name).exists(), name
  # Attacks without --sweep: no eps_sweep.png (a one-point "sweep" says nothing).
  report["eps_sweep"] = {}
  (tmp_path / "no_sweep").mkdir()
  written = pictures.write_all(str(tmp_path / "no_sweep"), evaluation.settings.read(config),
                               evaluation.make_defense(config), params, split, jax.random.key(0),
                               report, {"alpha": np.full(mask.shape, 0.01)}, mask, attacked)
  assert sorted(os.listdir(tmp_path / "no_sweep")) == sorted(written) == [
      "adversarial.png", "purification.png", "steps.png"]


def test_eps_sweep_tick_labels_do_not_collide_and_no_marker_hides_another():
  import matplotlib.pyplot as plt
  rows = [{"eps": e, "defended_accuracy": a, "bare_accuracy": b} for e, a, b in
          [(0.05, .93, .5), (0.1, .82, .3), (0.2, .34, .04), (0.3, .1, .0), (0.5, 0., 0.)]]
  robust = {"pgd_clf": .238, "bpda_eot": .223, "pgd_eot_full": .219, "apgd_eot": .238}
  fig = plots.eps_sweep_figure({"pgd_eot_full": rows, "pgd_clf": rows}, robust, 0.2, 0.04)
  try:
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True)
              if t.get_visible() and t.get_text()]
    assert [t.get_text() for t in labels] == ["0.05", "0.1", "0.2", "0.3", "0.5"]
    boxes = [t.get_window_extent(renderer) for t in labels]
    for a, b in zip(boxes, boxes[1:]):
      assert a.x1 < b.x0, (a, b)
    # The points at eps (4 attacks, two with equal accuracy, and the undefended one) stand
    # apart: no two markers share a position.
    points = [tuple(np.round(np.ravel(l.get_xydata())[:2], 6)) for l in ax.get_lines()
              if len(l.get_xdata()) == 1]
    assert len(points) == 5 and len(set(points)) == 5, points
  finally:
    plt.close(fig)


# ----------------------------------------------------------------------------- evaluation store
def _files(root) -> dict:
  """{relative path: content hash} of the files under root."""
  return {k: v[3] for k, v in _snapshot(root).items() if v[3] is not None}


def test_a_retrained_classifier_is_evaluated_not_the_stored_results(first_eval, tmp_path):
  workdir0, out0, first, _, _, _ = first_eval
  workdir, out = copy_workdir(workdir0, tmp_path / "w"), tmp_path / "out"
  shutil.copytree(out0, out)
  # Retrain the classifier into the same workdir, to the same step, with another lr.
  shutil.rmtree(workdir / "checkpoints" / "classifier")
  config = _eval_config()
  config.classifier.lr = 0.05
  mesh = parallel.make_mesh()
  _, completed = train_job.train_model(
      model_specs.CLASSIFIER, config, str(workdir), data.open_split("digits", "train"),
      jax.random.fold_in(jax.random.key(config.seed), 1), mesh, should_stop=lambda: False,
      print_fn=lambda s: None)
  assert completed
  new = loading.load_model(model_specs.CLASSIFIER, config, str(workdir), mesh)
  assert new.step == first["networks"]["classifier"]["step"]
  x, y = data.read_all(data.open_split("digits", "test"), N_EVAL)
  own = float(np.mean(np.argmax(model_specs.logits_fn(config)(new.variables, jnp.asarray(x)),
                                -1) == y))
  assert own != first["clean_accuracy"], "the scenario needs a classifier of other accuracy"
  lines = []
  report = evaluation.evaluate(config, str(workdir), (), N_EVAL, print_fn=lines.append,
                               output_dir=str(out))
  assert report["clean_accuracy"] == pytest.approx(own)
  assert report["networks"]["classifier"]["fingerprint"] == new.fingerprint
  assert report["networks"]["classifier"]["fingerprint"] != (
      first["networks"]["classifier"]["fingerprint"])
  assert not any("clean: reusing" in l for l in lines), lines


def test_an_evaluation_with_other_settings_keeps_the_first_ones_results(first_eval, tmp_path):
  workdir, out0, first, _, _, _ = first_eval
  out = tmp_path / "out"
  shutil.copytree(out0, out)
  kept = {k: v for k, v in _files(out).items()
          if k.startswith("batches") or k.startswith("reports")}
  assert any(k.startswith("reports") for k in kept) and any(k.endswith(".npz") for k in kept)
  second = evaluation.evaluate(_eval_config(), str(workdir), (), 12, print_fn=lambda s: None,
                               output_dir=str(out))
  assert second["num_examples"] == 12
  now = _files(out)
  for path, digest in kept.items():
    assert now.get(path) == digest, f"{path} was removed or changed"
  reports = sorted(r for r in os.listdir(out / "reports") if r.endswith(".json"))
  assert len(reports) == 2, reports
  by_n = {json.loads((out / "reports" / r).read_text())["num_examples"]:
          r[len("report_"):-len(".json")] for r in reports}
  assert set(by_n) == {N_EVAL, 12}
  assert json.loads((out / "report.json").read_text())["num_examples"] == 12
  # Each run's pictures are kept beside its report; the plain names are the latest run's.
  assert sorted(os.listdir(out / "reports")) == sorted(
      [f"report_{h}.json" for h in by_n.values()] +
      [f"{name}_{h}.png" for name in ("purification", "steps") for h in by_n.values()])
  for name in ("purification", "steps"):
    first_png = (out0 / f"{name}.png").read_bytes()
    assert (out / "reports" / f"{name}_{by_n[N_EVAL]}.png").read_bytes() == first_png
    assert (out / "reports" / f"{name}_{by_n[12]}.png").read_bytes() == (
        out / f"{name}.png").read_bytes()


def test_pictures_of_an_earlier_run_do_not_stand_beside_a_later_report(first_eval, tmp_path):
  workdir, out0, _, _, _, _ = first_eval
  out = tmp_path / "out"
  shutil.copytree(out0, out)
  for name in ("adversarial.png", "eps_sweep.png", "budget.png"):  # as if from an attack run
    shutil.copyfile(out / "steps.png", out / name)
  report = evaluation.evaluate(_eval_config(), str(workdir), (), N_EVAL, print_fn=lambda s: None,
                               output_dir=str(out))
  assert report["robust_accuracy"] == {}
  assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["purification.png",
                                                                       "steps.png"]


def test_a_damaged_stored_batch_is_recomputed_with_a_warning(first_eval, tmp_path):
  workdir, out0, first, _, _, _ = first_eval
  out = tmp_path / "out"
  shutil.copytree(out0, out)
  stored = sorted(glob.glob(str(out / "batches" / "clean" / "*" / "*.npz")))
  assert len(stored) == 3, stored
  os.truncate(stored[0], os.path.getsize(stored[0]) // 2)
  with open(stored[1], "wb") as f:
    f.write(b"not an npz file")
  lines = []
  again = evaluation.evaluate(_eval_config(), str(workdir), (), N_EVAL, print_fn=lines.append,
                              output_dir=str(out))
  warned = [l for l in lines if l.startswith("[eval] warning")]
  assert len(warned) == 2 and all("recomputing" in l for l in warned), lines
  assert stored[0] in warned[0] and stored[1] in warned[1]
  same = lambda r: {k: v for k, v in r.items() if k not in ("timings",)}  # noqa: E731
  assert same(again) == same(first)
  for path in stored[:2]:
    with np.load(path) as z:  # rewritten whole
      assert "clean" in z.files


def test_only_closed_loop_callback_reports_are_dropped(monkeypatch):
  """The hook installed around checkpoint reads drops asyncio's "Event loop is closed" from
  call_soon_threadsafe (TensorStore finishing after a failed read) and passes on the rest."""
  import asyncio
  import types
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpoint._quiet_closed_loop_callbacks()
  checkpoint._quiet_closed_loop_callbacks()  # idempotent: one filter, not a chain of them
  loop = asyncio.new_event_loop()
  loop.close()
  reports = []
  for fn in (lambda: loop.call_soon_threadsafe(print), lambda: 1 / 0,
             lambda: (_ for _ in ()).throw(RuntimeError("Event loop is closed"))):
    try:
      fn()
    except Exception as e:  # noqa: BLE001
      reports.append(types.SimpleNamespace(exc_type=type(e), exc_value=e,
                                           exc_traceback=e.__traceback__, err_msg=None,
                                           object=None))
  for r in reports:
    sys.unraisablehook(r)
  assert [type(r.exc_value) for r in seen] == [ZeroDivisionError, RuntimeError]
  assert seen[1] is reports[2]


def test_straggling_damage_reports_are_dropped_and_other_errors_kept(monkeypatch):
  """After a failed checkpoint read, the other reads' damage errors surface from abandoned
  coroutines (unraisable) and futures (asyncio's "exception was never retrieved" log): both
  are dropped; any other error from them is still reported."""
  import asyncio
  import logging
  import types
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  logger = logging.getLogger("asyncio")
  monkeypatch.setattr(logger, "filters", [])
  checkpoint._quiet_closed_loop_callbacks()
  checkpoint._quiet_closed_loop_callbacks()  # idempotent
  assert len(logger.filters) == 1
  damage = ValueError('OUT_OF_RANGE: Error reading Byte range [0, 5770) of local file "/w/d/1"')

  async def _read_array_index_and_device_put():
    return None

  coroutine = _read_array_index_and_device_put()
  other = ZeroDivisionError("division by zero")
  for exc in (damage, other):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc,
                                             exc_traceback=None, err_msg=None,
                                             object=coroutine))
  coroutine.close()
  assert [r.exc_value for r in seen] == [other]

  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger.addHandler(handler)
  try:
    loop = asyncio.new_event_loop()
    for exc in (damage, other):
      loop.default_exception_handler({"message": "Future exception was never retrieved",
                                      "exception": exc})
    loop.close()
  finally:
    logger.removeHandler(handler)
  assert [r.exc_info[1] for r in records] == [other]
