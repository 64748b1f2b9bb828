"""The score network's convolutions, timed one by one: how much of a network evaluation they
are, and the lower bound they put on the purifier and on the exact gradient.

  python benchmarks/bench_conv_floor.py --quick                # digits net, batch 2560
  python benchmarks/bench_conv_floor.py --quick --batch 256    # the attack benchmark's batch
  python benchmarks/bench_conv_floor.py --quick --no-torch     # without PyTorch's column
  python benchmarks/bench_conv_floor.py --config configs/digits_diffpure.py --batch 256  # DDPM++

Lists every convolution of the network at batch B, read from its jaxpr (input and kernel
shapes, strides, padding, dilation, and how many the network has of each). Each distinct one is
jitted alone and timed, forward and input gradient (the transpose in x of the convolution
jaxpure's networks use, `jaxpure.models.conv`, through its `jax.vjp`: what an attack's reverse
pass runs). The whole
network's forward pass and input gradient (forward + backward) are timed at the same batch. With
PyTorch installed, `torch.nn.functional.conv2d` and `torch.nn.grad.conv2d_input` are timed on
the same shapes, in NCHW (PyTorch's default) and channels_last layouts, with
torch.set_num_threads(<CPUs>). Every time is the median of --repeats calls after a warm-up.
Inside the network the convolutions run in one compiled program, so the cost of calling a jitted
function (timed on an empty one and printed) is taken off each convolution's time (not below
0); at small batches, where a convolution costs little more than that, the floors are rough.

It prints, per network evaluation:
- the convolutions' forward sum and its share of the network's forward pass;
- the convolutions' forward + input-gradient sum and its share of the network's input gradient;
- the floor of one checkpointed exact-gradient evaluation (the purifier's step under
  `jax.checkpoint`: forward, recomputed forward, backward): 2 x conv forward + conv input
  gradient; with PyTorch, the same floor at PyTorch's convolution speed, and PyTorch
  autograd's (forward + input gradient, nothing recomputed). Rewriting the layers between the
  convolutions cannot take a network evaluation much below these floors (approximate: a
  convolution timed alone may cost a little more than inside the compiled network).

The network has jaxpure's random initialisation (timing does not depend on the weights).
Bad input prints one line on stderr and exits 2.
"""

from __future__ import annotations

import collections
import os
import statistics
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks import common  # noqa: E402


def parse_args(argv=None):
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="digits net (default: CIFAR-10 net)")
  p.add_argument("--config", default=None,
                 help="config file whose score network to time (default configs/digits.py with "
                      "--quick, else configs/cifar10.py), e.g. configs/digits_diffpure.py")
  p.add_argument("--device", default="cpu", help="cpu or gpu")
  p.add_argument("--batch", type=int, default=None,
                 help="network batch (default 2560 for images up to 16 pixels wide, e.g. "
                      "digits: 256 images x 10 restarts; else 16)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no-torch", dest="torch", action="store_false",
                 help="skip PyTorch's column")
  p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
  args = p.parse_args(argv)
  if args.repeats < 1 or (args.batch is not None and args.batch < 1):
    p.error("--batch and --repeats must be >= 1")
  if args.quick and args.config:
    p.error("--quick and --config: give one (--quick is --config configs/digits.py)")
  args.config = args.config or os.path.join(
      REPO_ROOT, "configs", "digits.py" if args.quick else "cifar10.py")
  return args


def median_ms(fn, repeats: int, sync=None) -> float:
  """Median wall milliseconds of sync(fn()) (default: blocked on as a JAX result), after one
  untimed call."""
  if sync is None:
    import jax
    sync = jax.block_until_ready
  sync(fn())
  return 1e3 * statistics.median(common.timed(fn, sync) for _ in range(repeats))


def _sub_jaxprs(value):
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


ConvCase = collections.namedtuple(
    "ConvCase", "lhs rhs strides padding lhs_dilation rhs_dilation dn groups")


def convolutions(jaxpr) -> collections.Counter:
  """{ConvCase: count} of every conv_general_dilated in a jaxpr, nested ones included."""
  found = collections.Counter()

  def walk(j):
    for e in j.eqns:
      if e.primitive.name == "conv_general_dilated":
        p = e.params
        found[ConvCase(tuple(e.invars[0].aval.shape), tuple(e.invars[1].aval.shape),
                       tuple(p["window_strides"]), tuple(map(tuple, p["padding"])),
                       tuple(p["lhs_dilation"]), tuple(p["rhs_dilation"]),
                       p["dimension_numbers"], p["feature_group_count"])] += 1
      for v in e.params.values():
        for sub in _sub_jaxprs(v):
          walk(sub)

  walk(jaxpr)
  return found


def describe_case(c: ConvCase) -> str:
  pad = "x".join(f"{a}+{b}" for a, b in c.padding)
  dil = "" if set(c.rhs_dilation) == {1} else f" dilation {c.rhs_dilation[0]}"
  return f"{list(c.lhs)} * {list(c.rhs)} pad {pad}{dil}"


