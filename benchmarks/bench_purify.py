"""Purification throughput: jaxpure's jitted ADP purifier against two PyTorch versions.

  pip install -e ".[bench]"
  python benchmarks/bench_purify.py --quick                        # digits-size net, minutes
  python benchmarks/bench_purify.py --quick --workdir runs/digits  # a trained score network
  python benchmarks/bench_purify.py                                # CIFAR-10 size (GPU-sized)
  python benchmarks/bench_purify.py --batch 2 --restarts 2        # CIFAR-10 size, cut down

In one process, on the same inputs, weights and noise, it times
- `jaxpure`: the real defense's purifier, `jaxpure.defense.Defense.make_purifier(R)` with the
  ADP family (`jaxpure.purifiers.adp`: one `lax.scan` of ADP steps, vmapped restarts, noise
  drawn inside from per-example keys), after compilation (compile time reported apart);
- `pytorch_official_loop`: `torch_reference.purify_official_loop`, structured as ADP's
  official code: Python loops over restarts and steps, the stopping test read back on the
  host every step (a restart's chain breaks once all its examples have stopped), no_grad;
- `pytorch_batched`: `torch_reference.make_batched_purifier`: restarts folded into the
  batch, the stopping mask kept on the device, inference_mode, channels_last on CPU; eager,
  and also `torch.compile`d unless --torch_compile off (default off with --quick, where
  compiling takes minutes on 2 CPU cores); the faster of the two is `pytorch_batched`.
The PyTorch networks carry the Flax parameters (converted by name, HWIO -> OIHW) and start
from the very x0 (randomised inputs of all R restarts) that jaxpure draws from its keys, read
from jaxpure's own trace.

Agreement, checked before any timing (exit 1 if it fails): on the first --check_batch
images with all R restarts and T steps, in float64, every PyTorch variant's purified images
must equal jaxpure's to --tolerance (max abs difference, default 1e-4; measured ~1e-12), once
with the configured tau and once with tau = 0 (no example stops: every step compared).
float64 because ADP's step size, lam delta / (1 - <g, h(x + delta g)> / <g, g>) with
delta = 1e-3, is a finite difference: the ~1e-6 float32 rounding differences of two
convolution libraries move alpha by up to ~1e-2 relative, and the float32 outputs of any two
implementations (two PyTorch batch sizes included) differ by ~5e-3 after 10 steps. Those
float32 differences on the timed batch are printed too, as information.

images/s = B / (seconds to purify a batch of B images with all R restarts and T steps): the
median of --repeats timed runs, after an untimed warm-up round, the implementations taking
turns within every round. torch uses torch.set_num_threads(<CPUs available>); XLA sizes its
own thread pool. Without --workdir the score network has jaxpure's random initialisation
(the same init as training): fine for timing, except that how many steps examples take before
stopping depends on the weights, which changes the official loop's time (it breaks early).

Modes: --quick: configs/digits.py (8x8x1, ngf 8), B = 256 digits test images. Default (full):
configs/cifar10.py (32x32x3, ngf 128), B = 100 (CIFAR-10 test images if the TFDS set is
prepared, else uniform noise images): ~280 TFLOP per purification, for a GPU (--device gpu);
on a CPU cut it down with --batch/--restarts. Both: the config's ADP settings (T 10, R 10).
Bad input (an absent device, a mode that does not fit in memory, an energy head, a bad
checkpoint or flag) prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks import common  # noqa: E402
from benchmarks.common import fail  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="digits-size net (8x8x1, ngf 8), B 256: minutes on 2 CPU cores")
  p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "cuda"),
                 help="cpu (default) or gpu (= cuda) for both JAX and PyTorch")
  p.add_argument("--config", default=None,
                 help="config file (default configs/digits.py with --quick, else cifar10.py)")
  p.add_argument("--workdir", default=None,
                 help="trained run whose EMA score network to load (default: random init)")
  p.add_argument("--batch", type=int, default=None, help="B (default 256 quick, 100 full)")
  p.add_argument("--restarts", type=int, default=None, help="R (default: the config's, 10)")
  p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5 quick, 3 full)")
  p.add_argument("--tolerance", type=float, default=1e-4,
                 help="max abs difference allowed in the float64 agreement check")
  p.add_argument("--check_batch", type=int, default=16,
                 help="images (x all R restarts) in the float64 agreement check (default 16)")
  p.add_argument("--torch_compile", default="auto", choices=("auto", "on", "off"),
                 help="also time a torch.compile'd batched variant (auto: off with --quick)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
  args = p.parse_args(argv)
  for name in ("batch", "restarts", "repeats", "check_batch"):
    value = getattr(args, name)
    if value is not None and value < 1:
      fail(f"--{name}={value}; expected >= 1")
  if not args.tolerance > 0:
    fail(f"--tolerance={args.tolerance}; expected > 0")
  return args


# ----------------------------------------------------------------------------- set-up
def select_devices(name: str):
  """(JAX device, torch device string) for "cpu" or "gpu"/"cuda"; exits 2 if absent."""
  import torch
  if name == "cpu":
    return common.select_device("cpu"), "cpu"
  jax_device = common.select_device("gpu")
  if not torch.cuda.is_available():
    fail(f"--device {name}: PyTorch sees no CUDA device (torch {torch.__version__})")
  return jax_device, "cuda"


def load_config(path: str):
  """`get_config()` of a config file (a path like configs/digits.py)."""
  if not os.path.isfile(path):
    fail(f"--config {path}: no such file")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config()
  except Exception as e:  # noqa: BLE001  (whatever the config file raised)
    fail(f"cannot load --config {path}: {' '.join(str(e).split())}")


def begin_run(args):
  """(JAX device, torch device string, torch's threads, config path, config) of a run against
  PyTorch: the devices of --device, PyTorch on every core this process may use, and --config
  (default: configs/digits.py with --quick, else configs/cifar10.py)."""
  import torch
  jax_device, torch_device = select_devices("cpu" if args.device == "cpu" else "gpu")
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  torch.set_num_threads(threads)
  config_path = args.config or os.path.join(
      REPO_ROOT, "configs", "digits.py" if args.quick else "cifar10.py")
  return jax_device, torch_device, threads, config_path, load_config(config_path)


def score_params(config, workdir: str | None, seed: int, device):
  """(Flax score module, its params on `device`, a description): the EMA params of WORKDIR's
  latest score checkpoint (jaxpure's loader), or jaxpure's own random initialisation."""
  import jax
  from jaxpure import model_specs, parallel
  from jaxpure.errors import UserInputError
  from jaxpure.jobs import loading, train
  spec = model_specs.SCORE
  module = spec.build(config)
  mesh = parallel.make_mesh([device])
  try:
    if workdir is not None:
      found = loading.load_model(spec, config, workdir, mesh, required=False)
      if found is None:
        fail(f"--workdir {workdir}: no score checkpoint under "
             f"{loading.model_dir(workdir, spec.kind)}")
      params = found.variables["params"]
      what = f"trained EMA params, step {found.step} ({workdir})"
    else:
      state = train.init_train_state(spec, config, module, jax.random.key(seed), mesh)
      params = state.ema_params
      what = "random initialisation (jaxpure's init)"
  except UserInputError as e:
    fail(" ".join(str(e).split()))
  return module, jax.device_put(params, device), what


def test_images(config, n: int, seed: int):
  """(x [n, H, W, C] float32 in [0, 1], description): the first n test images of the
  config's data set when it is available offline, else uniform noise images."""
  import numpy as np
  from jaxpure import data, model_specs
  from jaxpure.errors import UserInputError
  try:
    split = data.open_split(config.data.name, "test", config.data.data_dir or None)
    x, _ = data.read_all(split, n)
    if len(x) >= n:
      return x.astype(np.float32), f"{config.data.name} test images"
  except (UserInputError, OSError):
    pass
  rng = np.random.default_rng(seed)
  return (rng.uniform(0, 1, (n,) + model_specs.image_shape(config)).astype(np.float32),
          "uniform noise images (data set not prepared)")


def check_memory(shape, batch: int, restarts: int, ngf: int, torch_device: str) -> int:
  """Rough peak activation memory of one purification, bytes; exits 2 if it cannot fit.

  Heuristic: about 16 live float32 feature maps of the full-resolution width,
  [R * B, H, W, ngf], at the widest point of the network (convolution inputs and outputs,
  residuals, the upsampled RefineNet path), for either framework.
  """
  h, w, _ = shape
  need = 16 * restarts * batch * h * w * ngf * 4
  if torch_device == "cpu":
    try:
      with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
      avail = info["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError):
      return need
  else:
    import torch
    avail = torch.cuda.mem_get_info()[0]
  if need > avail:
    fail(f"this mode needs about {need / 2**30:.1f} GiB for activations "
         f"(R*B = {restarts * batch} images of {h}x{w} at width {ngf}), but "
         f"{avail / 2**30:.1f} GiB is available on {torch_device}; lower --batch or --restarts")
  return need


# ----------------------------------------------------------------------------- pieces
def defense_params(params) -> dict:
  """The defense's parameters for a score network's `params` tree (no classifier needed)."""
  return {"score": {"params": params}}


def jaxpure_purify(defense, params, x, keys):
  """(purified [R, B, H, W, C], trace) of jaxpure's purifier, R = defense.restarts, jitted."""
  import jax
  fn = jax.jit(lambda p, x, k: defense.purify(p, x, k, defense.restarts))
  return fn(defense_params(params), x, keys)


def jaxpure_x0(defense, params, x, keys):
  """x0 [R, B, H, W, C] in [0, 1] of every restart exactly as jaxpure's purifier draws it:
  iterate 0 of its own trace (the noise does not depend on T: a one-step purifier gives it)."""
  one_step = dataclasses.replace(
      defense, settings=dataclasses.replace(defense.settings, max_iter=1))
  _, trace = jaxpure_purify(one_step, params, x, keys)
  return trace["iterates"][:, 0]


def to_torch(x_nhwc, device: str):
  """Array [..., H, W, C] -> torch tensor [..., C, H, W] on `device` (a contiguous copy)."""
  import numpy as np
  import torch
  x = np.asarray(x_nhwc)
  axes = tuple(range(x.ndim - 3)) + (x.ndim - 1, x.ndim - 3, x.ndim - 2)
  return torch.from_numpy(np.array(x.transpose(axes), order="C")).to(device)


def to_nhwc(y):
  """torch tensor [..., C, H, W] -> NumPy [..., H, W, C]."""
  y = y.detach().cpu().numpy()
  return y.transpose(tuple(range(y.ndim - 3)) + (y.ndim - 2, y.ndim - 1, y.ndim - 3))


def torch_variants(params_np, ngf: int, channels: int, settings, device: str, dtype,
                   compile: bool) -> dict:
  """{name: purify(x0 torch [R, B, C, H, W] in [0, 1]) -> same shape}: the official loop
  (NCHW, as ADP's code; takes an optional `steps_run` list) and the batched variant
  (channels_last on CPU), eager and, if `compile`, with the network torch.compile'd."""
  import torch
  from benchmarks import torch_reference as tr
  s = tr.AdpSettings.like(settings)
  loop_net = tr.net_from_flax(params_np, ngf, channels).to(device=device, dtype=dtype)
  fast_net = tr.net_from_flax(params_np, ngf, channels).to(device=device, dtype=dtype)
  channels_last = device == "cpu"
  if channels_last:
    fast_net = fast_net.to(memory_format=torch.channels_last)
  out = {"pytorch_official_loop": (
             lambda x0, steps_run=None: tr.purify_official_loop(loop_net, x0, s, steps_run)),
         "pytorch_batched_eager": tr.make_batched_purifier(fast_net, s, False, channels_last)}
  if compile:
    out["pytorch_batched_compiled"] = tr.make_batched_purifier(fast_net, s, True, channels_last)
  return out


def check_agreement_float64(module, params, x_np, defense, seed: int, n: int, device: str,
                            compile: bool) -> tuple[dict, float]:
  """({variant: max |jaxpure - variant|} over the purified [R, n, H, W, C], the fraction of
  the R * n * T steps that jaxpure took before stopping), all in float64, from jaxpure's x0,
  for the first n examples of the batch (examples never interact, and their keys depend on
  their index only)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from jaxpure.purifiers import common as purifier_common
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
    x = jnp.asarray(x_np[:n], jnp.float64)
    keys = purifier_common.example_keys(jax.random.key(seed), jnp.arange(n))
    x0 = np.asarray(jaxpure_x0(defense, params64, x, keys))
    out_jax, trace = jaxpure_purify(defense, params64, x, keys)
    out_jax, active = np.asarray(out_jax), float(np.mean(trace["step_mask"]))
  variants = torch_variants(jax.device_get(params), module.ngf, module.channels,
                            defense.settings, device, torch.float64, compile)
  x0_t = to_torch(x0, device)
  return {name: float(np.max(np.abs(out_jax - to_nhwc(fn(x0_t)))))
          for name, fn in variants.items()}, active


def flax_torch_max_diff(module, params, x_nhwc, device: str) -> float:
  """max |h_flax(x) - h_torch(x)| (float32) on x [N, H, W, C] with the converted network."""
  import jax
  import numpy as np
  import torch
  from benchmarks import torch_reference as tr
  net = tr.net_from_flax(jax.device_get(params), module.ngf, module.channels).to(device)
  y_flax = np.asarray(jax.jit(module.apply)({"params": params}, x_nhwc))
  with torch.inference_mode():
    y_torch = to_nhwc(net(to_torch(x_nhwc, device)))
  return float(np.max(np.abs(y_flax - y_torch)))


# ----------------------------------------------------------------------------- the run
def run_benchmark(args) -> dict:
  import flax
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from jaxpure import model_specs
  from jaxpure.purifiers import common as purifier_common

  wall_start = time.perf_counter()
  jax_device, torch_device, threads, config_path, config = begin_run(args)
  if config.score.head != "score":
    fail(f"config.score.head={config.score.head!r}: the PyTorch reference implements the "
         "'score' head only")
  from jaxpure import config_checks
  from jaxpure.errors import UserInputError
  try:
    settings = config_checks.check_defense(config)
  except UserInputError as e:
    fail(" ".join(str(e).split()))
  if (config.defense.purifier != "adp" or settings.method != "adp"
      or settings.noise != "gaussian"):
    fail(f"defense.purifier={config.defense.purifier!r}, method="
         f"{getattr(settings, 'method', None)!r}, noise={getattr(settings, 'noise', None)!r}: "
         "the benchmark times ADP with Gaussian noise ('adp', 'adp', 'gaussian')")
  restarts = args.restarts if args.restarts is not None else config.defense.restarts
  from jaxpure import defense as defense_lib
  defense = defense_lib.from_config(config, restarts)  # the ADP family, checked above
  batch = args.batch or (256 if args.quick else 100)
  repeats = args.repeats or (5 if args.quick else 3)
  check_n = min(args.check_batch, batch)
  compile_torch = {"on": True, "off": False}.get(args.torch_compile, not args.quick)
  shape = model_specs.image_shape(config)
  ngf = config.score.ngf
  check_memory(shape, batch, restarts, ngf, torch_device)

  report = {"mode": "quick" if args.quick else "full", "config": os.path.relpath(config_path),
            "device": {"requested": args.device, "jax": str(jax_device),
                       "jax_kind": jax_device.device_kind, "torch": torch_device,
                       "cpu": common.cpu_model(), "cpu_threads": threads},
            "versions": {k: v for k, v in common.describe(jax_device).items()
                         if k in ("python", "jax", "flax", "torch")},
            "batch": batch, "image_shape": list(shape), "ngf": ngf, "repeats": repeats,
            "settings": dict(dataclasses.asdict(settings), restarts=restarts)}
  print(f"device: jax {jax_device} ({jax_device.device_kind}), torch {torch_device}; "
        f"{common.cpu_model()}, {threads} CPU threads (torch.set_num_threads({threads}); "
        "XLA sizes its own pool)")
  print(f"versions: python {report['versions']['python']}, jax {jax.__version__}, "
        f"flax {flax.__version__}, torch {torch.__version__}")
  print(f"mode: {report['mode']} ({report['config']}): x [B={batch}, {shape[0]}, {shape[1]}, "
        f"{shape[2]}] in [0, 1], ngf {ngf}, ADP T={settings.max_iter}, R={restarts}, "
        f"sigma_n {settings.sigma_n}, lam {settings.lam}, delta {settings.delta}, "
        f"tau {settings.tau}; images/s = B / seconds for all R restarts and T steps, median "
        f"of {repeats} rounds after a warm-up round")

  with jax.default_device(jax_device):
    module, params, weights = score_params(config, args.workdir, args.seed, jax_device)
    x_np, inputs = test_images(config, batch, args.seed)
    report.update(weights=weights, inputs=inputs)
    print(f"weights: {weights}; inputs: {inputs}")

    # ---- the converted weights: torch net vs Flax net on noised inputs (float32)
    noised = np.clip(x_np[:64] + settings.sigma_n * np.random.default_rng(args.seed).normal(
        size=x_np[:64].shape), 0, 1).astype(np.float32)
    conv_diff = flax_torch_max_diff(module, params, noised, torch_device)
    report["conversion_max_abs_diff"] = conv_diff
    print(f"weight conversion (float32): max |h_flax(x) - h_torch(x)| = {conv_diff:.2e}")

    # ---- agreement, in float64, before any timing
    # As configured, then with tau = 0 so that every step is taken: how many steps the
    # configured check covers depends on the weights (random ones stop most chains at once).
    bad = {}
    for label, s_check in (("as configured", settings),
                           ("tau = 0, every step", dataclasses.replace(settings, tau=0.0))):
      diffs, active = check_agreement_float64(
          module, params, x_np, dataclasses.replace(defense, settings=s_check), args.seed,
          check_n, torch_device, compile_torch)
      key = "agreement_float64" if s_check is settings else "agreement_float64_tau0"
      report[key] = {"images": check_n, "max_abs_diff": diffs, "tau": s_check.tau,
                     "tolerance": args.tolerance, "fraction_of_steps_taken": active}
      print(f"agreement check (float64, {label}: {check_n} images x R={restarts}, "
            f"{active:.0%} of their {settings.max_iter} steps taken before stopping):")
      for name, d in diffs.items():
        print(f"  max |jaxpure - {name}| = {d:.2e}")
      bad.update({f"{k} ({label})": v for k, v in diffs.items() if not v <= args.tolerance})
    if bad:
      fail("purified outputs disagree: max abs difference above "
           f"{args.tolerance:g} for " + ", ".join(f"{k} ({v:.3e})" for k, v in bad.items()),
           code=1)

    # ---- float32, the timed batch: jaxpure's own purifier and noise
    x = jax.device_put(jnp.asarray(x_np), jax_device)
    keys = purifier_common.example_keys(jax.random.key(args.seed), jnp.arange(batch))
    x0 = jaxpure_x0(defense, params, x, keys)
    purifier = defense.make_purifier(restarts)
    variables = defense_params(params)
    run_jax = lambda: purifier(variables, x, keys)
    sync_jax = lambda y: y.block_until_ready()
    first_jax = common.timed(run_jax, sync_jax)  # compiles
    out_jax = np.asarray(run_jax())

  variants = torch_variants(jax.device_get(params), ngf, shape[2], settings, torch_device,
                            torch.float32, compile_torch)
  x0_t = to_torch(x0, torch_device)
  sync_torch = ((lambda y: torch.cuda.synchronize()) if torch_device == "cuda"
                else (lambda y: None))
  divergence, first_torch, steps_run = {}, {}, []
  for name, fn in variants.items():
    start = time.perf_counter()
    y = fn(x0_t, steps_run) if name == "pytorch_official_loop" else fn(x0_t)
    sync_torch(y)
    first_torch[name] = time.perf_counter() - start  # includes compilation
    divergence[name] = float(np.max(np.abs(out_jax - to_nhwc(y))))
  report["official_loop_steps_per_restart"] = steps_run
  print(f"official loop: steps run per restart (of {settings.max_iter}; a restart stops when "
        f"all its examples have): {steps_run}")
  report["float32_max_abs_diff_not_checked"] = divergence
  print("float32 on the timed batch (information, not a check: see the docstring): "
        + ", ".join(f"max |jaxpure - {k}| = {v:.1e}" for k, v in divergence.items()))
  if compile_torch:
    note = (f"on: network torch.compile'd, first call "
            f"{first_torch['pytorch_batched_compiled']:.1f} s incl. compilation")
  elif args.torch_compile == "off":
    note = "off (--torch_compile off)"
  else:
    note = "off in --quick (compiling takes minutes on 2 CPU cores; --torch_compile on)"
  report["torch_compile"] = note
  print(f"torch.compile: {note}")

  # ---- timing: a warm-up round, then timed rounds; implementations take turns in each
  runs = {"jaxpure": (run_jax, sync_jax)}
  for name, fn in variants.items():
    runs[name] = ((lambda fn=fn: fn(x0_t)), sync_torch)
  seconds = {name: [] for name in runs}
  for i in range(repeats + 1):
    took = {name: common.timed(fn, sync) for name, (fn, sync) in runs.items()}
    print(f"{'warm-up' if i == 0 else f'round {i}/{repeats}'}: "
          + ", ".join(f"{name} {t:.3f} s" for name, t in took.items()), flush=True)
    if i:
      for name, t in took.items():
        seconds[name].append(t)
  median = {name: statistics.median(v) for name, v in seconds.items()}
  best_batched = min((k for k in median if k.startswith("pytorch_batched_")), key=median.get)
  ips = {name: batch / t for name, t in median.items()}
  ips["pytorch_batched"] = ips[best_batched]
  report.update(seconds=seconds, images_per_sec=ips, pytorch_batched_is=best_batched,
                jaxpure_compile_s=max(first_jax - median["jaxpure"], 0.0))
  print(f"jaxpure compile: {report['jaxpure_compile_s']:.1f} s "
        f"(first call {first_jax:.1f} s minus the median run)")
  for name in runs:
    print(f"{name}: {ips[name]:.1f} images/s (median {median[name]:.3f} s per batch of "
          f"{batch})")
  print(f"pytorch_batched = {best_batched}")
  # Each ratio pair by pair within a round (above 1: jaxpure is faster).
  ratios = {"jaxpure/pytorch_official_loop": common.pairwise_ratio(seconds,
                                                                   "pytorch_official_loop"),
            "jaxpure/pytorch_batched": common.pairwise_ratio(seconds, best_batched)}
  report["ratios"] = ratios
  report["total_wall_s"] = time.perf_counter() - wall_start
  print(f"total wall time: {report['total_wall_s']:.0f} s")
  for name, r in ratios.items():
    common.print_ratio(name, r)
  return report


def main(argv=None) -> int:
  return common.run_against_torch(run_benchmark, parse_args(argv),
                                  "lower --batch or --restarts")


if __name__ == "__main__":
  sys.exit(main())
