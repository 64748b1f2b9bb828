"""train.py as a user runs it: outputs of a tiny run, SIGTERM, and one-line errors (exit 2)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest
from conftest import copy_workdir, subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMOKE = "configs/smoke.py"  # the digits config at test size


def run_train(*args, timeout=600):
  return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained_workdir(smoke_run, tmp_path_factory):
  """(a copy of the session's smoke run workdir, its train.py process)."""
  return copy_workdir(smoke_run[0], tmp_path_factory.mktemp("run") / "w"), smoke_run[1]


def test_tiny_run_writes_every_output(trained_workdir):
  workdir, proc = trained_workdir
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [(r["model"], r["step"]) for r in records] == [
      ("score", 2), ("score", 4), ("classifier", 2), ("classifier", 4)]
  for r in records:
    assert {"step", "model", "loss", "steps_per_sec"} <= set(r) and r["steps_per_sec"] > 0
  summary = json.loads((workdir / "summary.json").read_text())
  assert 0 <= summary["classifier"]["test_accuracy"] <= 1
  gain = summary["score"]["denoise_psnr_gain_db"]
  assert gain == pytest.approx(summary["score"]["denoised_psnr_db"]
                               - summary["score"]["noisy_psnr_db"])
  assert summary["score"]["noisy_psnr_db"] == pytest.approx(12.04, abs=0.3)  # sigma 0.25
  for png in ("denoising.png", "samples.png"):
    assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(workdir / "checkpoints")) == ["classifier", "score"]
  assert "ETA" in proc.stdout and "[score] step 4/4" in proc.stdout


def test_rerun_of_finished_run_resumes_without_training(trained_workdir):
  workdir, _ = trained_workdir
  proc = run_train("--config", SMOKE, "--workdir", str(workdir))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resumed from" in proc.stdout and "step 2/4" not in proc.stdout


@pytest.mark.slow  # the library's refusal is tested fast in test_training.py; this one runs the CLI
def test_checkpoint_of_another_model_is_one_line_error(trained_workdir):
  workdir, _ = trained_workdir
  proc = run_train("--config", SMOKE, "--workdir", str(workdir), "--config.score.ngf=8")
  assert_one_line_error(proc, "another model", "ngf")


def test_sigterm_saves_and_exits_zero(tmp_path):
  args = [sys.executable, "train.py", "--config", SMOKE, "--workdir",
          str(tmp_path), "--config.score.num_steps=100000", "--models=score"]
  proc = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  metrics = tmp_path / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and metrics.read_text()):
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "interrupted at step" in out
  steps = [int(d) for d in os.listdir(tmp_path / "checkpoints" / "score") if d.isdigit()]
  assert steps and max(steps) >= 2


@pytest.mark.parametrize("override,fragment", [
    ("--config.score.nope=1", "nope"),
    ("--config.score.num_steps=abc", "num_steps"),
    ("--config.score.head=bogus", "head"),
    ("--config.score.batch_size=12", "batch_size"),  # 12 does not split over 8 devices
])
def test_bad_config_is_one_line_error(override, fragment, tmp_path):
  proc = run_train("--config", "configs/digits.py", "--workdir", str(tmp_path), override)
  assert_one_line_error(proc, fragment)


def test_a_config_setting_the_old_diffpure_sde_is_refused_in_one_line(tmp_path):
  """The VP-SDE is config.sde alone: a config that still sets config.purifiers.diffpure.beta_*
  is refused (one line naming the key and config.sde, exit 2), never read."""
  path = tmp_path / "old_diffpure.py"
  path.write_text("from configs import digits_diffpure\n\n\ndef get_config():\n"
                  "  config = digits_diffpure.get_config()\n"
                  "  config.purifiers.diffpure.beta_max = 20.0\n  return config\n")
  proc = run_train("--config", str(path), "--workdir", str(tmp_path / "run"))
  assert_one_line_error(proc, "config.purifiers.diffpure.beta_max", "config.sde.beta_max")


def test_missing_config_file_is_one_line_error(tmp_path):
  proc = run_train("--config", "configs/nope.py", "--workdir", str(tmp_path))
  assert_one_line_error(proc, "nope.py")


