"""Peak memory of one exact-gradient `pgd_eot_full` step versus the purifier's T.

For T in --steps (default 5, 10, 20, 40), with and without `jax.checkpoint` on the purifier's
scan body, compiles the EOT gradient of the CE loss through the whole purifier (noise, T ADP
steps, stopping mask) and the classifier, and prints XLA's compiled memory analysis (temporary
buffers: the activations kept for the backward pass). On a GPU it also runs each gradient once,
in a fresh process, and reports the allocator's measured peak.

  python benchmarks/bench_attack_memory.py --quick        # digits nets, CPU, ~1 minute
  python benchmarks/bench_attack_memory.py                # CIFAR-10 nets (ngf 128, WRN-28-10)
  python benchmarks/bench_attack_memory.py --device gpu   # + measured peaks

Models are randomly initialised (memory does not depend on the weights).
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 2**20


def parse_args(argv=None):
  from benchmarks import common  # imported here: it imports jax
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="digits-size nets (default: CIFAR-10)")
  p.add_argument("--device", default="cpu", help="cpu or gpu")
  p.add_argument("--steps", default="5,10,20,40", help="comma-separated T values")
  p.add_argument("--batch", type=int, default=None, help="examples per gradient "
                 "(default: 128 quick, 16 full)")
  p.add_argument("--n_eot", type=int, default=2, help="purifications per gradient (EOT)")
  p.add_argument("--json", default=None, help="also write the table to this JSON file")
  p.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: "T,remat"
  args = p.parse_args(argv)
  try:
    args.steps = [int(t) for t in args.steps.split(",")]
  except ValueError:
    p.error(f"--steps {args.steps!r}: expected comma-separated integers")
  if any(t < 1 for t in args.steps) or args.n_eot < 1 or (args.batch is not None and args.batch < 1):
    p.error("--steps, --batch and --n_eot must be >= 1")
  if args.batch is None:
    args.batch = 128 if args.quick else 16
  return args


def load_config(quick: bool):
  from configs import cifar10, digits
  return (digits if quick else cifar10).get_config()


def gradient_function(config, max_iter: int, remat: bool, n_eot: int):
  """grad(params, keys, x, y) -> [B, H, W, C]: the exact EOT gradient of the CE loss."""
  import jax
  from jaxpure.attacks import eot
  from jaxpure.jobs import evaluation
  defense = evaluation.make_defense(config)
  defense = dataclasses.replace(defense, settings=dataclasses.replace(
      defense.settings, max_iter=max_iter, remat=remat))
  est = eot.exact_eot_gradient(defense, "ce", n_eot)
  return jax.jit(lambda params, keys, x, y: est(params, keys, x, y)[1])


def example_inputs(config, batch: int, abstract: bool):
  """(params, keys, x, y): shapes only (abstract) or randomly initialised values."""
  import jax
  import jax.numpy as jnp
  from jaxpure import model_specs
  from jaxpure.model_specs import CLASSIFIER, SCORE
  from jaxpure.purifiers import common as purifier_common
  shape = (batch,) + model_specs.image_shape(config)
  dummy = jnp.zeros((1,) + shape[1:], jnp.float32)
  score_mod, clf_mod = SCORE.build(config), CLASSIFIER.build(config)

  def make():
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"score": {"params": SCORE.init(score_mod, k1, dummy)["params"]},
              "classifier": CLASSIFIER.init(clf_mod, k2, dummy)}
    keys = purifier_common.example_keys(jax.random.key(1), jnp.arange(batch))
    x = jax.random.uniform(jax.random.key(2), shape)
    y = jnp.zeros((batch,), jnp.int32)
    return params, keys, x, y
  return jax.eval_shape(make) if abstract else jax.jit(make)()


def compiled_memory(config, t: int, remat: bool, batch: int, n_eot: int, device) -> dict:
  """XLA's memory analysis of the compiled gradient, in bytes."""
  import jax
  inputs = example_inputs(config, batch, abstract=True)
  with jax.default_device(device):
    compiled = gradient_function(config, t, remat, n_eot).lower(*inputs).compile()
  m = compiled.memory_analysis()
  return {"temp": int(m.temp_size_in_bytes), "arguments": int(m.argument_size_in_bytes),
          "output": int(m.output_size_in_bytes)}


