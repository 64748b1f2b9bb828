"""Purification throughput: jaxpure's jitted ADP purifier against two PyTorch versions.

  pip install -e ".[bench]"
  python benchmarks/bench_purify.py --quick                       # digits-size net, minutes
  python benchmarks/bench_purify.py                               # CIFAR-10 size (slow on CPU)
  python benchmarks/bench_purify.py --quick --workdir runs/digits  # a trained score network

In one process and on the same inputs, weights and noise it times
- `jaxpure`: `jaxpure.purify.make_purifier(h, settings)` (ADP: one `lax.scan`, vmapped
  restarts, noise drawn inside from the per-example keys), after compilation;
- `pytorch_official_loop`: `torch_reference.purify_official_loop` (loops over restarts and
  steps, host synchronisation every step, early break when a chain has stopped);
- `pytorch_batched`: `torch_reference.make_batched_purifier` (restarts in the batch, no host
  synchronisation, inference mode), eager and `torch.compile`d; the faster of the two counts.
The PyTorch versions get the weights converted from the Flax parameters and the very x0
(randomised inputs of all R restarts) that jaxpure draws from its keys, read from jaxpure's
own trace. Their outputs must agree with jaxpure's to --tolerance (max abs difference) before
anything is timed; otherwise the script says so and exits 1.

images/s = B / (seconds to purify a batch of B images with all R restarts and T steps);
each number is the median of --repeats timed runs after one untimed warm-up run, the
implementations taking turns within every repeat. Without --workdir the score network has
jaxpure's random initialisation (the same init as training): fine for timing, though how
many steps examples take before stopping depends on the weights, and that changes the
official loop's time (it breaks early), not the others'.

Modes: --quick: configs/digits.py (8x8x1, ngf 8), 256 test digits. Default (full):
configs/cifar10.py (32x32x3, ngf 128), batch 100 (CIFAR-10 test images when the TFDS set is
prepared, else uniform noise images). Both: ADP defaults from the config (T 10, R 10).
Bad input (an absent device, a mode that does not fit in memory, an energy head, a bad
checkpoint) prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO_ROOT, os.path.dirname(os.path.abspath(__file__))):
  if path not in sys.path:
    sys.path.insert(0, path)


def fail(message: str, code: int = 2):
  """One line on stderr, then exit (2: bad input; 1: the implementations disagree)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    fail(f"{message} (see --help)")


def parse_args(argv=None) -> argparse.Namespace:
  p = _Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="digits-size net (8x8x1, ngf 8), batch 256: minutes on 2 CPU cores")
  p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "cuda"),
                 help="cpu (default) or gpu/cuda for both JAX and PyTorch")
  p.add_argument("--config", default=None,
                 help="config file (default configs/digits.py with --quick, else cifar10.py)")
  p.add_argument("--workdir", default=None,
                 help="trained run whose EMA score network to load (default: random init)")
  p.add_argument("--batch", type=int, default=None, help="B (default 256 quick, 100 full)")
  p.add_argument("--restarts", type=int, default=None, help="R (default: config, 10)")
  p.add_argument("--repeats", type=int, default=None, help="timed runs (default 5 quick, 3 full)")
  p.add_argument("--tolerance", type=float, default=1e-4,
                 help="max abs difference allowed between outputs (default 1e-4)")
  p.add_argument("--no_torch_compile", action="store_true", help="do not try torch.compile")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
  args = p.parse_args(argv)
  for name in ("batch", "restarts", "repeats"):
    value = getattr(args, name)
    if value is not None and value < 1:
      fail(f"--{name}={value}; expected >= 1")
  if not args.tolerance > 0:
    fail(f"--tolerance={args.tolerance}; expected > 0")
  return args


# ----------------------------------------------------------------------------- set-up
def select_devices(name: str):
  """(JAX device, torch device string) for "cpu" or "gpu"/"cuda"; exits 2 if absent."""
  import jax
  import torch
  if name == "cpu":
    return jax.devices("cpu")[0], "cpu"
  try:
    jax_device = jax.devices("gpu")[0]
  except RuntimeError:
    fail(f"--device {name}: JAX sees no GPU (devices: {[str(d) for d in jax.devices()]})")
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


