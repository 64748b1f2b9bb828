"""Memory of one exact-gradient attack step through DiffPure versus the reverse steps N.

For N in --steps (default 10, 20, 100), with and without `jax.checkpoint` on each reverse
step, compiles the exact EOT gradient of the CE loss through the `diffpure` purifier (diffuse
to t* = 0.1, N Euler-Maruyama steps of the reverse VP-SDE in one `lax.scan`) and a WRN-28-10
classifier, and prints XLA's compiled memory analysis: temporary buffers (the activations kept
for the backward pass) and the total with arguments and outputs. Nothing is executed on the
CPU: parameters and inputs are abstract (`jax.eval_shape`), so nothing large is allocated.
Each configuration compiles in a fresh process, stopped after --compile_timeout seconds and
then reported as not measured (`--compile_timeout 0`: all in this process, no limit). On a GPU
(`--device gpu`) each gradient that fits also runs once, in a fresh process, for the
allocator's measured peak and the time of one step.

  python benchmarks/bench_diffpure_memory.py --quick        # tiny nets, 8x8x3, CPU
  python benchmarks/bench_diffpure_memory.py                # DDPM++ (CIFAR-10), WRN-28-10
  python benchmarks/bench_diffpure_memory.py --device gpu   # + measured peaks and step times

Models are randomly initialised (memory does not depend on the weights).
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 2**20

#: (score network fields, classifier fields, image side) per mode. Full: DiffPure's CIFAR-10
#: DDPM++ and RobustBench's WRN-28-10 on raw [0, 1] pixels.
NETS = {
    "full": (dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,)),
             dict(depth=28, width=10, num_classes=10, normalize_input=False), 32),
    "quick": (dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,)),
              dict(depth=10, width=1, num_classes=10, normalize_input=False), 8),
}


def parse_args(argv=None):
  from benchmarks import common  # imported here: it imports jax
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="tiny DDPM++ (nf 8, one level) and WRN-10-1 on 8x8x3 (default: CIFAR-10)")
  p.add_argument("--device", default="cpu", help="cpu or gpu")
  p.add_argument("--steps", default="10,20,100", help="comma-separated reverse steps N")
  p.add_argument("--batch", type=int, default=16, help="examples per gradient")
  p.add_argument("--n_eot", type=int, default=1, help="purifications per gradient (EOT)")
  p.add_argument("--t_star", type=float, default=0.1, help="diffusion time t*")
  p.add_argument("--remat", default="both", choices=("both", "on", "off"),
                 help="per-step remat settings to measure (default both)")
  p.add_argument("--compile_timeout", type=float, default=480.0,
                 help="seconds one configuration may take to compile, in its own process, "
                 "before it is reported as not measured; 0: compile in this process, no limit")
  p.add_argument("--json", default=None, help="also write the table to this JSON file")
  p.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: "what,N,remat"
  args = p.parse_args(argv)
  try:
    args.steps = [int(n) for n in args.steps.split(",")]
  except ValueError:
    p.error(f"--steps {args.steps!r}: expected comma-separated integers")
  if any(n < 1 for n in args.steps) or args.batch < 1 or args.n_eot < 1:
    p.error("--steps, --batch and --n_eot must be >= 1")
  if not 0 < args.t_star <= 1:
    p.error(f"--t_star {args.t_star}: expected in (0, 1]")
  if args.compile_timeout < 0:
    p.error("--compile_timeout must be >= 0")
  return args


REMATS = {"both": (True, False), "on": (True,), "off": (False,)}


def build(quick: bool):
  """(DDPM++ module, WRN module, image shape [H, W, C])."""
  from jaxpure import models
  score_fields, clf_fields, side = NETS["quick" if quick else "full"]
  return (models.create("ddpmpp", **score_fields), models.create("wrn", **clf_fields),
          (side, side, 3))


def gradient_function(score_mod, clf_mod, n: int, remat: bool, n_eot: int, t_star: float):
  """grad(params, keys, x, y) -> [B, H, W, C]: the exact EOT gradient of the CE loss through
  `diffpure` with N reverse steps."""
  import jax
  import jaxpure.purifiers.diffpure as diffpure
  from jaxpure import models
  from jaxpure.attacks import eot
  from jaxpure.defense import Defense
  defense = Defense(score_fn=models.score_function(score_mod),
                    logits_fn=lambda v, x: clf_mod.apply(v, x, train=False),
                    family=diffpure,
                    settings=diffpure.Settings(t_star=t_star, num_steps=n, remat=remat),
                    restarts=1)
  est = eot.exact_eot_gradient(defense, "ce", n_eot)
  return jax.jit(lambda params, keys, x, y: est(params, keys, x, y)[1])


def example_inputs(score_mod, clf_mod, image_shape, batch: int, abstract: bool):
  """(params, keys, x, y): shapes only (abstract) or randomly initialised values."""
  import jax
  import jax.numpy as jnp
  from jaxpure.purifiers import common as purifier_common
  shape = (batch,) + tuple(image_shape)

  def make():
    k1, k2 = jax.random.split(jax.random.key(0))
    dummy = jnp.zeros((1,) + shape[1:], jnp.float32)
    score = score_mod.init(k1, dummy, jnp.zeros((1,), jnp.float32))
    clf = clf_mod.init(k2, dummy, train=False)
    params = {"score": {"params": score["params"]},
              "classifier": {"params": clf["params"], "batch_stats": clf["batch_stats"]}}
    keys = purifier_common.example_keys(jax.random.key(1), jnp.arange(batch))
    x = jax.random.uniform(jax.random.key(2), shape)
    y = jnp.zeros((batch,), jnp.int32)
    return params, keys, x, y
  return jax.eval_shape(make) if abstract else jax.jit(make)()


def compile_once(args, n: int, remat: bool) -> dict:
  """XLA's memory analysis of the compiled gradient in bytes, and the seconds it took."""
  import jax
  from benchmarks import common
  device = common.select_device(args.device)
  score_mod, clf_mod, image_shape = build(args.quick)
  inputs = example_inputs(score_mod, clf_mod, image_shape, args.batch, abstract=True)
  start = time.perf_counter()
  with jax.default_device(device):
    lowered = gradient_function(score_mod, clf_mod, n, remat, args.n_eot,
                                args.t_star).lower(*inputs)
    lowered_s = time.perf_counter() - start
    compiled = lowered.compile()
  compile_s = time.perf_counter() - start - lowered_s
  m = compiled.memory_analysis()
  out = {"temp": int(m.temp_size_in_bytes), "arguments": int(m.argument_size_in_bytes),
         "output": int(m.output_size_in_bytes), "lower_s": round(lowered_s, 2),
         "compile_s": round(compile_s, 2)}
  out["total"] = out["temp"] + out["arguments"] + out["output"]
  return out