def measured_peak(args, t: int, remat: bool) -> int | None:
  """The GPU allocator's peak for one gradient, run in a fresh process (peaks never reset)."""
  cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--batch",
         str(args.batch), "--n_eot", str(args.n_eot), "--measure", f"{t},{int(remat)}"]
  if args.quick:
    cmd.append("--quick")
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode != 0:
    tail = (out.stderr.strip().splitlines() or ["?"])[-1]
    return f"failed: {tail[:80]}"
  return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def measure_once(args) -> None:
  import jax
  from benchmarks import common
  device = common.select_device(args.device)
  t, remat = (int(v) for v in args.measure.split(","))
  config = load_config(args.quick)
  with jax.default_device(device):
    inputs = example_inputs(config, args.batch, abstract=False)
    before = device.memory_stats()["peak_bytes_in_use"]
    gradient_function(config, t, bool(remat), args.n_eot)(*inputs).block_until_ready()
  print(json.dumps({"peak_bytes": int(device.memory_stats()["peak_bytes_in_use"]),
                    "before_bytes": int(before)}))


def main(argv=None):
  args = parse_args(argv)
  if args.measure:
    return measure_once(args)
  from benchmarks import common
  device = common.select_device(args.device)
  config = load_config(args.quick)
  info = common.describe(device)
  info.update(mode="quick (digits nets)" if args.quick else "full (CIFAR-10 nets)",
              image_shape=list(config.data.image_size for _ in range(2)) + [config.data.channels],
              score_ngf=config.score.ngf, classifier=config.classifier.model,
              batch=args.batch, n_eot=args.n_eot)
  common.print_header("pgd_eot_full gradient memory vs purifier steps T", info)
  limit = common.memory_limit_bytes(device)
  rows = []
  print(f"{'T':>4} {'temp MiB (checkpoint)':>22} {'temp MiB (no checkpoint)':>25} "
        f"{'ratio':>6}" + ("   measured peak MiB (ckpt / no ckpt)" if device.platform == "gpu"
                           else ""), flush=True)
  for t in args.steps:
    row = {"T": t}
    for remat in (True, False):
      m = compiled_memory(config, t, remat, args.batch, args.n_eot, device)
      tag = "checkpoint" if remat else "no_checkpoint"
      row[f"compiled_{tag}"] = m
      total = m["temp"] + m["arguments"] + m["output"]
      if device.platform == "gpu":
        if limit is not None and total > limit:
          row[f"measured_peak_{tag}"] = f"does not fit: needs {total / 2**30:.1f} GiB"
        else:
          row[f"measured_peak_{tag}"] = measured_peak(args, t, remat)
    rows.append(row)
    ratio = row["compiled_no_checkpoint"]["temp"] / max(row["compiled_checkpoint"]["temp"], 1)
    line = (f"{t:>4} {row['compiled_checkpoint']['temp'] / MIB:>22.1f} "
            f"{row['compiled_no_checkpoint']['temp'] / MIB:>25.1f} {ratio:>6.1f}")
    if device.platform == "gpu":
      fmt = lambda v: f"{v / MIB:.1f}" if isinstance(v, int) else str(v)
      line += (f"   {fmt(row['measured_peak_checkpoint'])} / "
               f"{fmt(row['measured_peak_no_checkpoint'])}")
    print(line, flush=True)
  first, last = rows[0], rows[-1]
  span = max(last["T"] - first["T"], 1)
  for tag in ("checkpoint", "no_checkpoint"):
    growth = (last[f"compiled_{tag}"]["temp"] - first[f"compiled_{tag}"]["temp"]) / span
    print(f"growth per step ({tag.replace('_', ' ')}): {growth / MIB:.3f} MiB/step")
  common.write_json(args.json, {"info": info, "rows": rows})


if __name__ == "__main__":
  main()
