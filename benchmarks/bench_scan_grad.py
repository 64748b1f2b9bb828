"""What an exact-gradient attack pays for ADP's steps sitting in a `lax.scan`.

Times the gradient, with respect to x, of sum(x_T) after T ADP steps (two score-network
evaluations each: h(x) and the step size's h(x + delta h(x))) written four ways: one step
alone (T = 1, no loop), a Python-unrolled chain, `lax.scan` with and without
`jax.checkpoint` on the body, and `lax.scan(unroll=True)`. Prints the median time, the compile
time and XLA's compiled temporary memory of each, and the forward pass for scale.

  python benchmarks/bench_scan_grad.py --quick          # digits net, CPU, ~4 minutes
  python benchmarks/bench_scan_grad.py --device gpu     # CIFAR-10 net (ngf 128), B 16
  python benchmarks/bench_scan_grad.py --device gpu --variants forward,scan_remat,unrolled

--variants picks and orders the rows (default: all, in the order below), for a run under a
time limit: each row prints as soon as it is measured.

The network has jaxpure's random initialisation (timing does not depend on the weights).
"""

import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

MIB = 2**20

# --variants names, in the default order, and the row each one prints.
VARIANTS = {"forward": "forward only, lax.scan",
            "step": "one step alone (T = 1)",
            "unrolled": "Python-unrolled chain",
            "scan_remat": "lax.scan + jax.checkpoint (jaxpure)",
            "scan": "lax.scan, no checkpoint",
            "scan_unroll": "lax.scan(unroll=True) + jax.checkpoint"}


def parse_args(argv=None):
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="digits net (default: CIFAR-10 net)")
  p.add_argument("--device", default="cpu", help="cpu or gpu")
  p.add_argument("--steps", type=int, default=10, help="T")
  p.add_argument("--batch", type=int, default=None, help="images (default 256 quick, 16 full)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help=f"comma-separated rows to measure, in this order (of {', '.join(VARIANTS)})")
  p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
  args = p.parse_args(argv)
  if args.steps < 1 or args.repeats < 1 or (args.batch is not None and args.batch < 1):
    p.error("--steps, --batch and --repeats must be >= 1")
  args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = [v for v in args.variants if v not in VARIANTS]
  if unknown or not args.variants or len(set(args.variants)) != len(args.variants):
    p.error(f"--variants: expected distinct names among {', '.join(VARIANTS)}, "
            f"got {','.join(args.variants) or 'none'}")
  args.batch = args.batch or (256 if args.quick else 16)
  return args


def variants(h, variables, settings, steps: int) -> dict:
  """{VARIANTS key: f(x) -> gradient [B, H, W, C]} for the ways of writing T ADP steps
  ("forward": the purified x_T itself, for scale).

  h(variables, x, t): the score network's field (`model_specs.score_fn`), called as the ADP
  purifier calls it (t = sigma_n, ignored by the unconditional NCSNv2)."""
  import jax
  import jax.numpy as jnp
  from jaxpure.purifiers import adp

  def field(y):
    return h(variables, y, jnp.full(y.shape[:1], settings.sigma_n, y.dtype))

  def step(x):
    g = field(x)
    alpha = adp.adp_step_size(field, x, g, settings)
    return x + alpha[:, None, None, None] * g

  def scan(remat: bool, unroll):
    body = lambda c, _: (step(c), None)
    body = jax.checkpoint(body) if remat else body
    return lambda x: jax.lax.scan(body, x, None, length=steps, unroll=unroll)[0]

  def unrolled(x):
    for _ in range(steps):
      x = step(x)
    return x

  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x)))
  return {"forward": scan(True, 1),
          "step": grad(step),
          "unrolled": grad(unrolled),
          "scan_remat": grad(scan(True, 1)),
          "scan": grad(scan(False, 1)),
          "scan_unroll": grad(scan(True, True))}


def measure(fn, x, repeats: int) -> dict:
  import jax
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(x).compile()
  compile_s = time.perf_counter() - start
  temp = compiled.memory_analysis().temp_size_in_bytes / MIB
  jax.block_until_ready(compiled(x))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(x))
    times.append(time.perf_counter() - start)
  return {"median_ms": 1e3 * statistics.median(times), "compile_s": compile_s, "temp_mib": temp}


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax
  from configs import cifar10, digits
  from jaxpure import model_specs, purifiers

  device = common.select_device("gpu" if args.device in ("gpu", "cuda") else args.device)
  config = (digits if args.quick else cifar10).get_config()
  module = model_specs.SCORE.build(config)
  shape = (args.batch,) + model_specs.image_shape(config)
  info = common.describe(device)
  common.print_header("reverse pass of T ADP steps: lax.scan versus unrolled", info)
  settings = dataclasses.replace(
      purifiers.make_settings("adp", config.purifiers.adp.to_dict()), max_iter=args.steps)
  print(f"x [{', '.join(map(str, shape))}] in [0, 1], ngf {module.ngf}, T {args.steps}, "
        f"median of {args.repeats} runs after a warm-up")
  with jax.default_device(device):
    x = jax.random.uniform(jax.random.key(0), shape)
    variables = {"params": model_specs.SCORE.init(module, jax.random.key(1), x[:1])["params"]}
    h = model_specs.score_fn(config)
    rows = {}
    fns = variants(h, variables, settings, args.steps)
    for key in args.variants:
      name, fn = VARIANTS[key], fns[key]
      try:
        rows[name] = measure(fn, x, args.repeats)
      except Exception as e:  # noqa: BLE001 — an allocation failure ends the row, not the run
        if "RESOURCE_EXHAUSTED" not in str(e) and "Out of memory" not in str(e):
          raise
        rows[name] = {"error": "does not fit in memory"}
      r = rows[name]
      line = (f"{r['median_ms']:9.1f} ms   compile {r['compile_s']:5.1f} s   temp "
              f"{r['temp_mib']:8.1f} MiB" if "error" not in r else r["error"])
      print(f"{name:42s} {line}", flush=True)
  common.write_json(args.json, {"info": info, "shape": shape, "steps": args.steps, "rows": rows})
  return 0


if __name__ == "__main__":
  sys.exit(main())