def run_once(args, n: int, remat: bool) -> dict:
  """The GPU allocator's peak for one gradient and the time of one (compiled) step."""
  import jax
  from benchmarks import common
  device = common.select_device(args.device)
  score_mod, clf_mod, image_shape = build(args.quick)
  with jax.default_device(device):
    inputs = example_inputs(score_mod, clf_mod, image_shape, args.batch, abstract=False)
    jax.block_until_ready(inputs)
    before = device.memory_stats()["peak_bytes_in_use"]
    grad = gradient_function(score_mod, clf_mod, n, remat, args.n_eot, args.t_star)
    grad(*inputs).block_until_ready()  # compiles, then runs once
    start = time.perf_counter()
    grad(*inputs).block_until_ready()
    step_s = time.perf_counter() - start
  return {"peak_bytes": int(device.memory_stats()["peak_bytes_in_use"]),
          "before_bytes": int(before), "step_s": round(step_s, 4)}


def measure_once(args) -> None:
  what, n, remat = args.measure.split(",")
  fn = {"compile": compile_once, "run": run_once}[what]
  print(json.dumps(fn(args, int(n), bool(int(remat)))))


def in_fresh_process(args, what: str, n: int, remat: bool, timeout: float | None):
  """Runs `--measure what,N,remat` in a fresh process: its JSON dict, or a one-line reason."""
  cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--batch",
         str(args.batch), "--n_eot", str(args.n_eot), "--t_star", str(args.t_star),
         "--measure", f"{what},{n},{int(remat)}"]
  if args.quick:
    cmd.append("--quick")
  start = time.perf_counter()
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return (f"not measured: {what} did not finish in {timeout:.0f} s "
            f"(stopped after {time.perf_counter() - start:.0f} s)")
  if out.returncode != 0:
    tail = (out.stderr.strip().splitlines() or ["?"])[-1]
    return f"failed: {tail[:120]}"
  return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(v) -> str:
  return f"{v / MIB:.1f}" if isinstance(v, (int, float)) else "-"


