"""Score-network (DSM) training throughput, images/second, on all devices present.

For each config (digits, cifar10) builds the real train step (`training.make_train_step`:
DSM loss, optimizer, EMA, data-parallel over a mesh of every device), feeds it synthetic
device-resident batches in [0, 1] (so the input pipeline is not timed), and reports the
median step time over --steps timed steps after a warm-up step (compile time apart). On a
GPU it also reports model FLOPs utilisation: XLA's cost-analysis FLOPs per step over the
step time, against the device's peak.

  python benchmarks/bench_train.py --quick            # digits only
  python benchmarks/bench_train.py                    # digits and cifar10 (slow on a CPU)
  python benchmarks/bench_train.py --device gpu --configs cifar10
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense peak TFLOP/s per chip, (float32 via TF32 tensor cores, bfloat16), from the vendors'
# data sheets (SXM parts). XLA runs float32 matmuls/convolutions on TF32 tensor cores on these
# GPUs by default, so MFU is quoted against the TF32 peak.
PEAK_TFLOPS = {"H200": (494.7, 989.4), "H100": (494.7, 989.4), "A100": (156.0, 312.0)}


def parse_args(argv=None):
  from benchmarks import common  # imported here: it imports jax
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="digits only")
  p.add_argument("--configs", default=None, help="comma-separated: digits,cifar10")
  p.add_argument("--device", default="cpu", help="cpu or gpu (all devices of that kind)")
  p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 digits, "
                 "5 cifar10 on CPU / 20 on GPU)")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: config's)")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="device peak for MFU when its kind is not in the built-in table")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = p.parse_args(argv)
  names = args.configs.split(",") if args.configs else (
      ["digits"] if args.quick else ["digits", "cifar10"])
  bad = [n for n in names if n not in ("digits", "cifar10")]
  if bad:
    p.error(f"--configs: unknown {bad}; expected digits and/or cifar10")
  args.configs = names
  if (args.steps is not None and args.steps < 1) or (args.batch is not None and args.batch < 1):
    p.error("--steps and --batch must be >= 1")
  return args


def peak_flops(device, override_tflops):
  if override_tflops:
    return override_tflops * 1e12, "given by --peak_tflops"
  for name, (tf32, _) in PEAK_TFLOPS.items():
    if name in device.device_kind:
      return tf32 * 1e12, f"{name} dense TF32 peak {tf32} TFLOP/s"
  return None, f"peak unknown for {device.device_kind!r} (pass --peak_tflops)"


def bench_config(name: str, args, devices) -> dict:
  import jax
  import jax.numpy as jnp
  from configs import cifar10, digits
  from jaxpure import model_specs, parallel, training
  from jaxpure.jobs import train as train_job
  from benchmarks import common
  config = {"digits": digits, "cifar10": cifar10}[name].get_config()
  mesh = parallel.make_mesh(devices)
  batch = args.batch or config.score.batch_size
  batch = parallel.round_up_to_devices(batch, mesh)
  on_cpu = devices[0].platform == "cpu"
  steps = args.steps or (5 if name == "cifar10" and on_cpu else 20)
  spec = model_specs.SCORE
  module = spec.build(config)
  section = spec.optimizer_settings(config)
  opt, ema = training.make_optimizer(section), training.make_ema(section)
  state = train_job.init_train_state(spec, config, module, jax.random.key(0), mesh)
  step = training.make_train_step(spec.loss(config, module), opt, ema, mesh)
  shape = (batch,) + model_specs.image_shape(config)
  images = jax.device_put(jax.random.uniform(jax.random.key(1), shape),
                          parallel.batch_sharding(mesh))
  batch_tree = {"image": images, "label": jnp.zeros((batch,), jnp.int32)}
  key = jax.random.key(2)
  t0 = time.perf_counter()
  try:
    compiled = step.lower(state, batch_tree, key).compile()
  except Exception as e:  # XLA reports out-of-memory at compile or run time
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      common.fail(f"{name}: a batch of {batch} does not fit in device memory; try --batch")
    raise
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  times = []
  try:
    for i in range(steps + 1):
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch_tree, key)
      jax.block_until_ready((state, metrics))
      if i:  # the first call is the warm-up
        times.append(time.perf_counter() - t0)
  except Exception as e:
    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
      common.fail(f"{name}: a batch of {batch} does not fit in device memory; try --batch")
    raise
  median = statistics.median(times)
  result = {"config": name, "devices": len(devices), "global_batch": batch,
            "image_shape": list(shape[1:]), "ngf": config.score.ngf,
            "num_sigmas": config.score.num_sigmas, "timed_steps": steps,
            "compile_seconds": compile_s, "median_step_seconds": median,
            "images_per_second": batch / median, "loss": float(metrics["loss"]),
            "xla_flops_per_step": flops}
  if not on_cpu:
    peak, note = peak_flops(devices[0], args.peak_tflops)
    # cost_analysis counts the whole (global) program's FLOPs once per device's program.
    result["mfu"] = (flops / median) / peak if peak and flops else None
    result["mfu_peak"] = note
  return result


def main(argv=None):
  args = parse_args(argv)
  import jax
  from benchmarks import common
  device = common.select_device(args.device)
  devices = jax.devices(device.platform)
  info = common.describe(device)
  info["num_devices"] = len(devices)
  common.print_header("score-network training throughput (DSM step, synthetic batches)", info)
  results = []
  for name in args.configs:
    r = bench_config(name, args, devices)
    results.append(r)
    line = (f"{name}: {r['images_per_second']:.1f} images/s  (global batch {r['global_batch']}"
            f" on {r['devices']} device(s), median step {r['median_step_seconds'] * 1e3:.1f} ms"
            f" over {r['timed_steps']} steps, compile {r['compile_seconds']:.1f} s, "
            f"{r['xla_flops_per_step'] / 1e9:.1f} GFLOP/step)")
    if "mfu" in r:
      line += (f"  MFU {100 * r['mfu']:.1f}% ({r['mfu_peak']})" if r["mfu"] is not None
               else f"  MFU n/a: {r['mfu_peak']}")
    print(line, flush=True)
  common.write_json(args.json, {"info": info, "results": results})


if __name__ == "__main__":
  main()