def jax_conv_ms(c: ConvCase, repeats: int, device) -> tuple[float, float]:
  """(forward ms, input-gradient ms) of one convolution alone, jaxpure's conv, float32."""
  import jax
  import jax.numpy as jnp
  from jaxpure.models import conv as conv_lib

  def f(x, w):
    return conv_lib.conv_general_dilated(x, w, c.strides, c.padding, c.lhs_dilation,
                                         c.rhs_dilation, c.dn, c.groups)

  x = jax.device_put(jax.random.normal(jax.random.key(0), c.lhs, jnp.float32), device)
  w = jax.device_put(0.1 * jax.random.normal(jax.random.key(1), c.rhs, jnp.float32), device)
  fwd = jax.jit(f)
  y = fwd(x, w)
  # The reverse-mode input gradient through jaxpure's custom_jvp (its swapped-kernel rule), as
  # an attack takes it; the unused primal output is dropped by XLA.
  input_grad = jax.jit(lambda w, ct: jax.vjp(lambda x: f(x, w), x)[1](ct)[0])
  return median_ms(lambda: fwd(x, w), repeats), median_ms(lambda: input_grad(w, y), repeats)


def torch_conv_ms(c: ConvCase, repeats: int) -> dict | None:
  """PyTorch's forward and input gradient of the same convolution, NCHW and channels_last;
  None for a case PyTorch's conv2d does not express (not 2-D NHWC/HWIO, grouped)."""
  import torch
  import torch.nn.functional as F
  from jax import lax
  canonical = lax.conv_dimension_numbers(c.lhs, c.rhs, ("NHWC", "HWIO", "NHWC"))
  if len(c.lhs) != 4 or c.dn != canonical or c.groups != 1 or set(c.lhs_dilation) != {1}:
    return None
  n, h, w_, cin = c.lhs
  kh, kw, _, cout = c.rhs
  (pt, pb), (pl, pr) = c.padding

  def sync_ms(fn):  # eager PyTorch on the CPU: a call returns when its work is done
    return median_ms(fn, repeats, sync=lambda result: result)

  gen = torch.Generator().manual_seed(0)
  x = torch.randn(n, cin, h, w_, generator=gen)
  weight = 0.1 * torch.randn(cout, cin, kh, kw, generator=gen)
  symmetric = pt == pb and pl == pr

  def conv(x, weight):
    if not symmetric:
      x = F.pad(x, (pl, pr, pt, pb))
    return F.conv2d(x, weight, stride=c.strides, padding=(pt, pl) if symmetric else 0,
                    dilation=c.rhs_dilation)

  out = {}
  with torch.inference_mode():
    for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
      xl = x.contiguous(memory_format=fmt)
      weight_l = weight.contiguous(memory_format=fmt)
      y = conv(xl, weight_l)
      out[f"torch_{layout}_forward_ms"] = sync_ms(lambda: conv(xl, weight_l))
      if symmetric:
        out[f"torch_{layout}_input_grad_ms"] = sync_ms(lambda: torch.nn.grad.conv2d_input(
            xl.shape, weight_l, y, stride=c.strides, padding=(pt, pl),
            dilation=c.rhs_dilation))
  return out


def network(config, batch: int, device):
  """(score fn(variables, x), variables, x [batch, H, W, C] in [0, 1]) of the config's score
  network with jaxpure's random initialisation (`bench_attack.network_variables`)."""
  import jax
  import jax.numpy as jnp
  from benchmarks.bench_attack import network_variables
  from jaxpure import model_specs
  variables, _ = network_variables(config, None, 0, device)
  score = model_specs.score_fn(config)
  x = jax.device_put(jax.random.uniform(
      jax.random.key(1), (batch,) + model_specs.image_shape(config)), device)
  # t: the network's time input where it has one (DDPM++: the VP time; NCSNv2 ignores it).
  t = jax.device_put(jnp.full((batch,), 0.1, jnp.float32), device)
  return (lambda v, y: score(v, y, t)), variables["score"], x