def main(argv=None):
  args = parse_args(argv)
  if args.measure:
    return measure_once(args)
  from benchmarks import common
  device = common.select_device(args.device)
  score_fields, clf_fields, side = NETS["quick" if args.quick else "full"]
  info = common.describe(device)
  info.update(mode="quick (tiny nets)" if args.quick else "full (CIFAR-10 nets)",
              image_shape=[side, side, 3],
              score="ddpmpp " + ", ".join(f"{k} {v}" for k, v in score_fields.items()),
              classifier=f"wrn-{clf_fields['depth']}-{clf_fields['width']}",
              batch=args.batch, n_eot=args.n_eot, t_star=args.t_star, sampler="sde")
  common.print_header("diffpure exact-gradient memory vs reverse steps N", info)
  on_gpu = device.platform == "gpu"
  limit = common.memory_limit_bytes(device)
  print(f"{'N':>4} {'remat':>5} {'temp MiB':>10} {'total MiB':>10} {'MiB/step':>9} "
        f"{'compile s':>9}" + ("  measured peak MiB  step s" if on_gpu else ""), flush=True)
  rows, previous = [], {}
  for n in args.steps:
    for remat in REMATS[args.remat]:
      row = {"N": n, "remat": remat}
      if args.compile_timeout:
        m = in_fresh_process(args, "compile", n, remat, args.compile_timeout)
      else:
        m = compile_once(args, n, remat)
      if isinstance(m, str):
        row["compiled"] = m
      else:
        row["compiled"] = m
        if remat in previous and n != previous[remat]["N"]:
          prev = previous[remat]
          row["growth_per_step"] = (m["temp"] - prev["compiled"]["temp"]) / (n - prev["N"])
        previous[remat] = row
        if on_gpu:
          if limit is not None and m["total"] > limit:
            row["measured"] = f"does not fit: needs {m['total'] / 2**30:.1f} GiB"
          else:
            row["measured"] = in_fresh_process(args, "run", n, remat, None)
      rows.append(row)
      if isinstance(m, str):
        line = f"{n:>4} {'on' if remat else 'off':>5}  {m}"
      else:
        growth = row.get("growth_per_step")
        line = (f"{n:>4} {'on' if remat else 'off':>5} {_mib(m['temp']):>10} "
                f"{_mib(m['total']):>10} {_mib(growth):>9} {m['compile_s']:>9.1f}")
      if on_gpu and "measured" in row:
        meas = row["measured"]
        line += (f"  {_mib(meas['peak_bytes']):>18} {meas['step_s']:>7.3f}"
                 if isinstance(meas, dict) else f"  {meas}")
      print(line, flush=True)
  for remat in REMATS[args.remat]:
    done = [r for r in rows if r["remat"] == remat and isinstance(r["compiled"], dict)]
    tag = "remat" if remat else "no remat"
    if len(done) >= 2 and done[-1]["N"] != done[0]["N"]:
      growth = ((done[-1]["compiled"]["temp"] - done[0]["compiled"]["temp"])
                / (done[-1]["N"] - done[0]["N"]))
      print(f"growth per step ({tag}): {growth / MIB:.3f} MiB/step "
            f"(N {done[0]['N']} to {done[-1]['N']})")
    else:
      print(f"growth per step ({tag}): not measured (fewer than two N compiled)")
  if not on_gpu:
    print("measured peak and step time: not measured (no GPU; run with --device gpu on one)")
  common.write_json(args.json, {"info": info, "rows": rows})


if __name__ == "__main__":
  main()
