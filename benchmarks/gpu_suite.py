"""One prepared GPU run: every CIFAR-10-size measurement in one call of at most 9 minutes.

  python benchmarks/gpu_suite.py --device gpu --out suite.json --cache_dir /tmp/jcache
  python benchmarks/gpu_suite.py --tiny --device cpu --out suite.json   # the CPU smoke run

Parts, each a fresh process under its own time limit (a part cut off by its limit is reported
as such; the next one starts), in this order:
- compile_ahead: jaxpure's exact EOT gradients (ADP and DiffPure, each remat policy) compiled
  by parallel processes (`bench_attack.py --compile_only`) into the compilation cache, so the
  gradient parts below load them instead of compiling one after the other (the earlier GPU
  loans spent most of their time in 40-140 s compiles, RESULTS.md);
- purify_adp: `bench_purify.py`: the ADP purifier against batched PyTorch (B = 100, R = 10);
- purify_diffpure: DiffPure's purification against PyTorch's loop over the same batch of
  restarts, with the same noise (`purify_diffpure` below);
- gradient_adp, gradient_diffpure: `bench_attack.py` with `--remat none,save_convolutions,step`:
  the exact EOT gradient under each policy against PyTorch autograd and with per-step
  checkpointing, the compiled temporary memory per policy, PyTorch's peak allocation, and the
  achieved FLOP/s (XLA's cost analysis) against the device's peak.
- certify_diffpure (only when named in --parts; not in the default run, whose limits fill the
  budget): `bench_certify.py` on configs/cifar10_diffpure.py: certification throughput (noise
  samples/s through the one-shot diffusion denoiser and the WRN) against eager PyTorch.
The float64 agreement checks are skipped in the gradient parts (`--check_batch 0`; they passed
in all three earlier GPU runs and run in the CPU tests); purify_adp keeps a one-image check.

Expected wall time per part on an H100, from the earlier GPU figures (RESULTS.md):
EXPECTED_S below; the limits (LIMITS_S) add a margin; the default parts' sum to at most 540 s.
Writes one JSON (--out) with each part's status, wall time, limit and the JSON report of the
benchmark it ran, and prints a table. --cache_dir sets JAX's persistent compilation cache
and XLA's GPU autotuning cache (a second run in the same directory skips the compiles).
Bad input prints one line on stderr and exits 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks import common  # noqa: E402
from benchmarks.common import fail  # noqa: E402

PARTS = ("compile_ahead", "purify_adp", "purify_diffpure", "gradient_adp", "gradient_diffpure")
#: Parts run only when --parts names them.
OPTIONAL_PARTS = ("certify_diffpure",)
POLICIES = "none,save_convolutions,step"
#: Expected seconds per part on an H100 (process start-up ~15 s each included):
#: compile_ahead: the CIFAR ADP gradient compiled in 84 s (scan gradient, H100) to 137 s (the
#:   attack's gradient, H200), DiffPure's N = 10 gradient in 70 s (H200); six compiles in
#:   parallel processes on 16 cores, the slowest ~140 s;
#: purify_adp: compile 18.6 s, a round (jaxpure 1.7 s + PyTorch batched 4.5 s + official loop
#:   4.9 s) x 3 (warm-up + 2), the one-image float64 check ~35 s (51 s for four);
#: purify_diffpure: DDPM++ nf 128 forward scan compile ~25 s (unmeasured: ADP's NCSNv2 took
#:   15-20 s), rounds of well under a second;
#: gradient_adp / gradient_diffpure: three cached loads (a few s each), PyTorch's first calls,
#:   3 rounds of ~2 s (0.25 s jaxpure, 0.59 s autograd, 1.0 s checkpointed at n = 2, H200).
EXPECTED_S = {"compile_ahead": 150, "purify_adp": 95, "purify_diffpure": 45,
              "gradient_adp": 60, "gradient_diffpure": 70,
              "certify_diffpure": 90}  # unmeasured: compile ~40 s, 8 x 500 samples per call
LIMITS_S = {"compile_ahead": 170, "purify_adp": 110, "purify_diffpure": 60,
            "gradient_adp": 95, "gradient_diffpure": 100, "certify_diffpure": 120}
TOTAL_BUDGET_S = 540


def parse_args(argv=None):
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--device", default="gpu", choices=("cpu", "gpu"))
  p.add_argument("--tiny", action="store_true",
                 help="digits configs at tiny sizes (the CPU smoke run; no time limits)")
  p.add_argument("--parts", default=",".join(PARTS),
                 help=f"comma-separated, of {PARTS + OPTIONAL_PARTS} (default: all but "
                      f"{', '.join(OPTIONAL_PARTS)})")
  p.add_argument("--out", default="gpu_suite.json", help="the JSON written (default %(default)s)")
  p.add_argument("--cache_dir", default=None,
                 help="persistent compilation and autotuning cache directory (default: a new "
                      "temporary one, so compile_ahead still helps within the run)")
  p.add_argument("--budget_s", type=float, default=TOTAL_BUDGET_S,
                 help="wall seconds for all parts together (default %(default)s)")
  p.add_argument("--part", default=None, help=argparse_suppress())  # internal
  p.add_argument("--json", default=None, help=argparse_suppress())  # internal
  args = p.parse_args(argv)
  args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
  bad = [x for x in args.parts if x not in PARTS + OPTIONAL_PARTS]
  if bad or not args.parts:
    fail(f"--parts {','.join(args.parts)}: expected names from {PARTS + OPTIONAL_PARTS}")
  if not args.budget_s > 0:
    fail(f"--budget_s={args.budget_s}; expected > 0")
  return args


def argparse_suppress():
  import argparse
  return argparse.SUPPRESS


# ----------------------------------------------------------------------------- the commands
def _sizes(tiny: bool) -> dict:
  if tiny:
    return {"adp": ["--quick", "--batch", "2", "--n_eot", "1", "--max_iter", "2"],
            "diffpure": ["--quick", "--config", "configs/digits_diffpure.py", "--batch", "2",
                         "--n_eot", "1", "--max_iter", "2"],
            "purify": ["--quick", "--batch", "4", "--restarts", "2", "--repeats", "1",
                       "--check_batch", "1", "--torch_compile", "off"],
            "diffpure_purify": {"config": "configs/digits_diffpure.py", "batch": 2,
                                "restarts": 2, "num_steps": 2, "repeats": 1},
            "certify": ["--quick", "--config", "configs/digits_diffpure.py", "--batch", "2",
                        "--n", "6", "--chunk", "4", "--repeats", "1", "--check_batch", "1",
                        "--check_samples", "3"],
            "repeats": "1"}
  # ADP at n = 1: "none" keeps every step's activations (about 25 GiB at B = 16, T = 10,
  # 16 purifications; 50 GiB at n = 2, RESULTS.md), and PyTorch's autograd needs as much
  # beside JAX's pool on an 80 GB card. DiffPure at B = 8, n = 1, N = 10: "none" compiles to
  # 35 GB at B = 16 (RESULTS.md, "through DiffPure versus N"), so about 18 GB here.
  return {"adp": ["--batch", "16", "--n_eot", "1"],
          "diffpure": ["--config", "configs/cifar10_diffpure.py", "--batch", "8", "--n_eot",
                       "1", "--max_iter", "10"],
          "purify": ["--torch_compile", "off", "--check_batch", "1", "--repeats", "2"],
          "diffpure_purify": {"config": "configs/cifar10_diffpure.py", "batch": 16,
                              "restarts": 4, "num_steps": 10, "repeats": 2},
          "certify": ["--config", "configs/cifar10_diffpure.py", "--batch", "8", "--n", "500",
                      "--chunk", "250", "--repeats", "2", "--check_batch", "1",
                      "--check_samples", "3"],
          "repeats": "2"}


def commands(args, json_dir: str) -> dict:
  """{part: [argv, ...]}: the processes of each part (several run in parallel)."""
  py, bench = sys.executable, os.path.join(REPO_ROOT, "benchmarks")
  sz = _sizes(args.tiny)
  dev = ["--device", args.device]
  grad = lambda fam: [py, os.path.join(bench, "bench_attack.py"), *dev, *sz[fam]]  # noqa: E731
  out = {}
  for part in args.parts:
    j = lambda name="": ["--json", os.path.join(json_dir, f"{part}{name}.json")]  # noqa: E731
    if part == "compile_ahead":
      out[part] = [grad(fam) + ["--compile_only", "--check_batch", "0", "--remat", p]
                   + j(f"_{fam}_{p}") for fam in ("adp", "diffpure") for p in POLICIES.split(",")]
    elif part == "purify_adp":
      out[part] = [[py, os.path.join(bench, "bench_purify.py"), *dev, *sz["purify"], *j()]]
    elif part == "certify_diffpure":
      out[part] = [[py, os.path.join(bench, "bench_certify.py"), *dev, *sz["certify"], *j()]]
    elif part == "purify_diffpure":
      out[part] = [[py, os.path.abspath(__file__), "--device", args.device, "--part", part]
                   + (["--tiny"] if args.tiny else []) + j()]
    else:
      fam = part.split("_", 1)[1]
      out[part] = [grad(fam) + ["--check_batch", "0", "--repeats", sz["repeats"], "--remat",
                                POLICIES] + j()]
  return out


def environment(cache_dir: str) -> dict:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             XLA_PYTHON_CLIENT_PREALLOCATE="false")
  autotune = f"--xla_gpu_per_fusion_autotune_cache_dir={os.path.join(cache_dir, 'autotune')}"
  if "--xla_gpu_per_fusion_autotune_cache_dir" not in env.get("XLA_FLAGS", ""):
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + autotune).strip()
  return env


def run_part(argvs: list, limit: float | None, env: dict) -> dict:
  """Runs the part's processes in parallel: {"status": ok / timeout / failed, "wall_s",
  "tail": the last lines of each process's output}."""
  start = time.perf_counter()
  logs = [tempfile.TemporaryFile(mode="w+") for _ in argvs]
  procs = [subprocess.Popen(a, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                            text=True, start_new_session=True) for a, f in zip(argvs, logs)]
  status = "ok"
  for p in procs:
    left = None if limit is None else max(0.1, limit - (time.perf_counter() - start))
    try:
      p.wait(timeout=left)
    except subprocess.TimeoutExpired:
      status = "timeout"
  for p in procs:
    if p.poll() is None:  # the process and anything it started
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()
    elif p.returncode != 0 and status == "ok":
      status = "failed"
  tails = []
  for f in logs:
    f.seek(0)
    tails.append(f.read()[-3000:])
    f.close()
  return {"status": status, "wall_s": time.perf_counter() - start, "tail": tails}