def test_unprepared_cifar10_says_how_to_prepare(tmp_path):
  env_dir = tmp_path / "empty_tfds"
  env_dir.mkdir()
  proc = subprocess.run([sys.executable, "train.py", "--config", "configs/cifar10.py"],
                        cwd=REPO, env=dict(subprocess_env(), TFDS_DATA_DIR=str(env_dir)),
                        capture_output=True, text=True, timeout=300)
  assert_one_line_error(proc, "cifar10", "prepare it with", "python -m jaxpure.datasets.prepare")


def test_unwritable_workdir_is_one_line_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  proc = run_train("--config", SMOKE, "--workdir", str(blocker / "sub"))
  assert_one_line_error(proc, "cannot write to workdir")


@pytest.mark.slow  # the library-level NaN test (test_training) stays in the default suite
def test_nan_loss_is_one_line_error_and_saves_no_non_finite_checkpoint(tmp_path):
  proc = run_train("--config", SMOKE, "--workdir", str(tmp_path),
                   "--models=score", "--config.score.lr=inf")
  assert_one_line_error(proc, "non-finite")
  assert not [d for d in os.listdir(tmp_path / "checkpoints" / "score") if d.isdigit()]


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_help_exits_zero_and_is_current(script):
  from jaxpure import attacks, purifiers
  from jaxpure.jobs.evaluation import pictures
  for flag in ("--help", "--helpfull"):
    proc = subprocess.run([sys.executable, script, flag], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", (flag, proc.returncode, proc.stderr)
    assert "--[no]show_config" in proc.stdout and "--config" in proc.stdout, proc.stdout
  short = subprocess.run([sys.executable, script, "--help"], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120).stdout
  assert "--helpfull to get a list of all flags" in short  # the short help lists show_config
  if script == "evaluate.py":
    for name in attacks.ATTACKS:
      assert f" {name}," in short or f" {name}." in short or f",{name}" in short, name
    for output in ("report.json", "reports/", *pictures.NAMES):
      assert output in short, output
    for family in purifiers.names():
      assert purifiers.get(family).NAME.lower() in short.lower(), family


# ----------------------------------------------------------------------------- evaluate.py
EVAL_TINY = ["--num_examples=20", "--config.eval.batch_size=16"]


def run_evaluate(*args, timeout=600):
  return subprocess.run([sys.executable, "evaluate.py", *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def test_evaluate_writes_report_and_pictures(trained_workdir):
  workdir, _ = trained_workdir
  proc = run_evaluate("--config", SMOKE, "--workdir", str(workdir),
                      *EVAL_TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[eval] clean: batch 2/2" in proc.stdout and "all units: ETA" in proc.stdout
  report = json.loads((workdir / "eval" / "report.json").read_text())
  assert report["num_examples"] == 20
  for key in ("clean_accuracy", "defended_clean_accuracy", "single_restart_accuracy",
              "noise_only_accuracy"):
    assert 0 <= report[key] <= 1
  assert report["robust_accuracy"] == {}
  assert set(report["defended_accuracy_by_readout"]) == {"mean_softmax", "mean_logits",
                                                         "majority_vote"}
  assert report["defended_clean_accuracy"] == report["defended_accuracy_by_readout"]["mean_softmax"]
  assert len(report["accuracy_by_step"]) == 4
  assert report["accuracy_by_step"][0] == report["noise_only_accuracy"]
  assert report["accuracy_by_step"][-1] == report["defended_clean_accuracy"]
  assert len(report["alpha_by_step"]) == 3
  assert report["settings"]["defense"]["restarts"] == 2
  assert report["settings"]["defense"]["settings"]["sigma_n"] == 0.25
  t = report["timings"]["clean"]
  assert t["compile_seconds_this_run"] > 0 and t["seconds"] > 0 and t["images_per_second"] > 0
  assert report["versions"]["jax"] == jax.__version__ and report["device"]["count"] == 8
  for png in ("purification.png", "steps.png"):
    assert (workdir / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_without_checkpoints_is_one_line_error(tmp_path):
  proc = run_evaluate("--config", SMOKE, "--workdir", str(tmp_path))
  assert_one_line_error(proc, "no score checkpoint", "train first")


def test_evaluate_with_another_model_is_one_line_error(trained_workdir):
  workdir, _ = trained_workdir
  proc = run_evaluate("--config", SMOKE, "--workdir", str(workdir),
                      "--config.classifier.width=16")
  assert_one_line_error(proc, "another model", "width")


@pytest.mark.parametrize("override,fragment", [
    ("--config.purifiers.adp.sigma_n=-0.1", "sigma_n"),
    ("--config.purifiers.adp.max_iter=0", "max_iter"),
    ("--config.defense.restarts=0", "restarts"), ("--config.purifiers.adp.lam=0.0", "lam")])
def test_evaluate_bad_settings_are_one_line_errors(trained_workdir, override, fragment):
  workdir, _ = trained_workdir
  proc = run_evaluate("--config", SMOKE, "--workdir", str(workdir), override)
  assert_one_line_error(proc, fragment)


def _tiny_config():
  from configs import smoke
  config = smoke.get_config()
  config.attack.sweep_eps = (0.5,)
  config.attack.sweep_n_eot = 1
  config.attack.batch_size = 8
  config.eval.batch_size = 8
  return config


@pytest.mark.slow  # a search and two evaluations with exact-gradient attacks
def test_automatic_budget_is_searched_on_other_examples_and_sets_the_exact_attacks(
    trained_workdir, tmp_path):
  """config.eval.budget = "auto": the search runs on the examples after the reported ones,
  its every comparison is in the report, the exact-gradient attacks run at the chosen budget
  (APGD one step fewer: its start is a gradient too), and one line says whether it converged.
  "fixed" keeps the configured budgets and says that convergence was not checked."""
  from jaxpure.jobs import evaluation
  from jaxpure.jobs.evaluation import budget
  workdir, _ = trained_workdir
  config = _tiny_config()
  config.eval.update(budget="auto", budget_examples=16, max_gradients_per_image=16)
  lines = []
  report = evaluation.evaluate(config, str(workdir), ["pgd_eot_full", "apgd_eot",
                                                     "pgd_eot_inloop"], 8,
                               print_fn=lines.append, output_dir=str(tmp_path / "auto"))
  search = report["budget_search"]
  assert search["examples"] == {"first": 8, "count": 16}
  assert report["budget_status"] == search["status"] in (budget.CONVERGED, budget.CAP_REACHED)
  chosen = search["chosen"]
  assert chosen["gradients_per_image"] <= 16 and search["points"]
  first = search["points"][0]
  assert (first["from"]["num_steps"], first["from"]["n_eot"], first["to"]["num_steps"]) == (
      2, 2, 4)  # from the configured budget (smoke: 2 steps x EOT 2)
  for row in search["points"]:
    assert 0 <= row["p_value"] <= 1 and row["still_helps"] == (row["p_value"] < 0.05)
  settings = report["attacks"]
  assert (settings["pgd_eot_full"]["settings"]["num_steps"],
          settings["pgd_eot_full"]["settings"]["n_eot"]) == (chosen["num_steps"],
                                                             chosen["n_eot"])
  assert settings["apgd_eot"]["settings"]["num_steps"] == chosen["num_steps"] - 1
  assert settings["pgd_eot_inloop"]["settings"]["num_steps"] == chosen["num_steps"]
  # the headline covers every attack, the in-loop one included
  assert report["robust_accuracy_worst_case"] <= min(report["robust_accuracy"].values())
  assert sum(l.startswith("[eval] budget ") for l in lines) == 2  # after the search, at the end
  assert any(f"budget {search['status']} at" in l for l in lines)
  config.eval.update(budget="fixed", fixed_noise=True)
  fixed = evaluation.evaluate(config, str(workdir), ["pgd_eot_full"], 8, print_fn=lines.append,
                              output_dir=str(tmp_path / "fixed"))
  assert fixed["budget_search"] is None and fixed["budget_status"] == "fixed"
  section = fixed["fixed_noise"]  # its own section, not among the attacks or the headline
  assert 0 <= section["robust_accuracy"] <= 1 and "fixed" in section["threat_model"]
  assert set(fixed["robust_accuracy"]) == {"pgd_eot_full"}
  assert fixed["attacks"]["pgd_eot_full"]["settings"]["num_steps"] == 2
  assert "convergence not checked" in lines[-1]


def _assert_worst_case_is_the_stored_runs(report, eval_dir, attacks):
  """The report's worst case over attacks against a NumPy union of each attack's stored
  scoring runs (defended_correct [runs, batch] per stored batch)."""
  import numpy as np
  runs = {}
  for name in attacks:
    (unit_dir,) = (eval_dir / "batches" / name).iterdir()  # one set of settings
    batches = sorted(unit_dir.glob("*.npz"))
    runs[name] = np.concatenate([np.load(p)["defended_correct"] for p in batches], axis=-1)
    assert runs[name].shape[-1] == report["num_examples"]
    assert report["robust_accuracy"][name] == pytest.approx(runs[name].mean(), abs=1e-12)
  per_example = np.logical_and.reduce(list(runs.values())).mean(0)  # right against all, per run
  assert report["robust_accuracy_worst_case"] == pytest.approx(per_example.mean(), abs=1e-12)
  assert report["robust_accuracy_worst_case_standard_error"] == pytest.approx(
      per_example.std(ddof=1) / np.sqrt(per_example.size), abs=1e-12)
  assert report["worst_case"]["broken_by"] == {
      name: int((r.mean(0) < 0.5).sum()) for name, r in runs.items()}


def test_budget_doubling_seeds_its_stores_with_the_checked_evaluation_s_batches(tmp_path):
  """Every stored file beside the report (EVAL/report.json or EVAL/reports/report_*.json) is
  linked into both of the check's stores, files already there are kept, unfinished writes are
  skipped, and an output inside the batches is refused."""
  from benchmarks import budget_doubling
  unit = tmp_path / "eval" / "batches" / "pgd_eot_full" / "abc"
  unit.mkdir(parents=True)
  for name, text in (("unit.json", "{}"), ("00000.npz", "a"), ("00001.npz", "b"),
                     ("00002.npz.tmp.npz", "c")):
    (unit / name).write_text(text)
  (tmp_path / "eval" / "reports").mkdir()
  kept = tmp_path / "check" / "doubled" / "batches" / "pgd_eot_full" / "abc" / "00000.npz"
  kept.parent.mkdir(parents=True)
  kept.write_text("mine")
  report = tmp_path / "eval" / "reports" / "report_x.json"
  assert budget_doubling.seed_batches(str(report), str(tmp_path / "check")) == 5
  for which in ("chosen", "doubled"):
    there = tmp_path / "check" / which / "batches" / "pgd_eot_full" / "abc"
    assert sorted(p.name for p in there.iterdir()) == ["00000.npz", "00001.npz", "unit.json"]
    assert os.path.samefile(there / "00001.npz", unit / "00001.npz")
  assert kept.read_text() == "mine"
  assert budget_doubling.seed_batches(str(tmp_path / "eval" / "report.json"),
                                      str(tmp_path / "check")) == 0  # all there already
  assert budget_doubling.seed_batches(str(tmp_path / "nowhere" / "report.json"),
                                      str(tmp_path / "check")) == 0
  with pytest.raises(ValueError, match="inside"):
    budget_doubling.seed_batches(str(report), str(unit.parent / "check"))


@pytest.mark.slow  # three evaluations with exact-gradient attacks
def test_budget_doubling_check_reruns_the_chosen_budget_and_twice_it(trained_workdir, tmp_path):
  """benchmarks/budget_doubling.py: at the chosen budget it reproduces the evaluation's own
  worst case (same examples and keys), and its paired test is that of the two reports'
  per-example worst cases."""
  from benchmarks import budget_doubling
  from jaxpure import statistics
  from jaxpure.jobs import evaluation
  workdir, _ = trained_workdir
  config = _tiny_config()
  config.eval.update(budget="auto", budget_examples=8, max_gradients_per_image=8)
  attacks = ["pgd_clf", "pgd_eot_full"]
  report = evaluation.evaluate(config, str(workdir), attacks, 8, print_fn=lambda s: None,
                               output_dir=str(tmp_path / "eval"))
  steps, n_eot = budget_doubling.budgets(report)
  assert (steps, n_eot) == (report["budget_search"]["chosen"]["num_steps"],
                            report["budget_search"]["chosen"]["n_eot"])
  out = tmp_path / "check"
  assert budget_doubling.main(["--config", SMOKE, "--workdir", str(workdir), "--report",
                               str(tmp_path / "eval" / "report.json"), "--num_examples", "8",
                               "--output", str(out)]) == 0
  result = json.loads((out / "budget_doubling.json").read_text())
  assert result["chosen_budget"] == [steps, n_eot] and result["doubled_budget"] == [2 * steps,
                                                                                     n_eot]
  assert result["worst_case_chosen"] == pytest.approx(report["robust_accuracy_worst_case"])
  doubled = json.loads((out / "doubled" / "report.json").read_text())
  assert doubled["attacks"]["pgd_eot_full"]["settings"]["num_steps"] == 2 * steps
  # The evaluation's stored batches were linked into the check's stores and read there, not
  # recomputed (a recomputed batch is a new file): at the chosen budget every unit's, at
  # twice it the blind attack's.
  def batches(root):
    return {p.relative_to(root) for p in (root / "batches").glob("*/*/*.npz")}
  stored = batches(tmp_path / "eval")
  assert {p.parts[1] for p in stored} >= {"clean", "pgd_clf", "pgd_eot_full"}
  assert batches(out / "chosen") == stored  # nothing computed at the chosen budget
  for p in stored:
    assert os.path.samefile(tmp_path / "eval" / p, out / "chosen" / p), p
  computed = batches(out / "doubled") - stored  # at twice it: only the doubled attack
  assert computed and {p.parts[1] for p in computed} == {"pgd_eot_full"}
  assert all(os.path.samefile(tmp_path / "eval" / p, out / "doubled" / p) for p in stored)
  # Budget curves are not part of the check: none even where the config asks for them.
  curves_config = _tiny_config()
  curves_config.eval.budget_examples = 8
  checked = budget_doubling.run(curves_config, str(workdir), ["pgd_eot_full"], 8, 1, 1,
                                str(tmp_path / "no_curves"), lambda s: None)
  assert not checked.get("budget_curves")
  test = statistics.paired_budget_test(report["worst_case"]["per_example"],
                                       doubled["worst_case"]["per_example"])
  assert (result["broken_more"], result["broken_fewer"]) == (test["broken_more"],
                                                             test["broken_fewer"])


@pytest.mark.slow  # four attacks and a sweep: the heaviest default test (CI runs it with -m slow)
def test_interrupted_evaluation_resumes_to_the_same_report(trained_workdir, tmp_path):
  import shutil
  from jaxpure.jobs import evaluation
  workdir, _ = trained_workdir
  config = _tiny_config()
  attacks = ["pgd_clf", "bpda_eot", "pgd_eot_full", "apgd_eot"]
  quiet = lambda s: None
  full = evaluation.evaluate(config, str(workdir), attacks, 20, sweep=True, print_fn=quiet)
  assert set(full["robust_accuracy"]) == set(attacks)
  _assert_worst_case_is_the_stored_runs(full, workdir / "eval", attacks)
  assert len(full["eps_sweep"]["pgd_eot_full"]) == 1
  for png in ("adversarial.png", "eps_sweep.png"):
    assert (workdir / "eval" / png).exists()
  shutil.rmtree(workdir / "eval")

  class Crash(Exception):
    pass

  def crash_after_first(unit, batch):
    if unit == "apgd_eot" and batch == 0:  # after the other attacks' batches
      raise Crash
  with pytest.raises(Crash):
    evaluation.evaluate(config, str(workdir), attacks, 20, sweep=True, print_fn=quiet,
                          after_batch=crash_after_first)
  assert not (workdir / "eval" / "report.json").exists()
  done = []
  resumed = evaluation.evaluate(config, str(workdir), attacks, 20, sweep=True, print_fn=quiet,
                                  after_batch=lambda u, b: done.append((u, b)))
  for finished in (("clean", 0), ("bpda_eot", 0), ("bpda_eot", 1), ("apgd_eot", 0)):
    assert finished not in done  # skipped, not redone (apgd_eot's settings hold tuples)
  assert ("apgd_eot", 1) in done
  strip = lambda r: {k: v for k, v in r.items() if k not in ("timings", "attacks")}
  assert strip(resumed) == strip(full)
  for name in attacks:
    assert resumed["attacks"][name]["settings"] == full["attacks"][name]["settings"]


def _plain_pgd_clf(trained_workdir, tmp_path):
  from jaxpure.jobs import evaluation
  return evaluation.evaluate(_tiny_config(), str(trained_workdir[0]), ["pgd_clf"], 8,
                             print_fn=lambda s: None, output_dir=str(tmp_path / "plain"))


@pytest.mark.slow  # a whole evaluation with an attack (about 40 s)
def test_attacks_run_no_eps_sweep_unless_asked(trained_workdir, tmp_path):
  plain = _plain_pgd_clf(trained_workdir, tmp_path)
  assert plain["eps_sweep"] == {}
  assert not [u for u in plain["timings"] if u.startswith("sweep_")]


@pytest.mark.slow  # the sweep compiles the exact-gradient attack
def test_the_eps_sweep_runs_when_asked_and_reuses_the_attack(trained_workdir, tmp_path):
  from jaxpure.jobs import evaluation
  config = _tiny_config()
  plain = _plain_pgd_clf(trained_workdir, tmp_path)
  swept = evaluation.evaluate(config, str(trained_workdir[0]), ["pgd_clf"], 8, sweep=True,
                              print_fn=lambda s: None, output_dir=str(tmp_path / "swept"))
  assert len(swept["eps_sweep"]["pgd_eot_full"]) == len(config.attack.sweep_eps)
  assert swept["robust_accuracy"] == plain["robust_accuracy"]  # the same attack, reused keys


@pytest.mark.slow  # an evaluation with a two-point sweep
def test_an_evaluation_compiles_each_attack_and_scoring_program_once(trained_workdir, tmp_path):
  """The sweep's points share their attack's program (eps, step size and steps are inputs),
  and every attack unit with the same scoring runs shares one scoring program: pgd_clf with a
  two-point sweep of pgd_eot_full and pgd_clf compiles the clean unit, pgd_clf's attack and
  scoring, and the pgd_eot_full sweep's attack, once each."""
  from jaxpure.jobs import evaluation
  config = _tiny_config()
  config.attack.sweep_eps = (0.1, 0.5)
  config.attack.pgd_clf.n_eot = 1  # as the sweep's blind attack (a static setting)
  config.eval.scoring_runs = 1  # as the sweep's scoring
  lines = []
  report = evaluation.evaluate(config, str(trained_workdir[0]), ["pgd_clf"], 8, sweep=True,
                               print_fn=lines.append, output_dir=str(tmp_path / "eval"))
  compiled = [line.removeprefix("[eval] ").removesuffix(" ...") for line in lines
              if line.startswith("[eval] ") and " compiling" in line]
  assert compiled == ["clean: compiling", "pgd_clf: compiling",
                      "pgd_clf: compiling the scoring", "sweep_pgd_eot_full_eps0.100000: compiling"]
  assert [len(report["eps_sweep"][n]) for n in ("pgd_eot_full", "pgd_clf")] == [2, 2]


def test_sigterm_during_evaluation_says_how_to_resume(trained_workdir, tmp_path):
  workdir, _ = trained_workdir
  proc = subprocess.Popen([sys.executable, "evaluate.py", "--config", SMOKE, "--workdir",
                           str(workdir), "--output", str(tmp_path / "eval"), "--attacks",
                           "pgd_eot_full"], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not (tmp_path / "eval" / "batches").exists():
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert "interrupted by SIGTERM" in err and "run the same command again to resume" in err
  assert "Traceback" not in err


def test_workdir_trained_with_another_optimizer_still_evaluates(trained_workdir, tmp_path):
  from jaxpure.jobs import evaluation
  config = _tiny_config()
  config.classifier.update(optimizer="sgd", weight_decay=0.1, grad_clip=1.0, lr=0.5)
  config.score.update(grad_clip=0.0, weight_decay=0.01, beta1=0.5)
  report = evaluation.evaluate(config, str(trained_workdir[0]), [], 8,
                               print_fn=lambda s: None, output_dir=str(tmp_path / "eval"))
  assert report["num_examples"] == 8 and 0 <= report["clean_accuracy"] <= 1
