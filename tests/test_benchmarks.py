"""Benchmark scripts: they run, print measured numbers, and refuse missing devices in one line."""

import json
import os
import signal
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = ("bench_train.py", "bench_attack_memory.py", "bench_scan_grad.py",
           "bench_attack.py", "bench_conv_floor.py")


def _run(script, *args, timeout=600):
  return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", script), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_missing_gpu_is_one_line_and_exit_2(script):
  out = _run(script, "--quick", "--device", "gpu")
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "no JAX GPU" in lines[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr


# The runnable scripts (the other modules of benchmarks/ are libraries they import).
ALL_SCRIPTS = sorted(f for f in os.listdir(os.path.join(REPO_ROOT, "benchmarks"))
                     if f.endswith(".py") and f.startswith(("bench_", "estimate_", "fault_")))


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_a_bad_flag_is_one_line_and_exit_2(script):
  out = _run(script, "--no_such_flag", timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr[-2000:]
  assert out.stderr.startswith("error:")
  assert "--no_such_flag" in out.stderr or "required: --config" in out.stderr, out.stderr


@pytest.mark.parametrize("variants", ["forward,nope", "scan,scan", ","])
def test_bench_scan_grad_refuses_bad_variants_in_one_line(variants):
  out = _run("bench_scan_grad.py", "--quick", "--variants", variants, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr[-2000:]
  assert out.stderr.startswith("error: --variants")


@pytest.mark.slow  # a benchmark script end to end (minutes on 2 cores)
def test_bench_train_reports_measured_throughput(tmp_path):
  report = tmp_path / "train.json"
  out = _run("bench_train.py", "--quick", "--steps", "2", "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(report.read_text())["results"][0]
  assert r["config"] == "digits" and r["devices"] == 8 and r["timed_steps"] == 2
  assert r["images_per_second"] == pytest.approx(r["global_batch"] / r["median_step_seconds"])
  assert r["xla_flops_per_step"] > 0
  assert f"digits: {r['images_per_second']:.1f} images/s" in out.stdout


@pytest.mark.slow  # a benchmark script end to end (minutes on 2 cores)
def test_bench_attack_memory_grows_far_slower_with_checkpointing(tmp_path):
  report = tmp_path / "memory.json"
  out = _run("bench_attack_memory.py", "--quick", "--steps", "2,6", "--batch", "8",
             "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads(report.read_text())["rows"]
  grow = {tag: rows[1][f"compiled_{tag}"]["temp"] - rows[0][f"compiled_{tag}"]["temp"]
          for tag in ("checkpoint", "no_checkpoint")}
  assert grow["no_checkpoint"] > 10 * max(grow["checkpoint"], 1), grow
  assert "growth per step (checkpoint)" in out.stdout


@pytest.mark.slow  # a benchmark script end to end (minutes on 2 cores)
def test_bench_scan_grad_times_every_variant_and_checkpointing_saves_memory(tmp_path):
  report = tmp_path / "scan.json"
  out = _run("bench_scan_grad.py", "--quick", "--steps", "3", "--batch", "4", "--repeats", "1",
             "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads(report.read_text())["rows"]
  assert len(rows) == 6 and all(r["median_ms"] > 0 and r["compile_s"] > 0 for r in rows.values())
  assert (rows["lax.scan + jax.checkpoint (jaxpure)"]["temp_mib"]
          < rows["lax.scan, no checkpoint"]["temp_mib"])
  for name in rows:
    assert name in out.stdout


@pytest.mark.slow  # a benchmark script end to end (minutes on 2 cores)
def test_bench_diffpure_memory_grows_far_slower_with_remat(tmp_path):
  # Tiny nets, compiled in this one process at LLVM optimisation level 0: the buffer sizes
  # come from XLA's HLO passes, which that level does not change, and compiling is ~3x faster.
  report = tmp_path / "diffpure.json"
  out = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "bench_diffpure_memory.py"),
       "--quick", "--steps", "2,4", "--batch", "2", "--compile_timeout", "0",
       "--json", str(report)],
      capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_backend_optimization_level=0"))
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads(report.read_text())["rows"]
  assert [(r["N"], r["remat"]) for r in rows] == [(2, True), (2, False), (4, True), (4, False)]
  assert all(r["compiled"]["temp"] > 0 and r["compiled"]["compile_s"] > 0 for r in rows)
  grow = {r["remat"]: r["growth_per_step"] for r in rows if r["N"] == 4}
  assert grow[False] > 10 * max(grow[True], 1024), grow
  assert "growth per step (remat)" in out.stdout and "growth per step (no remat)" in out.stdout


@pytest.mark.slow
def test_bench_attack_gradients_agree_and_ratios_are_printed(tmp_path):
  pytest.importorskip("torch")
  report = tmp_path / "attack.json"
  out = _run("bench_attack.py", "--quick", "--batch", "4", "--n_eot", "1", "--max_iter", "2",
             "--repeats", "2", "--check_batch", "2", "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(report.read_text())
  agree = r["agreement_float64"]
  assert agree["noisy_start"] <= 1e-12 and agree["max_abs_gradient"] > 0
  assert agree["pytorch_autograd"] <= 1e-8 and agree["pytorch_autograd_checkpoint"] <= 1e-8
  for name in ("pytorch_autograd", "pytorch_autograd_checkpoint"):
    ratio = r["ratios"][f"jaxpure/{name}"]
    assert ratio["pairs"] == 2 and 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    assert f"ratio jaxpure/{name}: {ratio['median']:.2f} (min-max over 2 pairs" in out.stdout
  assert all(len(v) == 2 and min(v) > 0 for v in r["seconds"].values())
  assert r["jaxpure_compile_s"] > 0
  assert r["out_of_memory"] == {} and r["jaxpure_temp_bytes"] > 0
  assert "memory: jaxpure's compiled temporaries" in out.stdout


def test_run_once_each_leaves_out_what_ran_out_of_memory_and_raises_the_rest():
  sys.path.insert(0, REPO_ROOT)
  from benchmarks import common

  class OutOfMemoryError(RuntimeError):  # the name PyTorch's CUDA out-of-memory error has
    pass

  def oom():
    raise OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 MiB")

  released = []
  outputs, out_of_memory = common.run_once_each(
      {"a": lambda: 1, "b": oom, "c": lambda: 3}, release=lambda: released.append(1))
  assert outputs == {"a": 1, "c": 3} and list(out_of_memory) == ["b"]
  assert "out of memory" in out_of_memory["b"] and released == [1]
  with pytest.raises(ValueError, match="not memory"):
    common.run_once_each({"a": lambda: (_ for _ in ()).throw(ValueError("not memory"))})


@pytest.mark.slow  # a benchmark script end to end (minutes on 2 cores)
def test_bench_attack_differentiates_diffpure_like_pytorch(tmp_path):
  pytest.importorskip("torch")
  report = tmp_path / "attack.json"
  out = _run("bench_attack.py", "--quick", "--config", "configs/digits_diffpure.py",
             "--batch", "3", "--n_eot", "2", "--max_iter", "3", "--repeats", "1",
             "--check_batch", "2", "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(report.read_text())
  assert r["purifier"] == "diffpure" and r["settings"]["num_steps"] == 3
  agree = r["agreement_float64"]
  assert agree["noisy_start"] <= 1e-12 and agree["max_abs_gradient"] > 0
  assert agree["pytorch_autograd"] <= 1e-8 and agree["pytorch_autograd_checkpoint"] <= 1e-8
  for name in ("pytorch_autograd", "pytorch_autograd_checkpoint"):
    assert f"ratio jaxpure/{name}: " in out.stdout
  assert "DDPM++ nf 32" in out.stdout and "diffpure 3 steps" in out.stdout


@pytest.mark.slow
def test_bench_purify_prints_pairwise_ratios_with_their_spread(tmp_path):
  pytest.importorskip("torch")
  report = tmp_path / "purify.json"
  out = _run("bench_purify.py", "--quick", "--batch", "4", "--restarts", "2", "--repeats", "2",
             "--check_batch", "2", "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(report.read_text())
  for name, other in (("pytorch_official_loop", "pytorch_official_loop"),
                      ("pytorch_batched", r["pytorch_batched_is"])):
    ratio = r["ratios"][f"jaxpure/{name}"]
    pairs = [o / j for o, j in zip(r["seconds"][other], r["seconds"]["jaxpure"])]
    assert ratio["pairs"] == 2 and ratio["min"] == min(pairs) and ratio["max"] == max(pairs)
    assert f"ratio jaxpure/{name}: {ratio['median']:.2f} (min-max over 2 pairs" in out.stdout


@pytest.mark.slow  # a benchmark script end to end (a process per setting, minutes on 2 cores)
def test_bench_xla_flags_times_each_setting_and_reports_an_unknown_flag(tmp_path):
  report = tmp_path / "flags.json"
  out = _run("bench_xla_flags.py", "--batch", "2", "--restarts", "2", "--repeats", "1",
             "--rounds", "1", "--flags=--xla_cpu_use_onednn=true",
             "--flags=--xla_cpu_no_such_flag=1", "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(report.read_text())
  base = r["seconds"]["baseline"][0]
  assert base["forward"] > 0 and base["gradient"] > 0
  known = r["ratios"]["--xla_cpu_use_onednn=true forward"]
  assert known["pairs"] == 1 and known["median"] == pytest.approx(
      base["forward"] / r["seconds"]["--xla_cpu_use_onednn=true"][0]["forward"])
  assert r["seconds"]["--xla_cpu_no_such_flag=1"] == [None]
  assert "--xla_cpu_no_such_flag=1: failed" in out.stdout
  assert "ratio baseline/flag gradient [--xla_cpu_use_onednn=true]" in out.stdout
  # each flag's outputs against its round's baseline, output by output; none for a failed process
  (onednn,) = r["outputs_against_baseline"]["--xla_cpu_use_onednn=true"]
  assert set(onednn) == {"purified", "loss", "input_gradient"}
  assert all(v["max_abs_diff"] >= 0 and isinstance(v["identical"], bool) for v in onednn.values())
  assert "--xla_cpu_use_onednn=true against round 1's baseline: purified " in out.stdout
  assert r["outputs_against_baseline"]["--xla_cpu_no_such_flag=1"] == [None]
  assert r["outputs_against_baseline"]["baseline"] == [None]  # one round: nothing to compare


def _save(path, **arrays):
  import numpy as np
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
  return str(path)


def test_bench_xla_flags_compares_a_flags_outputs_with_its_baselines(tmp_path):
  import numpy as np
  from benchmarks.bench_xla_flags import compare_outputs, describe_comparison
  x = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
  base = _save(tmp_path / "base.npz", a=x, b=2 * x)
  assert compare_outputs(base, _save(tmp_path / "same.npz", a=x.copy(), b=2 * x)) == {
      "a": {"identical": True, "max_abs_diff": 0.0},
      "b": {"identical": True, "max_abs_diff": 0.0}}
  y = x.copy()
  y[1, 2] += 0.25
  y[2, 0] -= 0.5  # the largest difference is a negative one
  moved = compare_outputs(base, _save(tmp_path / "moved.npz", a=y, b=2 * x))
  assert moved["a"] == {"identical": False, "max_abs_diff": pytest.approx(0.5)}
  assert moved["b"] == {"identical": True, "max_abs_diff": 0.0}
  # the same non-finite entries: compared over the others; otherwise no difference given
  xb, xo = x.copy(), x.copy()
  xb[0, 0], xo[0, 0], xo[0, 1] = np.inf, np.inf, xo[0, 1] + 0.125
  base_inf = _save(tmp_path / "base_inf.npz", a=xb, b=x)
  both = compare_outputs(base_inf, _save(tmp_path / "both.npz", a=xo, b=x))
  assert both["a"] == {"identical": False, "max_abs_diff": pytest.approx(0.125)}
  flipped = np.where(xb == np.inf, -np.inf, xb)
  signs = compare_outputs(base_inf, _save(tmp_path / "signs.npz", a=flipped, b=x))
  assert signs["a"] == {"identical": False, "max_abs_diff": None}  # +inf against -inf
  one_sided = compare_outputs(base, _save(tmp_path / "one_sided.npz", a=xb, b=2 * x))
  assert one_sided["a"] == {"identical": False, "max_abs_diff": None}
  reshaped = compare_outputs(base, _save(tmp_path / "reshaped.npz", a=x.reshape(4, 3), b=2 * x))
  assert reshaped["a"] == {"identical": False, "max_abs_diff": None}
  assert describe_comparison(one_sided) == "a shapes or non-finite entries differ, b identical"
  assert describe_comparison(moved) == "a max |diff| 5.0e-01, b identical"
  # the same values in another dtype: not identical, no difference
  np.savez(tmp_path / "wider.npz", a=x.astype(np.float64), b=2 * x)
  wider = compare_outputs(base, str(tmp_path / "wider.npz"))
  assert wider["a"] == {"identical": False, "max_abs_diff": 0.0} and wider["b"]["identical"]
  assert "no comparison" in compare_outputs(str(tmp_path / "missing.npz"), base)
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes((tmp_path / "same.npz").read_bytes()[:-10])
  assert compare_outputs(base, str(truncated)).startswith("no comparison")
  assert compare_outputs(base, _save(tmp_path / "other.npz", a=x)).startswith("the outputs differ")


def test_bench_xla_flags_pairs_each_round_with_its_own_baseline(tmp_path, monkeypatch, capsys):
  """main() with the processes replaced: the order rotates, each flag is compared with its
  own round's baseline, a failed baseline leaves its round without comparisons or ratios."""
  import numpy as np
  from benchmarks import bench_xla_flags
  calls = []
  x = np.arange(6, dtype=np.float32)

  def fake_run_setting(args, flag, save):
    name = flag or "baseline"
    r = sum(1 for c in calls if c == name)  # this setting's round
    calls.append(name)
    if name == "baseline" and r == 2:
      return None  # round 3's baseline fails
    if name == "--b" and r == 1:
      return None  # and round 2's flag b
    shift = {"baseline": 0.0, "--a": 0.0, "--b": 0.25 * (r + 1)}[name]
    _save(save, purified=x + 10 * r + shift, loss=x, input_gradient=-x)
    return {"forward": {"baseline": 2.0, "--a": 1.0, "--b": 4.0}[name] * (r + 1),
            "gradient": 3.0}

  monkeypatch.setattr(bench_xla_flags, "run_setting", fake_run_setting)
  report = tmp_path / "r.json"
  assert bench_xla_flags.main(["--rounds", "3", "--flags=--a", "--flags=--b",
                               "--json", str(report)]) == 0
  assert calls == ["baseline", "--a", "--b", "--a", "--b", "baseline", "--b", "baseline", "--a"]
  r = json.loads(report.read_text())
  out = r["outputs_against_baseline"]
  same = {"identical": True, "max_abs_diff": 0.0}
  # round 1: a equals its baseline, b is 0.25 off; round 2 (baselines now 10 higher): a equals
  # round 2's baseline (not round 1's), b failed; round 3: no baseline to compare with
  assert out["--a"] == [{"purified": same, "loss": same, "input_gradient": same}] * 2 + [None]
  assert out["--b"][0]["purified"] == {"identical": False, "max_abs_diff": 0.25}
  assert out["--b"][0]["loss"] == same and out["--b"][1:] == [None, None]
  # the baselines of later rounds against round 1's: 10 off, and failed
  assert out["baseline"][0] is None and out["baseline"][2] is None
  assert out["baseline"][1]["purified"] == {"identical": False, "max_abs_diff": 10.0}
  assert r["ratios"]["--a forward"]["pairs"] == 2
  assert r["ratios"]["--a forward"]["median"] == pytest.approx(2.0)
  assert r["ratios"]["--b forward"]["pairs"] == 1
  assert r["ratios"]["--b forward"]["median"] == pytest.approx(0.5)
  printed = capsys.readouterr().out
  assert ("round 1 --b against round 1's baseline: purified max |diff| 2.5e-01, loss identical"
          in printed)
  assert "round 2 baseline against round 1's baseline: purified max |diff| 1.0e+01" in printed


def test_bench_xla_flags_checks_later_baselines_against_the_first_that_ran(tmp_path, monkeypatch):
  import numpy as np
  from benchmarks import bench_xla_flags
  calls = []

  def fake_run_setting(args, flag, save):
    name = flag or "baseline"
    calls.append(name)
    if name == "baseline" and calls.count(name) == 1:
      return None  # round 1's baseline fails
    _save(save, purified=np.ones(3), loss=np.zeros(2), input_gradient=np.ones(3))
    return {"forward": 1.0, "gradient": 1.0}

  monkeypatch.setattr(bench_xla_flags, "run_setting", fake_run_setting)
  report = tmp_path / "r.json"
  assert bench_xla_flags.main(["--rounds", "3", "--flags=--a", "--json", str(report)]) == 0
  out = json.loads(report.read_text())["outputs_against_baseline"]
  same = {"identical": True, "max_abs_diff": 0.0}
  assert out["baseline"] == [None, None, {"purified": same, "loss": same, "input_gradient": same}]
  assert out["--a"][0] is None and out["--a"][1]["loss"] == same and out["--a"][2]["loss"] == same


@pytest.mark.slow  # a benchmark script end to end (a minute on 2 cores)
@pytest.mark.parametrize("config_name,minimum", [("digits", 50), ("digits_diffpure", 15)])
def test_bench_conv_floor_lists_every_convolution_of_the_network(tmp_path, config_name, minimum):
  import importlib

  import jax
  from jaxpure import model_specs
  config = importlib.import_module(f"configs.{config_name}").get_config()
  x1 = jax.numpy.zeros((1,) + model_specs.image_shape(config))
  params = model_specs.SCORE.init(model_specs.SCORE.build(config), jax.random.key(0), x1)
  conv_kernels = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                  if jax.tree_util.keystr(path).endswith("['kernel']") and leaf.ndim == 4]
  report = tmp_path / "floor.json"
  out = _run("bench_conv_floor.py", "--config", f"configs/{config_name}.py", "--batch", "4",
             "--repeats", "1", "--no-torch", "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(report.read_text())
  # every convolution module of the network, each read once from the jaxpr
  assert sum(row["count"] for row in r["convolutions"]) == len(conv_kernels) > minimum
  assert all(row["forward_ms"] >= 0 and row["input_grad_ms"] >= 0 for row in r["convolutions"])
  assert any(row["forward_ms"] > 0 for row in r["convolutions"])
  assert r["network"]["forward_ms"] > 0 and r["network"]["input_grad_ms"] > 0
  assert "network forward:" in out.stdout and "checkpointed exact-gradient" in out.stdout


@pytest.mark.slow  # a benchmark script end to end, with PyTorch (a minute on 2 cores)
def test_bench_conv_floor_gives_the_floors_at_pytorchs_speed(tmp_path):
  pytest.importorskip("torch")
  report = tmp_path / "floor.json"
  out = _run("bench_conv_floor.py", "--quick", "--batch", "4", "--repeats", "1",
             "--json", str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(report.read_text())
  for layout in ("nchw", "channels_last"):
    timed = [row for row in r["convolutions"] if f"torch_{layout}_input_grad_ms" in row]
    # the digits net has a PyTorch time for every convolution
    assert r[f"convolutions_without_torch_{layout}_time"] == 0 and len(timed) == len(
        r["convolutions"])
    fwd = sum(row["count"] * row[f"torch_{layout}_forward_ms"] for row in timed)
    grad = sum(row["count"] * row[f"torch_{layout}_input_grad_ms"] for row in timed)
    assert fwd > 0 and grad > 0
    assert r[f"checkpointed_gradient_floor_torch_{layout}_ms"] == pytest.approx(2 * fwd + grad)
    assert r[f"autograd_floor_torch_{layout}_ms"] == pytest.approx(fwd + grad)
  assert out.stdout.count("at these speeds: a checkpointed evaluation's convolutions") == 2


def test_bench_conv_floor_refuses_a_bad_batch_in_one_line():
  out = _run("bench_conv_floor.py", "--quick", "--batch", "0")
  assert out.returncode == 2
  assert [l for l in out.stderr.splitlines() if l.strip()] == [
      "error: --batch and --repeats must be >= 1 (see --help)"], out.stderr


@pytest.mark.parametrize("args,message", [
    (("--config", "configs/no_such_config.py"), "--config configs/no_such_config.py: no such file"),
    (("--config", "configs/__init__.py"), "cannot load --config configs/__init__.py"),
    (("--quick", "--config", "configs/digits.py"), "--quick and --config: give one")])
def test_bench_conv_floor_refuses_a_bad_config_in_one_line(args, message):
  out = _run("bench_conv_floor.py", *args, "--no-torch")
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), out.stderr


def test_bench_xla_flags_refuses_a_missing_config_in_one_line():
  out = _run("bench_xla_flags.py", "--config", "configs/no_such_config.py", timeout=120)
  assert out.returncode == 2
  assert [l for l in out.stderr.splitlines() if l.strip()] == [
      "error: --config configs/no_such_config.py: no such file (see --help)"], out.stderr


@pytest.mark.slow  # compiles the gradient under two policies (minutes on 2 cores)
def test_bench_attack_times_each_remat_policy(tmp_path):
  pytest.importorskip("torch")
  report = tmp_path / "attack.json"
  out = _run("bench_attack.py", "--quick", "--batch", "4", "--n_eot", "1", "--max_iter", "3",
             "--repeats", "1", "--check_batch", "0", "--remat", "none,step", "--json",
             str(report))
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(report.read_text())
  policies = r["remat_policies"]
  assert {i["policy"] for i in policies.values()} == {"none", "step"}
  # keeping every step's activations takes more compiled memory than recomputing each step
  assert policies["jaxpure_none"]["temp_bytes"] > policies["jaxpure_step"]["temp_bytes"]
  for j in ("jaxpure_none", "jaxpure_step"):
    for name in ("pytorch_autograd", "pytorch_autograd_checkpoint"):
      assert r["ratios"][f"{j}/{name}"]["pairs"] == 1
      assert f"ratio {j}/{name}:" in out.stdout
    assert policies[j]["flops"] > 0 and r["achieved_flops"][j]["flop_per_s"] > 0
  assert "ratio jaxpure_none/jaxpure_step:" in out.stdout


@pytest.mark.slow  # every part of the GPU suite at tiny sizes on the CPU (several minutes)
def test_gpu_suite_runs_every_part_at_tiny_sizes_on_the_cpu(tmp_path):
  pytest.importorskip("torch")
  out_json = tmp_path / "suite.json"
  proc = subprocess.Popen(
      [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "gpu_suite.py"), "--tiny",
       "--device", "cpu", "--out", str(out_json), "--cache_dir", str(tmp_path / "cache")],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu"), start_new_session=True)
  try:  # ~8 min on an idle 2-core machine
    stdout, stderr = proc.communicate(timeout=1800)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # the suite and the benchmarks it started
    proc.communicate()
    raise
  out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
  assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
  suite = json.loads(out_json.read_text())
  parts = suite["parts"]
  assert list(parts) == ["compile_ahead", "purify_adp", "purify_diffpure", "gradient_adp",
                         "gradient_diffpure"]
  assert all(p["status"] == "ok" for p in parts.values()), {k: p["tail"] for k, p in
                                                            parts.items()}
  assert len(parts["compile_ahead"]["reports"]) == 6
  for fam in ("adp", "diffpure"):
    rep = parts[f"gradient_{fam}"]["reports"][f"gradient_{fam}"]
    temp = {i["policy"]: i["temp_bytes"] for i in rep["remat_policies"].values()}
    assert temp["none"] >= temp["save_convolutions"] >= temp["step"], (fam, temp)
    assert temp["none"] > temp["step"], (fam, temp)
    assert rep["ratios"]["jaxpure_none/pytorch_autograd"]["pairs"] == 1
  adp = parts["purify_adp"]["reports"]["purify_adp"]
  assert "jaxpure/pytorch_batched" in adp["ratios"]
  dp = parts["purify_diffpure"]["reports"]["purify_diffpure"]
  # the same noise on both sides: the purified images agree to float32 rounding
  assert dp["float32_max_abs_diff_not_checked"] < 1e-4
  assert dp["ratios"]["jaxpure/pytorch_batched"]["pairs"] == 1
  assert "total wall time" in out.stdout and "gradient_diffpure" in out.stdout