def score_params(config, workdir: str | None, seed: int):
  """(Flax score module, its params, a description): the EMA params of WORKDIR's latest
  score checkpoint, or jaxpure's own random initialisation."""
  import jax
  from jaxpure import experiment, parallel
  from jaxpure.errors import UserInputError
  module = experiment.score_module(config)
  mesh = parallel.make_mesh(jax.devices()[:1])
  try:
    if workdir is not None:
      state = experiment.load_trained("score", config, workdir, mesh)
      if state is None:
        fail(f"--workdir {workdir}: no score checkpoint under "
             f"{os.path.join(os.path.abspath(workdir), 'checkpoints', 'score')}")
      return module, state.ema_params, f"trained EMA params, step {int(state.step)} ({workdir})"
    state = experiment.init_train_state("score", config, module, jax.random.key(seed), mesh)
    return module, state.ema_params, "random initialisation (jaxpure's init)"
  except UserInputError as e:
    fail(" ".join(str(e).split()))


def test_images(config, n: int, seed: int):
  """(x [n, H, W, C] float32 in [0, 1], description): the first n test images of the
  config's data set when it is available offline, else uniform noise images."""
  import numpy as np
  from jaxpure import data, experiment
  from jaxpure.errors import UserInputError
  try:
    x, _ = data.read_all(data.open_split(config.data.name, "test", config.data.data_dir or None), n)
    if len(x) >= n:
      return x.astype(np.float32), f"{config.data.name} test images"
  except (UserInputError, OSError):
    pass
  rng = np.random.default_rng(seed)
  return (rng.uniform(0, 1, (n,) + experiment.image_shape(config)).astype(np.float32),
          "uniform noise images (data set not prepared)")


def check_memory(shape, batch: int, restarts: int, ngf: int, torch_device: str) -> float:
  """Rough peak activation memory of one purification, bytes; exits 2 if it cannot fit.

  Heuristic: about 16 live float32 feature maps of the full-resolution width
  ([R * B, H, W, ngf]) at the widest point of the network (convolution inputs/outputs,
  residuals, the upsampled RefineNet path), for either framework.
  """
  h, w, _ = shape
  need = 16 * restarts * batch * h * w * ngf * 4
  if torch_device == "cpu":
    try:
      with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
      avail = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
      return need
  else:
    import torch
    avail = torch.cuda.mem_get_info()[0]
  if need > avail:
    fail(f"this mode needs about {need / 2**30:.1f} GiB for activations "
         f"(R*B = {restarts * batch} images of {h}x{w} at width {ngf}), but "
         f"{avail / 2**30:.1f} GiB is available on {torch_device}; lower --batch or --restarts")
  return need


def _is_oom(e: BaseException) -> bool:
  text = str(e)
  return ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
          or "can't allocate memory" in text or type(e).__name__ == "OutOfMemoryError")


# ----------------------------------------------------------------------------- timing
def timed(fn, sync) -> float:
  """Seconds of `sync(fn())`."""
  start = time.perf_counter()
  sync(fn())
  return time.perf_counter() - start