# ----------------------------------------------------------------------------- DiffPure purify
def purify_diffpure(args) -> dict:
  """DiffPure's purification of B images x R restarts: jaxpure (one jitted scan, vmapped
  restarts) against `torch_diffpure.diffpure_chain` on the R B images as one batch, with the
  noise jaxpure draws; rounds alternate, the ratio is computed pair by pair."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from benchmarks import bench_attack as ba
  from benchmarks import torch_diffpure as td
  from benchmarks.bench_purify import load_config, select_devices, test_images, to_nhwc, to_torch
  from jaxpure.jobs import evaluation
  from jaxpure.purifiers import common as pc

  sz = _sizes(args.tiny)["diffpure_purify"]
  jax_device, torch_device = select_devices(args.device)
  config = load_config(os.path.join(REPO_ROOT, sz["config"]))
  config.purifiers.diffpure.num_steps = sz["num_steps"]
  defense = evaluation.make_defense(config)
  b, r, n = sz["batch"], sz["restarts"], sz["num_steps"]
  with jax.default_device(jax_device):
    variables, weights = ba.network_variables(config, None, 0, jax_device)
    x_np, inputs = test_images(config, b, 0)
    x = jax.device_put(jnp.asarray(x_np), jax_device)
    keys = pc.example_keys(jax.random.key(0), jnp.arange(b))
    rkeys = pc.restart_keys(keys, r)
    start = time.perf_counter()
    compiled = jax.jit(lambda v, x, k: defense.purify_with_restart_keys(v, x, k)[0]).lower(
        variables, x, rkeys).compile()
    compile_s = time.perf_counter() - start
    noise, steps = ba.diffpure_noise(keys, x, r, n)  # [R, B, ...], [R, N, B, ...]
  net, _ = ba.torch_networks(variables, config, torch_device, torch.float32)
  s = td.DiffPureSettings.like(defense.settings)
  flat = lambda a: np.reshape(np.asarray(a), (r * b,) + x_np.shape[1:])  # noqa: E731
  xs_t = to_torch(flat(np.broadcast_to(x_np, (r,) + x_np.shape)), torch_device)
  noise_t = to_torch(flat(noise), torch_device)
  steps_t = to_torch(np.reshape(np.swapaxes(np.asarray(steps), 0, 1),
                                (n, r * b) + x_np.shape[1:]), torch_device)

  def run_torch():
    with torch.no_grad():
      return td.diffpure_chain(net, xs_t, noise_t, steps_t, s)
  cuda = torch_device == "cuda"
  runs = {"jaxpure": (lambda: compiled(variables, x, rkeys), jax.block_until_ready),
          "pytorch_batched": (run_torch, (lambda out: torch.cuda.synchronize()) if cuda
                              else (lambda out: None))}
  diff = float(np.max(np.abs(np.asarray(runs["jaxpure"][0]()).reshape((r * b,) + x_np.shape[1:])
                             - to_nhwc(run_torch()))))
  seconds = {k: [] for k in runs}
  names = list(runs)
  for i in range(sz["repeats"] + 1):
    order = names[i % 2:] + names[:i % 2]
    took = {k: common.timed(*runs[k]) for k in order}
    if i:
      for k, t in took.items():
        seconds[k].append(t)
  ratio = common.pairwise_ratio(seconds, "pytorch_batched")
  import statistics
  median = {k: statistics.median(v) for k, v in seconds.items()}
  report = {"config": sz["config"], "batch": b, "restarts": r, "num_steps": n,
            "weights": weights, "inputs": inputs, "compile_s": compile_s, "seconds": seconds,
            "median_s": median, "images_per_sec": {k: b * r / v for k, v in median.items()},
            "ratios": {"jaxpure/pytorch_batched": ratio},
            "float32_max_abs_diff_not_checked": diff, "device": str(jax_device)}
  print(f"diffpure purify: jaxpure {median['jaxpure']:.3f} s, pytorch batched "
        f"{median['pytorch_batched']:.3f} s per {b} x {r} purifications; compile {compile_s:.1f} "
        f"s; float32 max |diff| {diff:.1e} (information)")
  common.print_ratio("jaxpure/pytorch_batched", ratio)
  return report


# ----------------------------------------------------------------------------- the table
def summary_rows(part: str, report: dict | None) -> list[str]:
  """The lines of the table for one part's benchmark report."""
  if not report:
    return []
  rows = []
  for key, r in (report.get("ratios") or {}).items():
    rows.append(f"  ratio {key}: {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})")
  for name, info in (report.get("remat_policies") or {}).items():
    t = info.get("temp_bytes")
    rows.append(f"  {name}: compile {info['compile_s']:.1f} s, temp "
                + (f"{t / 2**20:.0f} MiB" if t is not None else "?"))
  for name, a in (report.get("achieved_flops") or {}).items():
    fr = "".join(f", {v:.1%} of {k[12:-5]} peak" for k, v in a.items()
                 if k.startswith("fraction_of_"))
    rows.append(f"  {name}: {a['flop_per_s'] / 1e9:.1f} GFLOP/s{fr}")
  for name, peak in (report.get("pytorch_peak_bytes") or {}).items():
    if peak is not None:
      rows.append(f"  {name}: peak {peak / 2**20:.0f} MiB")
  for name in report.get("out_of_memory") or {}:
    rows.append(f"  {name}: out of memory")
  return rows


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.part:  # internal: one part in this process
    if args.part != "purify_diffpure":
      fail(f"--part {args.part}: only purify_diffpure runs in-process")
    try:
      import torch  # noqa: F401
    except ImportError:
      fail('PyTorch is not installed: pip install -e ".[bench]"')
    common.write_json(args.json, purify_diffpure(args))
    return 0
  cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="jaxpure_suite_cache_")
  os.makedirs(cache_dir, exist_ok=True)
  json_dir = tempfile.mkdtemp(prefix="jaxpure_suite_")
  env = environment(cache_dir)
  cmds = commands(args, json_dir)
  suite = {"device": args.device, "tiny": args.tiny, "cache_dir": cache_dir,
           "budget_s": args.budget_s, "expected_s": EXPECTED_S, "parts": {}}
  start = time.perf_counter()
  for part in args.parts:
    left = args.budget_s - (time.perf_counter() - start)
    limit = None if args.tiny else min(LIMITS_S[part], left)
    if limit is not None and limit < 5:
      suite["parts"][part] = {"status": "skipped (no time left)", "limit_s": limit}
      print(f"[suite] {part}: skipped, no time left", flush=True)
      continue
    print(f"[suite] {part}: {len(cmds[part])} process(es), limit "
          f"{'none' if limit is None else f'{limit:.0f} s'}, expected ~{EXPECTED_S[part]} s "
          "on an H100", flush=True)
    res = run_part(cmds[part], limit, env)
    reports = {}
    for name in sorted(os.listdir(json_dir)):
      if name.startswith(part) and name.endswith(".json"):
        with open(os.path.join(json_dir, name)) as f:
          reports[name[:-5]] = json.load(f)
    res.update(limit_s=limit, expected_s=EXPECTED_S[part], reports=reports)
    suite["parts"][part] = res
    print(f"[suite] {part}: {res['status']} in {res['wall_s']:.0f} s", flush=True)
    if res["status"] != "ok":
      print("\n".join(t[-1500:] for t in res["tail"]), flush=True)
  suite["total_wall_s"] = time.perf_counter() - start
  with open(args.out, "w") as f:
    json.dump(suite, f, indent=1)
  print(f"\n{'part':<18} {'status':<8} {'wall s':>7} {'limit s':>8} {'expected s':>10}")
  for part, res in suite["parts"].items():
    lim = res.get("limit_s")
    print(f"{part:<18} {res['status'][:8]:<8} {res.get('wall_s', 0):>7.0f} "
          f"{'-' if lim is None else f'{lim:.0f}':>8} {EXPECTED_S[part]:>10}")
    for name, rep in (res.get("reports") or {}).items():
      if part != "compile_ahead":
        print("\n".join(summary_rows(part, rep)))
      else:
        info = next(iter(rep.get("remat_policies", {}).values()), None)
        if info:
          t = info.get("temp_bytes")
          print(f"  {name}: compile {info['compile_s']:.1f} s, temp "
                + (f"{t / 2**20:.0f} MiB" if t is not None else "?"))
  print(f"total wall time {suite['total_wall_s']:.0f} s; wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