def run(args) -> dict:
  import jax
  import jax.numpy as jnp
  device = common.select_device(args.device)
  torch_ok = False
  if args.torch and args.device == "cpu":
    try:
      import torch
      torch.set_num_threads(os.cpu_count() or 1)
      torch_ok = True
    except ImportError:
      print("PyTorch is not installed: its column is skipped")
  from benchmarks.bench_purify import load_config
  from jaxpure import model_specs
  config = load_config(args.config)  # one line and exit 2 if it is missing or broken
  if args.batch is None:
    args.batch = 2560 if model_specs.image_shape(config)[0] <= 16 else 16
  info = common.describe(device)
  common.print_header("bench_conv_floor", {**info, "batch": args.batch,
                                           "config": os.path.relpath(args.config)})
  score, params, x = network(config, args.batch, device)
  cases = convolutions(jax.make_jaxpr(score)(params, x).jaxpr)
  if not cases:
    common.fail("the network has no convolution")

  fwd = jax.jit(score)
  ct = fwd(params, x)
  grad = jax.jit(lambda p, y: jax.grad(lambda z: jnp.vdot(score(p, z), ct))(y))
  net = {"forward_ms": median_ms(lambda: fwd(params, x), args.repeats),
         "input_grad_ms": median_ms(lambda: grad(params, x), args.repeats)}

  empty = jax.jit(lambda a: a)
  token = jax.device_put(jnp.zeros(()), device)
  call_ms = median_ms(lambda: empty(token), max(args.repeats, 20))
  print(f"an empty jitted call: {call_ms:.3f} ms (taken off each convolution's time)")
  rows = []
  print(f"{'n':>3}  {'convolution (NHWC * HWIO)':52s} {'fwd ms':>8} {'in-grad ms':>10}"
        + ("  torch nchw fwd/grad  channels_last fwd/grad" if torch_ok else ""))
  for c, count in sorted(cases.items(), key=lambda kv: -kv[1]):
    f_ms, g_ms = (max(t - call_ms, 0.0) for t in jax_conv_ms(c, args.repeats, device))
    row = {"case": describe_case(c), "count": count, "forward_ms": f_ms, "input_grad_ms": g_ms}
    if torch_ok:
      row.update(torch_conv_ms(c, args.repeats) or {})
    rows.append(row)
    line = f"{count:3d}  {row['case']:52s} {f_ms:8.2f} {g_ms:10.2f}"
    if torch_ok and "torch_nchw_forward_ms" in row:
      line += "  " + "  ".join(
          f"{row.get(f'torch_{l}_forward_ms', float('nan')):6.2f}/"
          f"{row.get(f'torch_{l}_input_grad_ms', float('nan')):6.2f}"
          for l in ("nchw", "channels_last"))
    print(line)

  def total(key, among=rows):
    return sum(r["count"] * r[key] for r in among if key in r)

  sums = {"conv_forward_ms": total("forward_ms"), "conv_input_grad_ms": total("input_grad_ms")}
  if torch_ok:
    for layout in ("nchw", "channels_last"):
      for kind in ("forward", "input_grad"):
        key = f"torch_{layout}_{kind}_ms"
        sums[f"conv_{key}"] = total(key)
  floor = 2 * sums["conv_forward_ms"] + sums["conv_input_grad_ms"]
  report = {"info": info, "batch": args.batch, "empty_call_ms": call_ms, "network": net,
            "convolutions": rows, "sums": sums, "checkpointed_gradient_floor_ms": floor}
  print(f"network forward: {net['forward_ms']:.1f} ms; its convolutions alone: "
        f"{sums['conv_forward_ms']:.1f} ms ({sums['conv_forward_ms'] / net['forward_ms']:.0%})")
  both = sums["conv_forward_ms"] + sums["conv_input_grad_ms"]
  print(f"network input gradient (forward + backward): {net['input_grad_ms']:.1f} ms; its "
        f"convolutions alone: {both:.1f} ms ({both / net['input_grad_ms']:.0%})")
  print(f"checkpointed exact-gradient evaluation (forward, recomputed forward, backward): "
        f"at least {floor:.1f} ms of convolutions; the network itself: "
        f"{net['forward_ms'] + net['input_grad_ms']:.1f} ms")
  if torch_ok:
    for layout in ("nchw", "channels_last"):
      f_key, g_key = f"conv_torch_{layout}_forward_ms", f"conv_torch_{layout}_input_grad_ms"
      print(f"PyTorch {layout} on the same convolutions: forward {sums[f_key]:.1f} ms, input "
            f"gradient {sums[g_key]:.1f} ms (asymmetric paddings have no input-gradient time)")
      # the same floors with PyTorch's kernels: what jaxpure's gradient would cost if XLA ran
      # its convolutions as fast as PyTorch does on this machine. Over the convolutions with
      # both PyTorch times; the others (see torch_conv_ms) are left out and counted.
      both_keys = (f"torch_{layout}_forward_ms", f"torch_{layout}_input_grad_ms")
      timed = [r for r in rows if all(k in r for k in both_keys)]
      torch_fwd, torch_grad = (total(k, timed) for k in both_keys)
      untimed = sum(r["count"] for r in rows) - sum(r["count"] for r in timed)
      report[f"checkpointed_gradient_floor_torch_{layout}_ms"] = 2 * torch_fwd + torch_grad
      report[f"autograd_floor_torch_{layout}_ms"] = torch_fwd + torch_grad
      report[f"convolutions_without_torch_{layout}_time"] = untimed
      print(f"  at these speeds: a checkpointed evaluation's convolutions (2 x forward + input "
            f"gradient) {2 * torch_fwd + torch_grad:.1f} ms; without the recomputed forward "
            f"(autograd's forward + backward) {torch_fwd + torch_grad:.1f} ms"
            + (f" ({untimed} convolution(s) without both PyTorch times left out)"
               if untimed else ""))
  return report


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    report = run(args)
  except Exception as e:  # noqa: BLE001
    if common.is_out_of_memory(e):
      common.fail(f"out of memory at batch {args.batch}: try a smaller --batch")
    raise
  try:
    common.write_json(args.json, report)
  except OSError as e:
    common.fail(f"--json {args.json}: {e.strerror or e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