def run_benchmark(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import flax
  import torch

  import torch_reference as tr
  from jaxpure import experiment, purify

  jax_device, torch_device = select_devices("cpu" if args.device == "cpu" else "gpu")
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  torch.set_num_threads(threads)

  config_path = args.config or os.path.join(
      REPO_ROOT, "configs", "digits.py" if args.quick else "cifar10.py")
  config = load_config(config_path)
  if config.score.head != "score":
    fail(f"config.score.head={config.score.head!r}: the PyTorch reference implements the "
         "'score' head only")
  settings = experiment.purify_settings(config)
  if settings.method != "adp" or settings.noise != "gaussian":
    fail(f"purify.method={settings.method!r}, noise={settings.noise!r}: the benchmark times "
         "ADP with Gaussian noise ('adp', 'gaussian')")
  if args.restarts is not None:
    settings = dataclasses.replace(settings, restarts=args.restarts)
  batch = args.batch or (256 if args.quick else 100)
  repeats = args.repeats or (5 if args.quick else 3)
  shape = experiment.image_shape(config)
  ngf = config.score.ngf
  check_memory(shape, batch, settings.restarts, ngf, torch_device)

  report = {"mode": "quick" if args.quick else "full", "config": os.path.relpath(config_path),
            "device": {"requested": args.device, "jax": str(jax_device),
                       "jax_kind": jax_device.device_kind, "torch": torch_device,
                       "cpu_threads": threads, "machine": platform.processor() or platform.machine()},
            "versions": {"python": platform.python_version(), "jax": jax.__version__,
                         "flax": flax.__version__, "torch": torch.__version__},
            "batch": batch, "image_shape": list(shape), "ngf": ngf, "repeats": repeats,
            "settings": dataclasses.asdict(settings)}
  print(f"device: jax {jax_device} ({jax_device.device_kind}), torch {torch_device}, "
        f"{threads} CPU threads (torch.set_num_threads({threads}); XLA uses its own pool)")
  print(f"versions: python {report['versions']['python']}, jax {jax.__version__}, "
        f"flax {flax.__version__}, torch {torch.__version__}")
  print(f"mode: {report['mode']} ({report['config']}): x [B={batch}, {shape[0]}, {shape[1]}, "
        f"{shape[2]}], ngf {ngf}, ADP T={settings.max_iter}, R={settings.restarts}, "
        f"sigma_n {settings.sigma_n}, lam {settings.lam}, tau {settings.tau}; "
        f"median of {repeats} runs after 1 warm-up")

  with jax.default_device(jax_device):
    module, params, weights = score_params(config, args.workdir, args.seed)
    x_np, inputs = test_images(config, batch, args.seed)
    report.update(weights=weights, inputs=inputs)
    print(f"weights: {weights}; inputs: {inputs}")
    params = jax.device_put(params, jax_device)
    x = jax.device_put(jnp.asarray(x_np), jax_device)
    keys = purify.example_keys(jax.random.key(args.seed), jnp.arange(batch))
    h = experiment.score_h(module)

    # x0 of every restart, exactly as jaxpure draws it: iterate 0 of its own trace (the
    # noise does not depend on T, so a one-step purifier gives it cheaply).
    one_step = dataclasses.replace(settings, max_iter=1)
    _, trace = purify.make_purifier(h, one_step, return_trace=True)(params, x, keys)
    x0 = np.asarray(trace["iterates"][:, 0])  # [R, B, H, W, C]

    purifier = purify.make_purifier(h, settings)
    sync_jax = lambda y: y.block_until_ready()
    run_jax = lambda: purifier(params, x, keys)
    first = timed(run_jax, sync_jax)
    out_jax = np.asarray(run_jax())

  # ---- PyTorch: the same weights, the same x0 (NHWC -> NCHW).
  params_np = jax.device_get(params)
  net = tr.net_from_flax(params_np, ngf, shape[2]).to(torch_device)
  conv_diff = flax_torch_max_diff(module, params, net, x0[0], torch_device)
  report["conversion_max_abs_diff"] = conv_diff
  print(f"weight conversion: max |h_flax(x0) - h_torch(x0)| = {conv_diff:.2e}")
  s = tr.AdpSettings(max_iter=settings.max_iter, lam=settings.lam, delta=settings.delta,
                     tau=settings.tau, alpha_min=settings.alpha_min,
                     alpha_max=settings.alpha_max)
  x0_t = torch.from_numpy(np.ascontiguousarray(x0.transpose(0, 1, 4, 2, 3))).to(torch_device)
  to_nhwc = lambda y: y.detach().cpu().numpy().transpose(0, 1, 3, 4, 2)
  sync_torch = ((lambda y: torch.cuda.synchronize()) if torch_device == "cuda"
                else (lambda y: None))

  steps_run = []
  out_loop = to_nhwc(tr.purify_official_loop(net, x0_t, s, steps_run))
  variants = {"eager": tr.make_batched_purifier(net, s, compile=False)}
  out_batched = {"eager": to_nhwc(variants["eager"](x0_t))}
  compile_note = "not tried (--no_torch_compile)"
  if not args.no_torch_compile:
    try:
      compiled = tr.make_batched_purifier(net, s, compile=True)
      start = time.perf_counter()
      out_batched["compiled"] = to_nhwc(compiled(x0_t))
      variants["compiled"] = compiled
      compile_note = f"works (first call {time.perf_counter() - start:.1f} s incl. compilation)"
    except Exception as e:  # noqa: BLE001  (inductor needs a C++ toolchain; anything may fail)
      if _is_oom(e):
        raise
      compile_note = f"failed, eager used: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
  print(f"torch.compile: {compile_note}")
  report["torch_compile"] = compile_note

  # ---- agreement, before any timing
  diffs = {"pytorch_official_loop": float(np.max(np.abs(out_jax - out_loop)))}
  for name, out in out_batched.items():
    diffs[f"pytorch_batched_{name}"] = float(np.max(np.abs(out_jax - out)))
  report["max_abs_diff_vs_jaxpure"] = diffs
  report["official_loop_steps_per_restart"] = steps_run
  for name, d in diffs.items():
    print(f"agreement: max |jaxpure - {name}| = {d:.2e}")
  print(f"official loop: steps run per restart (of {settings.max_iter}): {steps_run}")
  bad = {k: v for k, v in diffs.items() if not v <= args.tolerance}
  if bad:
    fail(f"purified outputs disagree beyond {args.tolerance:g}: "
         + ", ".join(f"{k} {v:.3e}" for k, v in bad.items()), code=1)

  # ---- timing: one warm-up each (already done above for all), then turns within repeats
  runs = {"jaxpure": (run_jax, sync_jax),
          "pytorch_official_loop": (lambda: tr.purify_official_loop(net, x0_t, s), sync_torch)}
  for name, fn in variants.items():
    runs[f"pytorch_batched_{name}"] = ((lambda fn=fn: fn(x0_t)), sync_torch)
  seconds = {name: [] for name in runs}
  for _ in range(repeats):
    for name, (fn, sync) in runs.items():
      seconds[name].append(timed(fn, sync))
  median = {name: statistics.median(v) for name, v in seconds.items()}
  best_batched = min((k for k in median if k.startswith("pytorch_batched_")), key=median.get)
  ips = {name: batch / t for name, t in median.items()}
  ips["pytorch_batched"] = ips[best_batched]
  report.update(seconds=seconds, images_per_sec=ips, pytorch_batched_is=best_batched,
                jaxpure_compile_s=max(first - median["jaxpure"], 0.0))
  print(f"jaxpure compile: {report['jaxpure_compile_s']:.1f} s "
        f"(first call {first:.1f} s minus the median run)")
  for name in runs:
    print(f"{name}: {ips[name]:.1f} images/s (median {median[name]:.3f} s per batch of "
          f"{batch}; runs {', '.join(f'{t:.3f}' for t in seconds[name])})")
  print(f"pytorch_batched = {best_batched}")
  report["ratios"] = {
      "jaxpure/pytorch_official_loop": ips["jaxpure"] / ips["pytorch_official_loop"],
      "jaxpure/pytorch_batched": ips["jaxpure"] / ips["pytorch_batched"]}
  print(f"ratio jaxpure/pytorch_official_loop: {report['ratios']['jaxpure/pytorch_official_loop']:.2f}")
  print(f"ratio jaxpure/pytorch_batched: {report['ratios']['jaxpure/pytorch_batched']:.2f}")
  return report


def flax_torch_max_diff(module, params, net, x_nhwc, torch_device: str) -> float:
  """max |h_flax(x) - h_torch(x)| on x [N, H, W, C] (NHWC numpy) with the converted net."""
  import numpy as np
  import torch
  y_flax = np.asarray(module.apply({"params": params}, x_nhwc))
  with torch.inference_mode():
    x_t = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).to(torch_device)
    y_torch = net(x_t).cpu().numpy().transpose(0, 2, 3, 1)
  return float(np.max(np.abs(y_flax - y_torch)))


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  try:
    import torch  # noqa: F401
  except ImportError:
    fail('PyTorch is not installed: pip install -e ".[bench]"')
  try:
    report = run_benchmark(args)
  except Exception as e:  # noqa: BLE001
    if _is_oom(e):
      fail(f"out of memory: {' '.join(str(e).split())[:300]}; lower --batch or --restarts")
    raise
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
