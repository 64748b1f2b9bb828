"""Attack throughput: the exact EOT gradient of the defense loss, jaxpure against PyTorch autograd.

  pip install -e ".[bench]"
  python benchmarks/bench_attack.py --quick                        # digits nets, minutes
  python benchmarks/bench_attack.py --quick --workdir runs/digits  # trained networks
  python benchmarks/bench_attack.py --device gpu                   # CIFAR-10 size
  python benchmarks/bench_attack.py --batch 2 --n_eot 1           # CIFAR-10 size, cut down
  python benchmarks/bench_attack.py --quick --config configs/digits_diffpure.py  # DiffPure
  python benchmarks/bench_attack.py --device gpu --config configs/cifar10_diffpure.py --max_iter 20
  python benchmarks/bench_attack.py --quick --remat none,save_convolutions,step  # each policy

The gradient is what every exact-gradient attack step computes (`pgd_eot_full`, `apgd_eot`):
per example the cross-entropy of the classifier averaged over n EOT purifications (the
config's purifier, ADP or DiffPure, with its settings), differentiated with respect to the
input through the whole purifier (noise, every step; ADP's adaptive step size and clipping,
DiffPure's diffusion and every reverse step). In one process, on the same weights, batch,
labels and noise, it times
- `jaxpure`: `jaxpure.attacks.eot.exact_eot_gradient` on the config's defense, jitted (the
  purifier's steps one `lax.scan`, rematerialised under the config's `remat` policy, or under
  each policy of --remat: then one implementation `jaxpure_<policy>` per policy, "auto"
  resolved by `jaxpure.purifiers.remat.choose` against --memory_budget_gb); compile time,
  compiled temporary memory, XLA's FLOP count (cost analysis) and the achieved FLOP/s
  reported per policy;
- `pytorch_autograd`: `torch_reference.exact_eot_gradient` (ADP) or
  `torch_diffpure.exact_eot_gradient` (DiffPure): autograd through the Python loop of the
  purifier's steps, every activation kept (Croce et al. 2022's way of attacking purifiers);
- `pytorch_autograd_checkpoint`: the same with each step a `torch.utils.checkpoint` (the
  memory of the iterates only, each step recomputed in the backward pass).
The PyTorch networks carry the Flax parameters (`torch_reference.net_from_flax`,
`torch_diffpure.ddpmpp_from_flax`, `classifier_from_flax`) and use the very noise jaxpure
draws from its keys (ADP's randomisation; DiffPure's diffusion and every step's draw).

Agreement, checked before any timing (exit 1 if it fails): on the first --check_batch images,
in float64, both PyTorch gradients must equal jaxpure's to --tolerance relative to the
largest |gradient| entry (measured ~1e-15), and the noisy starts (ADP's x0, DiffPure's x_t* in
pixels) to 1e-12. float64 because ADP's step size is a finite difference (see bench_purify.py);
the float32 differences on the timed batch are printed as information.

Timing: an untimed warm-up round, then --repeats rounds in which the three implementations
take turns (the order rotates every round); seconds per gradient of the batch are medians.
Every ratio is computed pair by pair within a round (pytorch seconds / jaxpure seconds, so
above 1 means jaxpure is faster) and printed as the median with its min-max over the rounds.
torch uses torch.set_num_threads(<CPUs available>); XLA sizes its own pool.

Memory: jaxpure's compiled temporaries (XLA's memory analysis) and, on a GPU, each PyTorch
variant's peak allocation in its first float32 call are printed. A PyTorch variant that runs
out of device memory there (autograd through the loop keeps every step's activations) is
reported as such and left out of the timing; the others are timed. JAX keeps the memory it
has used in its pool, so PyTorch runs with what is left of the device.

Modes: --quick: configs/digits.py (8x8x1 NCSNv2 ngf 8, small CNN), B = the config's attack
batch (128), n = its apgd_eot EOT (2). Default: configs/cifar10.py (32x32x3, ngf 128, WRN-28-10),
B = 16, n = 2, for a GPU; cut it down on a CPU with --batch/--n_eot/--max_iter. --config
picks another (a DiffPure config needs its DDPM++ score network; --max_iter sets its N). Without
--workdir the networks have jaxpure's random initialisation: fine for timing (how many
examples stop early depends on the weights, but both sides run all T steps). Bad input prints
one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks import common  # noqa: E402
from benchmarks.common import fail  # noqa: E402

IMPLEMENTATIONS = ("jaxpure", "pytorch_autograd", "pytorch_autograd_checkpoint")


def parse_args(argv=None) -> argparse.Namespace:
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="digits nets (8x8x1, ngf 8, small CNN): minutes on 2 CPU cores")
  p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "cuda"),
                 help="cpu (default) or gpu (= cuda) for both JAX and PyTorch")
  p.add_argument("--config", default=None,
                 help="config file (default configs/digits.py with --quick, else cifar10.py)")
  p.add_argument("--workdir", default=None,
                 help="trained run whose score network and classifier to load "
                      "(default: random init)")
  p.add_argument("--batch", type=int, default=None,
                 help="B (default: the config's attack batch with --quick, else 16)")
  p.add_argument("--n_eot", type=int, default=None,
                 help="EOT purifications per gradient (default: the config's apgd_eot n_eot)")
  p.add_argument("--max_iter", type=int, default=None,
                 help="the purifier's steps: ADP's T or DiffPure's N (default: the config's)")
  p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5 quick, 3 full)")
  p.add_argument("--tolerance", type=float, default=1e-8,
                 help="largest float64 gradient difference allowed, relative to max |gradient|")
  p.add_argument("--check_batch", type=int, default=8,
                 help="images in the float64 agreement check (default 8; 0 skips the check)")
  p.add_argument("--remat", default=None,
                 help="comma-separated remat policies to time jaxpure under (none, "
                      "save_convolutions, step, auto; default: the config's)")
  p.add_argument("--memory_budget_gb", type=float, default=0.0,
                 help="budget of --remat auto in GiB (default 0: the device's default, "
                      "jaxpure.purifiers.remat.default_budget_bytes)")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="the device's peak TFLOP/s for the achieved fraction (default: a known "
                      "GPU's float32 figures, none on the CPU)")
  p.add_argument("--compile_only", action="store_true",
                 help="compile jaxpure's gradient under each --remat policy and stop (fills a "
                      "compilation cache: benchmarks/gpu_suite.py)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
  args = p.parse_args(argv)
  for name in ("batch", "n_eot", "max_iter", "repeats"):
    value = getattr(args, name)
    if value is not None and value < 1:
      fail(f"--{name}={value}; expected >= 1")
  if args.check_batch < 0:
    fail(f"--check_batch={args.check_batch}; expected >= 0")
  if args.remat is not None:
    from jaxpure.purifiers import remat
    args.remat = [p.strip() for p in args.remat.split(",") if p.strip()]
    bad = [p for p in args.remat if p not in remat.POLICIES]
    if bad or not args.remat or len(set(args.remat)) != len(args.remat):
      fail(f"--remat {','.join(args.remat)}: expected distinct names from {remat.POLICIES}")
  if not args.tolerance > 0:
    fail(f"--tolerance={args.tolerance}; expected > 0")
  return args


# ----------------------------------------------------------------------------- set-up
def score_description(config) -> str:
  """'NCSNv2 ngf 8' / 'DDPM++ nf 32': the score network, for the report."""
  if config.score.model == "ddpmpp":
    return f"DDPM++ nf {config.score.nf}"
  return f"NCSNv2 ngf {config.score.ngf}"


def network_variables(config, workdir: str | None, seed: int, device) -> tuple[dict, str]:
  """({"score": variables, "classifier": variables} on `device`, a description): the latest
  checkpoints of WORKDIR (jaxpure's loader), or jaxpure's random initialisation."""
  import jax
  import jax.numpy as jnp
  from jaxpure import model_specs, parallel
  from jaxpure.errors import UserInputError
  from jaxpure.jobs import loading
  out, what = {}, []
  mesh = parallel.make_mesh([device])
  x1 = jnp.zeros((1,) + model_specs.image_shape(config), jnp.float32)
  for i, role in enumerate(model_specs.ROLES):
    spec = model_specs.SPECS[role]
    module = spec.build(config)
    try:
      found = (loading.load_model(spec, config, workdir, mesh, required=False)
               if workdir is not None else None)
    except UserInputError as e:
      fail(" ".join(str(e).split()))
    if workdir is not None and found is None:
      fail(f"--workdir {workdir}: no {role} checkpoint under {loading.model_dir(workdir, role)}")
    if found is not None:
      out[role] = dict(found.variables)
      what.append(f"{role}: trained, step {found.step}")
    else:
      out[role] = dict(jax.jit(lambda k, x, spec=spec, module=module: spec.init(module, k, x))(
          jax.random.key(seed + i), x1))
      what.append(f"{role}: random initialisation")
  return jax.device_put(out, device), "; ".join(what)


def eot_noise(keys, x, n: int, sigma_n: float):
  """[n, B, H, W, C]: the randomising noise jaxpure's ADP draws for EOT sample i of example b
  (restart key i of b, split, first half: `jaxpure.purifiers.adp.purify_chain`)."""
  import jax
  from jaxpure.purifiers import common as pc
  rkeys = pc.restart_keys(keys, n)  # [n, B]
  return jax.vmap(lambda ks: sigma_n * pc.normal_like(
      jax.vmap(lambda k: jax.random.split(k)[0])(ks), x))(rkeys)


def diffpure_noise(keys, x, n: int, num_steps: int):
  """(noise [n, B, H, W, C], step_noise [n, N, B, H, W, C]): the standard normal draws
  jaxpure's DiffPure makes for EOT sample i of example b (restart key i of b, split: the first
  half diffuses to t*, the second folded with the step number draws each reverse step's noise:
  `jaxpure.purifiers.diffpure.purify_chain`)."""
  import jax
  import jax.numpy as jnp
  from jaxpure.purifiers import common as pc

  def one(ks):
    k_diffuse, k_steps = jnp.moveaxis(jax.vmap(jax.random.split)(ks), 1, 0)
    steps = jax.vmap(lambda i: pc.normal_like(pc.fold(k_steps, i), x))(jnp.arange(num_steps))
    return pc.normal_like(k_diffuse, x), steps

  return jax.vmap(one)(pc.restart_keys(keys, n))


def purifier_noise(defense, keys, x, n: int) -> dict:
  """The noise jaxpure's purifier draws for n EOT samples, as NumPy arrays handed to PyTorch:
  {"noise": ...} for ADP (sigma_n-scaled), plus "step_noise" for DiffPure."""
  import numpy as np
  if defense.family.NAME == "diffpure":
    noise, steps = diffpure_noise(keys, x, n, defense.settings.num_steps)
    return {"noise": np.asarray(noise), "step_noise": np.asarray(steps)}
  return {"noise": np.asarray(eot_noise(keys, x, n, defense.settings.sigma_n))}


def noisy_start(defense, x, noise: dict):
  """[n, B, H, W, C]: the purifications' first iterate in pixels as the PyTorch reference
  computes it from the handed noise: clip(x + noise) for ADP, DiffPure's x_t* mapped back to
  [0, 1] and clipped (`torch_diffpure.diffuse`)."""
  import numpy as np
  x = np.asarray(x)
  if defense.family.NAME != "diffpure":
    return np.clip(x[None] + noise["noise"], 0, 1)
  from benchmarks import torch_diffpure as td
  from benchmarks.bench_purify import to_nhwc, to_torch
  s = td.DiffPureSettings.like(defense.settings)
  n = noise["noise"].shape[0]
  flat = lambda a: to_torch(np.reshape(a, (-1,) + x.shape[1:]), "cpu")  # noqa: E731
  x_t = td.diffuse(flat(np.broadcast_to(x, (n,) + x.shape)), flat(noise["noise"]), s)
  return to_nhwc(((x_t + 1.0) / 2.0).clamp(0.0, 1.0)).reshape((n,) + x.shape)


def torch_networks(variables, config, device: str, dtype):
  import jax
  from benchmarks import torch_diffpure as td
  from benchmarks import torch_reference as tr
  from jaxpure import model_specs, models
  score = models.fields(model_specs.SCORE.build(config))
  params = jax.device_get(variables["score"]["params"])
  if config.score.model == "ddpmpp":
    net = td.ddpmpp_from_flax(params, dict(score, image_size=model_specs.image_shape(config)[0]))
  else:
    net = tr.net_from_flax(params, score["ngf"], score["channels"], score.get("pool", "max"))
  clf_module = model_specs.CLASSIFIER.build(config)
  clf = tr.classifier_from_flax(jax.device_get(variables["classifier"]), config.classifier.model,
                                models.fields(clf_module), model_specs.image_shape(config))
  return net.to(device=device, dtype=dtype), clf.to(device=device, dtype=dtype)


def torch_gradients(nets, defense, x, y, noise: dict, device: str) -> dict:
  """{name: () -> (loss, gradient)} of the two PyTorch variants on NHWC arrays x and the
  purifier's noise (`purifier_noise`)."""
  import numpy as np
  import torch
  from benchmarks import torch_diffpure as td
  from benchmarks import torch_reference as tr
  from benchmarks.bench_purify import to_torch
  net, clf = nets
  x_t, noise_t = to_torch(x, device), to_torch(noise["noise"], device)
  y_t = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)
  if defense.family.NAME == "diffpure":
    s = td.DiffPureSettings.like(defense.settings)
    steps_t = to_torch(noise["step_noise"], device)  # [n, N, B, C, H, W]
    grad = lambda ckpt: td.exact_eot_gradient(net, clf, x_t, y_t, noise_t, steps_t, s, ckpt)  # noqa: E731
  else:
    s = tr.AdpSettings.like(defense.settings)
    grad = lambda ckpt: tr.exact_eot_gradient(net, clf, x_t, y_t, noise_t, s, ckpt)  # noqa: E731
  return {name: (lambda ckpt=ckpt: grad(ckpt))
          for name, ckpt in (("pytorch_autograd", False), ("pytorch_autograd_checkpoint", True))}


def check_agreement_float64(config, defense, variables, x_np, y_np, seed: int, n_eot: int,
                            n: int, device: str) -> dict:
  """{name: max |g_jaxpure - g_name| / max |g_jaxpure|} in float64 on the first n examples,
  plus "noisy_start": max |jaxpure's first iterate - the reference's from the noise handed to
  torch| (`noisy_start`)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from benchmarks.bench_purify import to_nhwc
  from jaxpure.attacks import eot
  from jaxpure.purifiers import common as pc
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    x = jnp.asarray(x_np[:n], jnp.float64)
    y = jnp.asarray(y_np[:n])
    keys = pc.example_keys(jax.random.key(seed), jnp.arange(n))
    est = jax.jit(eot.exact_eot_gradient(defense, "ce", n_eot))
    loss_j, g_j = (np.asarray(a) for a in est(v64, keys, x, y))
    noise = purifier_noise(defense, keys, x, n_eot)
    _, trace = jax.jit(lambda v, x, k: defense.purify(v, x, k, n_eot))(v64, x, keys)
    start_diff = float(np.max(np.abs(np.asarray(trace["iterates"][:, 0])
                                     - noisy_start(defense, x, noise))))
  nets = torch_networks(variables, config, device, torch.float64)
  out = {"noisy_start": start_diff}
  scale = max(float(np.max(np.abs(g_j))), 1e-300)
  for name, fn in torch_gradients(nets, defense, np.asarray(x), y_np[:n], noise,
                                  device).items():
    loss_t, g_t = fn()
    out[name] = float(np.max(np.abs(g_j - to_nhwc(g_t)))) / scale
    out[f"{name}_loss"] = float(np.max(np.abs(loss_j - loss_t.cpu().numpy())))
  out["max_abs_gradient"] = scale
  return out


#: Peak dense TFLOP/s of known accelerators (vendor figures, SXM parts): float32 on the CUDA
#: cores and TF32 on the tensor cores (what XLA uses for float32 convolutions by default).
PEAK_TFLOPS = {"H100": {"float32": 67.0, "tf32": 494.7}, "H200": {"float32": 67.0, "tf32": 494.7},
               "A100": {"float32": 19.5, "tf32": 156.0}}


def peak_tflops(device_kind: str, given: float | None) -> dict:
  """{"float32", "tf32"} peak TFLOP/s of the device (a PEAK_TFLOPS entry whose name is in
  device_kind), or {"given": given} when --peak_tflops is set; {} when unknown."""
  if given:
    return {"given": given}
  for name, peaks in PEAK_TFLOPS.items():
    if name in device_kind:
      return dict(peaks)
  return {}


def compile_policy(defense, policy: str, n_eot: int, args_, budget: int):
  """jaxpure's exact EOT gradient of `defense` under remat `policy`, compiled for args_
  (variables, keys, x, y): (compiled, {"compile_s", "temp_bytes", "flops", "auto"})."""
  import jax
  from jaxpure.attacks import eot
  from jaxpure.purifiers import remat
  d = dataclasses.replace(defense, settings=dataclasses.replace(defense.settings, remat=policy))
  est = eot.exact_eot_gradient(d, "ce", n_eot)
  start = time.perf_counter()
  compiled, record = remat.choose(lambda: jax.jit(lambda *a: est(*a)).lower(*args_).compile(),
                                  budget)
  info = {"compile_s": time.perf_counter() - start, "temp_bytes": remat.temp_bytes(compiled),
          "flops": None, "auto": record}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    info["flops"] = float(cost["flops"]) if cost and "flops" in cost else None
  except Exception:  # noqa: BLE001  (a backend without cost analysis)
    pass
  return compiled, info


# ----------------------------------------------------------------------------- the run
def run_benchmark(args) -> dict:
  import flax
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from benchmarks.bench_purify import begin_run, test_images, to_nhwc
  from jaxpure import config_checks, model_specs, purifiers
  from jaxpure.errors import UserInputError
  from jaxpure.jobs import evaluation
  from jaxpure.purifiers import common as pc

  wall_start = time.perf_counter()
  jax_device, torch_device, threads, config_path, config = begin_run(args)
  family = config.defense.purifier
  score_models = {"adp": "ncsnv2", "diffpure": "ddpmpp"}
  if family not in score_models:
    fail(f"defense.purifier={family!r}: the benchmark has PyTorch references for "
         f"{', '.join(score_models)}")
  if config.score.head != "score" or config.score.model != score_models[family]:
    fail(f"config.score: model {config.score.model!r}, head {config.score.head!r}: the PyTorch "
         f"reference of {family} runs {score_models[family]!r} with the 'score' head")
  if args.max_iter is not None:  # the family's own steps field (ADP's T, DiffPure's N)
    config.purifiers[family][purifiers.get(family).STEPS_FIELD] = args.max_iter
  if config.classifier.model not in ("small_cnn", "wrn"):
    fail(f"config.classifier.model={config.classifier.model!r}: the PyTorch reference has "
         "small_cnn and wrn")
  try:
    settings = config_checks.check_defense(config)
    defense = evaluation.make_defense(config)
  except UserInputError as e:
    fail(" ".join(str(e).split()))
  if family == "adp" and (settings.method != "adp" or settings.noise != "gaussian"):
    fail(f"purifiers.adp: method={settings.method!r}, noise={settings.noise!r}: the benchmark "
         "differentiates ADP with Gaussian noise ('adp', 'gaussian')")
  steps = getattr(defense.settings, defense.family.STEPS_FIELD)
  batch = args.batch or (config.attack.batch_size if args.quick else 16)
  n_eot = args.n_eot or config.attack.apgd_eot.n_eot
  repeats = args.repeats or (5 if args.quick else 3)
  check_n = min(args.check_batch, batch)
  from jaxpure.purifiers import remat as remat_lib
  policies = args.remat or [settings.remat]
  jax_names = {p: "jaxpure" if len(policies) == 1 else f"jaxpure_{p}" for p in policies}
  shape = model_specs.image_shape(config)

  report = {"mode": "quick" if args.quick else "full", "config": os.path.relpath(config_path),
            "device": {"requested": args.device, "jax": str(jax_device),
                       "jax_kind": jax_device.device_kind, "torch": torch_device,
                       "cpu": common.cpu_model(), "cpu_threads": threads},
            "versions": {k: v for k, v in common.describe(jax_device).items()
                         if k in ("python", "jax", "flax", "torch")},
            "batch": batch, "n_eot": n_eot, "image_shape": list(shape), "repeats": repeats,
            "purifier": family, "score": score_description(config),
            "classifier": config.classifier.model,
            "settings": dataclasses.asdict(settings)}
  print(f"device: jax {jax_device} ({jax_device.device_kind}), torch {torch_device}; "
        f"{common.cpu_model()}, {threads} CPU threads (torch.set_num_threads({threads}); "
        "XLA sizes its own pool)")
  print(f"versions: python {report['versions']['python']}, jax {jax.__version__}, "
        f"flax {flax.__version__}, torch {torch.__version__}")
  print(f"mode: {report['mode']} ({report['config']}): gradient of the mean cross-entropy over "
        f"n={n_eot} EOT purifications, x [B={batch}, {shape[0]}, {shape[1]}, {shape[2]}], "
        f"{score_description(config)}, classifier {config.classifier.model}, {family} "
        f"{steps} steps ({settings.network_evaluations() // steps} network evaluation(s) per "
        f"step), remat {', '.join(policies)}; "
        f"median seconds per gradient of the batch over {repeats} rounds after a warm-up")

  with jax.default_device(jax_device):
    variables, weights = network_variables(config, args.workdir, args.seed, jax_device)
    x_np, inputs = test_images(config, batch, args.seed)
    y_np = np.random.default_rng(args.seed + 1).integers(0, config.data.num_classes, batch)
    report.update(weights=weights, inputs=inputs + "; random labels")
    print(f"weights: {weights}; inputs: {inputs}, random labels")

    # ---- agreement, in float64, before any timing (--check_batch 0 skips it)
    agree = (check_agreement_float64(config, defense, variables, x_np, y_np, args.seed, n_eot,
                                     check_n, torch_device) if check_n else None)
  if agree is None:
    report["agreement_float64"] = None
    print("agreement check: skipped (--check_batch 0)")
  else:
    report["agreement_float64"] = dict(agree, images=check_n, tolerance=args.tolerance)
    print(f"agreement check (float64, {check_n} images, n={n_eot}): noisy starts max |diff| = "
          f"{agree['noisy_start']:.1e}; max |gradient| = {agree['max_abs_gradient']:.2e}")
    for name in IMPLEMENTATIONS[1:]:
      print(f"  max |g_jaxpure - g_{name}| / max |g| = {agree[name]:.2e} "
            f"(loss max |diff| {agree[name + '_loss']:.1e})")
    bad = [n for n in IMPLEMENTATIONS[1:] if not agree[n] <= args.tolerance]
    start_bad = not agree["noisy_start"] <= 1e-12
    if start_bad or bad:
      fail("gradients disagree in float64: " + ", ".join(
          [f"{n} ({agree[n]:.3e} > {args.tolerance:g})" for n in bad]
          + ([f"noisy starts differ by {agree['noisy_start']:.3e}"]
             if start_bad else [])), code=1)

  # ---- float32, the timed batch: jaxpure compiled under each remat policy
  budget = remat_lib.budget_bytes(args.memory_budget_gb or None, jax_device)
  jax_runs, g_jax, policy_info = {}, None, {}
  with jax.default_device(jax_device):
    x = jax.device_put(jnp.asarray(x_np), jax_device)
    y = jax.device_put(jnp.asarray(y_np), jax_device)
    keys = pc.example_keys(jax.random.key(args.seed), jnp.arange(batch))
    noise = purifier_noise(defense, keys, x, n_eot)
    for policy in policies:
      compiled, info = compile_policy(defense, policy, n_eot, (variables, keys, x, y), budget)
      policy_info[policy] = info
      run = lambda compiled=compiled: compiled(variables, keys, x, y)  # noqa: E731
      jax_runs[jax_names[policy]] = run
      g = None if args.compile_only else np.asarray(run()[1])
      g_jax = g if g_jax is None else g_jax  # the first policy's, for the float32 comparison
      temp = info["temp_bytes"]
      chosen = f" (auto chose {info['auto']['policy']})" if info["auto"] else ""
      print(f"jaxpure remat {policy}{chosen}: compile {info['compile_s']:.1f} s, compiled "
            f"temporaries " + (f"{temp / 2**20:.0f} MiB" if temp is not None else "not reported")
            + (f", {info['flops'] / 1e9:.1f} GFLOP per gradient (XLA cost analysis)"
               if info["flops"] else ""), flush=True)
  first = policy_info[policies[0]]
  report.update(jaxpure_compile_s=first["compile_s"], jaxpure_temp_bytes=first["temp_bytes"],
                remat_policies={jax_names[p]: dict(info, policy=p)
                                for p, info in policy_info.items()},
                memory_budget_bytes=budget)
  print(f"jaxpure compile: {first['compile_s']:.1f} s")
  if args.compile_only:
    report["total_wall_s"] = time.perf_counter() - wall_start
    return report

  nets = torch_networks(variables, config, torch_device, torch.float32)
  torch_fns = torch_gradients(nets, defense, x_np, y_np, noise, torch_device)
  cuda = torch_device == "cuda"
  sync_torch = (lambda out: torch.cuda.synchronize()) if cuda else (lambda out: None)
  runs = {name: (run, lambda out: jax.block_until_ready(out)) for name, run in jax_runs.items()}
  # Each PyTorch variant's first float32 call; one that runs out of device memory (autograd
  # keeps every step's activations) is reported and left out of the timing.
  def first_call(fn):
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    out = fn()
    sync_torch(out)
    return out, (torch.cuda.max_memory_allocated() if cuda else None)
  firsts, out_of_memory = common.run_once_each(
      {name: functools.partial(first_call, fn) for name, fn in torch_fns.items()},
      release=torch.cuda.empty_cache if cuda else (lambda: None))
  report["out_of_memory"] = out_of_memory
  report["pytorch_peak_bytes"] = {name: peak for name, (_, peak) in firsts.items()}
  print("memory: jaxpure's compiled temporaries " + ", ".join(
      f"{p} " + (f"{i['temp_bytes'] / 2**20:.0f} MiB" if i["temp_bytes"] is not None
                 else "not reported") for p, i in policy_info.items())
        + "".join(f"; {name} peak allocated {peak / 2**20:.0f} MiB"
                  for name, peak in report["pytorch_peak_bytes"].items() if peak is not None))
  for name, message in out_of_memory.items():
    print(f"{name}: out of memory at this size, not timed ({message})")
  # Examples whose gradient is not finite (NaN/inf) are counted and left out of the diffs.
  finite = lambda g: np.isfinite(g).reshape(len(g), -1).all(-1)  # noqa: E731
  info = {jax_names[policies[0]]: {"nonfinite_examples": int(np.sum(~finite(g_jax)))}}
  for name, (out, _) in firsts.items():
    runs[name] = (torch_fns[name], sync_torch)
    g = to_nhwc(out[1])
    both = finite(g) & finite(g_jax)
    a, b = g[both], g_jax[both]
    cos = float(np.sum(a * b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    info[name] = {"nonfinite_examples": int(np.sum(~finite(g))),
                  "max_abs_diff": float(np.max(np.abs(a - b), initial=0.0)), "cosine": cos}
  report["float32_gradient_diff_not_checked"] = info
  print("float32 on the timed batch (information, not a check; examples with a non-finite "
        "gradient left out): " + ", ".join(
            f"{k}: {v['nonfinite_examples']} non-finite"
            + (f", max |diff| {v['max_abs_diff']:.1e}, cosine {v['cosine']:.6f}"
               if "cosine" in v else "") for k, v in info.items()))

  # ---- timing: a warm-up round, then rounds in which the implementations take turns
  names = list(runs)
  seconds = {name: [] for name in names}
  for i in range(repeats + 1):
    order = names[i % len(names):] + names[:i % len(names)]
    took = {name: common.timed(*runs[name]) for name in order}
    print(f"{'warm-up' if i == 0 else f'round {i}/{repeats}'}: "
          + ", ".join(f"{name} {took[name]:.3f} s" for name in order), flush=True)
    if i:
      for name, t in took.items():
        seconds[name].append(t)
  median = {name: statistics.median(v) for name, v in seconds.items()}
  torch_names = [n for n in names if n not in jax_runs]
  ratios = {f"{j}/{name}": common.pairwise_ratio(seconds, name, j)
            for j in jax_runs for name in torch_names}
  if len(jax_runs) > 1:  # how each policy compares with per-step remat, in the same rounds
    base = jax_names.get("step")
    ratios.update({f"{j}/{base}": common.pairwise_ratio(seconds, base, j)
                   for j in jax_runs if base and j != base})
  peaks = peak_tflops(jax_device.device_kind, args.peak_tflops)
  achieved = {}
  for p, i in policy_info.items():
    if i["flops"]:
      rate = i["flops"] / median[jax_names[p]]
      achieved[jax_names[p]] = {"flop_per_s": rate, **{
          f"fraction_of_{k}_peak": rate / (v * 1e12) for k, v in peaks.items()}}
  report.update(seconds=seconds, median_s=median, ratios=ratios,
                images_per_sec={k: batch / v for k, v in median.items()},
                achieved_flops=achieved, peak_tflops=peaks)
  for name in names:
    print(f"{name}: median {median[name]:.3f} s per gradient of {batch} images "
          f"({batch / median[name]:.1f} images/s; min {min(seconds[name]):.3f} s, "
          f"max {max(seconds[name]):.3f} s)")
  report["total_wall_s"] = time.perf_counter() - wall_start
  print(f"total wall time: {report['total_wall_s']:.0f} s")
  for name, a in achieved.items():
    print(f"{name}: {a['flop_per_s'] / 1e9:.1f} GFLOP/s achieved (XLA's FLOP count / median "
          "time)" + "".join(f", {v:.1%} of the {k[len('fraction_of_'):-len('_peak')]} peak"
                            for k, v in a.items() if k.startswith("fraction_of_")))
  for key, r in ratios.items():
    common.print_ratio(key, r)
  for j in jax_runs:
    for name in out_of_memory:
      print(f"ratio {j}/{name}: none ({name} ran out of memory)")
  return report


def main(argv=None) -> int:
  return common.run_against_torch(run_benchmark, parse_args(argv),
                                  "lower --batch or --n_eot")


if __name__ == "__main__":
  sys.exit(main())
