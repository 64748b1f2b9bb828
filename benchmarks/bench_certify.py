"""Certification throughput: jaxpure's Monte Carlo counts of a smoothed classifier against PyTorch.

  pip install -e ".[bench]"
  python benchmarks/bench_certify.py --quick                                    # digits, ADP
  python benchmarks/bench_certify.py --quick --config configs/digits_diffpure.py  # DiffPure
  python benchmarks/bench_certify.py --quick --workdir runs/digits              # trained nets
  python benchmarks/bench_certify.py --device gpu                               # CIFAR-10 size
  python benchmarks/bench_certify.py --device gpu --config configs/cifar10_diffpure.py
  python benchmarks/bench_certify.py --batch 2 --n 16 --chunk 16 --repeats 1    # CIFAR, cut down

What certification spends its time on (DESIGN §6, `jaxpure.certify`): for each example x in
[0, 1] and each of n noise samples, x + sigma n pushed through the one-shot denoiser D of the
config's purifier family and the classifier f, and the argmax counted:
- ADP: D(x~) = clip(x~ + sigma h(x~), 0, 1), the Tweedie step with the NCSNv2 field
  (`jaxpure.purifiers.adp.denoise`);
- DiffPure: u = sqrt(abar(t*)) (2 x~ - 1) with sqrt((1 - abar(t*)) / abar(t*)) = 2 sigma,
  D(x~) = clip((u - sqrt(1 - abar) eps_hat(u, t*)) / sqrt(abar) + 1) / 2 to [0, 1], one DDPM++
  evaluation (`jaxpure.purifiers.diffpure.denoise`).
In one process, on the same weights, images, sigma, samples per image and chunk, it times
- `jaxpure`: `jaxpure.certify.make_counter(smoothed, n, chunk)`, the jitted counting that
  `certify.certify` and the evaluation's certify units run (`Smoothed.counts`: a `lax.scan`
  over chunks of `chunk` samples per image, noise drawn inside from per-example keys),
  compiled ahead (compile time reported apart);
- `pytorch_eager`: the same computation in eager PyTorch, batched the same way (per chunk, the
  chunk B noisy images as one batch through the converted networks, `torch.randn` noise,
  argmax, counts accumulated on the device), inference_mode, channels_last on the CPU unless
  --torch_layout nchw.
The PyTorch networks carry the Flax parameters (`torch_reference.net_from_flax`,
`torch_diffpure.ddpmpp_from_flax`, `classifier_from_flax`).

Agreement, checked before any timing (exit 1 if it fails): on the first --check_batch images
with --check_samples noise samples each, in float64, PyTorch is handed the very noise jaxpure
draws (read back through the library's own `Smoothed.noisy_logits`); the denoised images and
the logits of both must agree to --tolerance (max abs difference), and the votes PyTorch
counts from them must equal jaxpure's `make_counter` votes (chunked with a chunk that does not
divide the samples, so the padding of the last chunk is covered).

Timing: an untimed warm-up round, then --repeats rounds in which the two implementations take
turns (the order rotates every round). samples/s = B n / seconds per call. The ratio is
computed pair by pair within a round (PyTorch seconds / jaxpure seconds: above 1 means jaxpure
is faster) and printed as the median with its min-max over the rounds. torch uses
torch.set_num_threads(<CPUs available>); XLA sizes its own pool.

Modes: --quick: configs/digits.py (8x8x1, NCSNv2 ngf 8, small CNN); B, n and chunk from its
certify section (32 images, 1000 samples each per call, chunk 1000). Default: configs/cifar10.py
(32x32x3, NCSNv2 ngf 128, WRN-28-10), B 32, n 1000, chunk 100, for a GPU; cut it down on a CPU
with --batch/--n/--chunk. --config picks another (ADP or DiffPure; the denoiser is the
config's certify.denoiser, "defense" by default). sigma: --sigma (default 0.25, pixels).
Without --workdir the networks have jaxpure's random initialisation: fine for timing (the
work per sample does not depend on the weights). Bad input prints one line on stderr and exits
2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks import common  # noqa: E402
from benchmarks.common import fail  # noqa: E402

#: The denoisers with a PyTorch reference here, and the score network each runs.
SCORE_MODELS = {"adp": "ncsnv2", "diffpure": "ddpmpp"}


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
  p.add_argument("--sigma", type=float, default=0.25, help="smoothing noise std, pixels")
  p.add_argument("--batch", type=int, default=None,
                 help="B images per call (default: the config's certify batch with --quick, "
                      "else 32)")
  p.add_argument("--n", type=int, default=None,
                 help="noise samples per image per call (default 1000)")
  p.add_argument("--chunk", type=int, default=None,
                 help="samples per image at a time (default: the config's certify chunk with "
                      "--quick, else 100)")
  p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3)")
  p.add_argument("--torch_layout", default="auto", choices=("auto", "nchw", "channels_last"),
                 help="PyTorch memory format (auto: channels_last on the CPU, NCHW on a GPU)")
  p.add_argument("--tolerance", type=float, default=1e-10,
                 help="largest float64 difference allowed in the denoised images and logits")
  p.add_argument("--check_batch", type=int, default=4,
                 help="images in the float64 agreement check (default 4; 0 skips it)")
  p.add_argument("--check_samples", type=int, default=7,
                 help="noise samples per image in the float64 check (default 7)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers here")
  args = p.parse_args(argv)
  for name in ("batch", "n", "chunk", "repeats", "check_samples"):
    value = getattr(args, name)
    if value is not None and value < 1:
      fail(f"--{name}={value}; expected >= 1")
  if args.check_batch < 0:
    fail(f"--check_batch={args.check_batch}; expected >= 0")
  if not args.sigma > 0:
    fail(f"--sigma={args.sigma}; expected > 0 (pixels)")
  if not args.tolerance > 0:
    fail(f"--tolerance={args.tolerance}; expected > 0")
  return args


# ----------------------------------------------------------------------------- jaxpure side
def make_smoothed(config, sigma: float):
  """(`jaxpure.smoothing.Smoothed` at `sigma` with the config's certify denoiser and networks,
  the denoiser's family name), as the evaluation builds it; exits 2 on a config the PyTorch
  reference does not cover (another denoiser, denoise_steps > 0)."""
  from jaxpure import config_checks, model_specs, purifiers, smoothing
  from jaxpure.errors import UserInputError
  config.certify.sigmas = (sigma,)
  try:
    settings, name, family_settings = config_checks.check_certify(config, certifying=True)
  except UserInputError as e:
    fail(" ".join(str(e).split()))
  if name not in SCORE_MODELS:
    fail(f"certify denoiser {name!r}: the benchmark has PyTorch references for "
         f"{', '.join(SCORE_MODELS)}")
  if settings.denoise_steps:
    fail(f"config.certify.denoise_steps={settings.denoise_steps}: the benchmark times the "
         "one-shot denoisers (denoise_steps 0)")
  if config.score.head != "score" or config.score.model != SCORE_MODELS[name]:
    fail(f"config.score: model {config.score.model!r}, head {config.score.head!r}: the PyTorch "
         f"reference of the {name} denoiser runs {SCORE_MODELS[name]!r} with the 'score' head")
  if config.classifier.model not in ("small_cnn", "wrn"):
    fail(f"config.classifier.model={config.classifier.model!r}: the PyTorch reference has "
         "small_cnn and wrn")
  sm = smoothing.Smoothed(model_specs.logits_fn(config), sigma,
                          score_fn=model_specs.score_fn(config), family=purifiers.get(name),
                          settings=family_settings, denoise_steps=0)
  return sm, name


def sample_keys(keys, m: int):
  """[m, B]: the keys of samples 0..m-1 of each example (per-example keys [B]), as
  `Smoothed.counts` derives them (sample j from fold_in(key, j))."""
  import jax
  import jax.numpy as jnp
  from jaxpure.purifiers import common as pc
  return jax.vmap(lambda j: pc.fold(keys, j))(jnp.arange(m, dtype=jnp.uint32))


def jaxpure_noise(smoothed, params, x, keys, m: int):
  """Standard normal noise [m, B, H, W, C]: what jaxpure's counting draws for samples
  0..m-1 of each example of x [B, H, W, C] in [0, 1] (keys [B]), read back through the
  library's own `Smoothed.noisy_logits` with the identity denoiser and the identity as the
  "classifier" (it returns x + sigma n flattened)."""
  import jax
  probe = dataclasses.replace(smoothed, family=None,
                              logits_fn=lambda p, v: v.reshape(v.shape[0], -1))
  noisy = jax.jit(probe.noisy_logits)(params, x, sample_keys(keys, m))
  return (noisy.reshape((m,) + x.shape) - x[None]) / smoothed.sigma


def jaxpure_denoise_classify(smoothed, params, x, noise):
  """(denoised [m, B, H, W, C] in [0, 1], logits [m, B, K]) of jaxpure's smoothed classifier
  on x [B, H, W, C] in [0, 1] with the given standard normal noise [m, B, H, W, C]: the
  library's `Smoothed.denoise` and classifier on x + sigma noise (one-shot denoisers: the
  denoiser's own keys are not used)."""
  import jax
  m, b = noise.shape[:2]

  def fn(params, x, noise):
    noisy = (x[None] + smoothed.sigma * noise).reshape((m * b,) + x.shape[1:])
    denoised = smoothed.denoise(params, noisy, jax.random.split(jax.random.key(0), m * b))
    logits = smoothed.logits_fn(params["classifier"], denoised)
    return denoised.reshape(noise.shape), logits.reshape((m, b) + logits.shape[1:])
  return jax.jit(fn)(params, x, noise)


# ----------------------------------------------------------------------------- PyTorch side
def diffpure_time(sigma: float, beta_min: float, beta_max: float) -> float:
  """t* with sqrt((1 - abar(t*)) / abar(t*)) = 2 sigma on the VP schedule beta(t) = beta_min +
  t (beta_max - beta_min): abar(t*) = 1 / (1 + 4 sigma^2), the positive root of
  (beta_max - beta_min) t^2 / 2 + beta_min t = log(1 + 4 sigma^2)."""
  a, b, c = 0.5 * (beta_max - beta_min), beta_min, math.log1p(4.0 * sigma * sigma)
  if a == 0:
    return c / b
  return (-b + math.sqrt(b * b + 4.0 * a * c)) / (2.0 * a)


def torch_denoiser(family: str, net, sigma: float, settings):
  """denoise(x~ [N, C, H, W], pixels, not clipped) -> [N, C, H, W] in [0, 1]: the one-shot
  denoiser of `family` ("adp": the Tweedie step; "diffpure": one-shot diffusion denoising)
  with the PyTorch score network `net`."""
  import torch
  if family == "adp":
    return lambda x: torch.clamp(x + sigma * net(x), 0.0, 1.0)
  from benchmarks import torch_diffpure as td
  sde = td.VPSDE(settings.beta_min, settings.beta_max)
  t_star = diffpure_time(sigma, settings.beta_min, settings.beta_max)

  def denoise(x):
    t = torch.full((x.shape[0],), t_star, dtype=x.dtype, device=x.device)
    abar = td._col(sde.alpha_bar(t))
    mean, std = torch.sqrt(abar), torch.sqrt(1.0 - abar)
    u = mean * (2.0 * x - 1.0)
    u0 = (u - std * net(u, 999.0 * t)) / mean
    return torch.clamp((u0 + 1.0) / 2.0, 0.0, 1.0)
  return denoise


def torch_counts(denoise, classifier, x, sigma: float, n: int, chunk: int, num_classes: int,
                 noise_fn, channels_last: bool = False, out: dict | None = None):
  """Votes [B, K] int64 (a tensor on x's device) of n noise samples per image of x
  [B, C, H, W] in [0, 1]: per chunk of c = min(chunk, what is left) samples per image,
  noise_fn(start, c) -> standard normal [c, B, C, H, W], the c B images x + sigma noise as one
  batch through `denoise` and `classifier`, argmax, counted. With `out` a dict, the denoised
  images [n, B, C, H, W] and logits [n, B, K] are also collected there (the agreement check)."""
  import torch
  b = x.shape[0]
  votes = torch.zeros((b, num_classes), dtype=torch.int64, device=x.device)
  kept = {"denoised": [], "logits": []}
  with torch.inference_mode():
    for start in range(0, n, chunk):
      c = min(chunk, n - start)
      noisy = (x.unsqueeze(0) + sigma * noise_fn(start, c)).reshape((c * b,) + x.shape[1:])
      if channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
      denoised = denoise(noisy)
      logits = classifier(denoised)
      top = logits.argmax(-1).reshape(c, b)
      votes.scatter_add_(1, top.T, torch.ones_like(top.T))
      if out is not None:
        kept["denoised"].append(denoised.reshape((c, b) + x.shape[1:]))
        kept["logits"].append(logits.reshape(c, b, -1))
  if out is not None:
    out.update({k: torch.cat(v) for k, v in kept.items()})
  return votes


def torch_smoothed(variables, config, family: str, sigma: float, settings, device: str, dtype,
                   channels_last: bool):
  """(denoise, classifier) in PyTorch with the Flax `variables` ({"score", "classifier"})."""
  import torch
  from benchmarks.bench_attack import torch_networks
  net, clf = torch_networks(variables, config, device, dtype)
  if channels_last:
    net, clf = (m.to(memory_format=torch.channels_last) for m in (net, clf))
  return torch_denoiser(family, net, sigma, settings), clf


# ----------------------------------------------------------------------------- agreement
def check_agreement_float64(smoothed, family: str, config, variables, x_np, seed: int, n: int,
                            m: int, device: str) -> dict:
  """The first n images of x_np, m noise samples each (the keys of the timed run's examples),
  chunk ceil(m / 2) (so the last chunk is padded):
  - float64, PyTorch handed the noise jaxpure draws (`jaxpure_noise`): "denoised", "logits":
    max |jaxpure - PyTorch| (`jaxpure_denoise_classify` against `torch_counts`); "counts_equal":
    PyTorch's votes == the argmax counts of jaxpure's logits; "noisy_logits": max
    |`Smoothed.noisy_logits` - jaxpure's logits from the read-back noise| (the read-back is
    exact);
  - float32 (`Smoothed.counts` sums int32 votes, which JAX's x64 mode promotes to int64, so
    the counter runs in float32): "counter_equal": `certify.make_counter`'s votes == the argmax
    counts of `Smoothed.noisy_logits` on the same sample keys (the counter counts those
    samples).
  Also "votes" (the counter's [n, K]), "images", "samples", "chunk"."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from benchmarks.bench_purify import to_nhwc, to_torch
  from jaxpure import certify
  from jaxpure.purifiers import common as pc
  chunk = max(1, math.ceil(m / 2))
  keys = certify.stream_keys(pc.example_keys(jax.random.key(seed), jnp.arange(n)),
                             certify.ESTIMATION)
  count = lambda logits: np.stack([np.bincount(np.argmax(logits[:, b], -1),  # noqa: E731
                                               minlength=logits.shape[-1])
                                   for b in range(logits.shape[1])])
  x32 = jnp.asarray(x_np[:n], jnp.float32)
  votes = np.asarray(certify.make_counter(smoothed, m, chunk)(variables, x32, keys))
  direct32 = np.asarray(jax.jit(smoothed.noisy_logits)(variables, x32, sample_keys(keys, m)))
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    x = jnp.asarray(x_np[:n], jnp.float64)
    noise = jaxpure_noise(smoothed, v64, x, keys, m)
    denoised_j, logits_j = (np.asarray(a) for a in jaxpure_denoise_classify(smoothed, v64, x,
                                                                            noise))
    direct = np.asarray(jax.jit(smoothed.noisy_logits)(v64, x, sample_keys(keys, m)))
    noise = np.asarray(noise)
  denoise, clf = torch_smoothed(variables, config, family, smoothed.sigma, smoothed.settings,
                                device, torch.float64, False)
  noise_t = to_torch(noise, device)  # [m, n, C, H, W]
  out = {}
  votes_t = torch_counts(denoise, clf, to_torch(np.asarray(x_np[:n], np.float64), device),
                         smoothed.sigma, m, chunk, logits_j.shape[-1],
                         lambda start, c: noise_t[start:start + c], out=out)
  return {"denoised": float(np.max(np.abs(denoised_j - to_nhwc(out["denoised"])))),
          "logits": float(np.max(np.abs(logits_j - out["logits"].cpu().numpy()))),
          "counts_equal": bool(np.array_equal(count(logits_j), votes_t.cpu().numpy())),
          "noisy_logits": float(np.max(np.abs(direct - logits_j))),
          "denoiser_change": float(np.max(np.abs(
              denoised_j - np.clip(np.asarray(x_np[:n], np.float64)[None]
                                   + smoothed.sigma * noise, 0.0, 1.0)))),
          "counter_equal": bool(np.array_equal(votes, count(direct32))),
          "votes": votes.tolist(), "images": n, "samples": m, "chunk": chunk}


# ----------------------------------------------------------------------------- the run
def run_benchmark(args) -> dict:
  import flax
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from benchmarks.bench_attack import network_variables, score_description
  from benchmarks.bench_purify import begin_run, test_images, to_torch
  from jaxpure import certify, model_specs
  from jaxpure.purifiers import common as pc

  wall_start = time.perf_counter()
  jax_device, torch_device, threads, config_path, config = begin_run(args)
  smoothed, family = make_smoothed(config, args.sigma)
  batch = args.batch or (config.certify.batch_size if args.quick else 32)
  n = args.n or 1000
  chunk = min(args.chunk or (config.certify.chunk if args.quick else 100), n)
  repeats = args.repeats or 3
  check_n = min(args.check_batch, batch)
  channels_last = {"nchw": False, "channels_last": True}.get(args.torch_layout,
                                                             torch_device == "cpu")
  shape = model_specs.image_shape(config)
  extra = ""
  if family == "diffpure":
    t_star = diffpure_time(args.sigma, smoothed.settings.beta_min, smoothed.settings.beta_max)
    extra = f", t* = {t_star:.4f}"

  report = {"mode": "quick" if args.quick else "full", "config": os.path.relpath(config_path),
            "device": {"requested": args.device, "jax": str(jax_device),
                       "jax_kind": jax_device.device_kind, "torch": torch_device,
                       "cpu": common.cpu_model(), "cpu_threads": threads},
            "versions": {k: v for k, v in common.describe(jax_device).items()
                         if k in ("python", "jax", "flax", "torch")},
            "denoiser": family, "sigma": args.sigma, "batch": batch, "n": n, "chunk": chunk,
            "samples_per_call": batch * n, "image_shape": list(shape), "repeats": repeats,
            "score": score_description(config), "classifier": config.classifier.model,
            "torch_layout": "channels_last" if channels_last else "nchw"}
  print(f"device: jax {jax_device} ({jax_device.device_kind}), torch {torch_device}; "
        f"{common.cpu_model()}, {threads} CPU threads (torch.set_num_threads({threads}); "
        "XLA sizes its own pool)")
  print(f"versions: python {report['versions']['python']}, jax {jax.__version__}, "
        f"flax {flax.__version__}, torch {torch.__version__}")
  print(f"mode: {report['mode']} ({report['config']}): {family} one-shot denoiser at sigma "
        f"{args.sigma}{extra}, {score_description(config)}, classifier "
        f"{config.classifier.model}; x [B={batch}, {shape[0]}, {shape[1]}, {shape[2]}], "
        f"n={n} noise samples per image per call, chunk {chunk}; PyTorch eager, "
        f"{report['torch_layout']}; samples/s = B n / seconds, median of {repeats} rounds "
        "after a warm-up")

  with jax.default_device(jax_device):
    variables, weights = network_variables(config, args.workdir, args.seed, jax_device)
    x_np, inputs = test_images(config, batch, args.seed)
    report.update(weights=weights, inputs=inputs)
    print(f"weights: {weights}; inputs: {inputs}")

    # ---- agreement, in float64, before any timing (--check_batch 0 skips it)
    agree = (check_agreement_float64(smoothed, family, config, variables, x_np, args.seed,
                                     check_n, args.check_samples, torch_device)
             if check_n else None)
  report["agreement_float64"] = agree and dict(agree, tolerance=args.tolerance)
  if agree is None:
    print("agreement check: skipped (--check_batch 0)")
  else:
    print(f"agreement check (float64, {check_n} images x {agree['samples']} samples, jaxpure's "
          f"noise, chunk {agree['chunk']}): max |denoised diff| = {agree['denoised']:.1e}, "
          f"max |logits diff| = {agree['logits']:.1e}, votes equal: {agree['counts_equal']}; "
          f"noise read back: max |logits diff| {agree['noisy_logits']:.1e}; the denoiser moves "
          f"pixels by up to {agree['denoiser_change']:.1e}; float32: "
          f"make_counter's votes = the argmax counts of noisy_logits: {agree['counter_equal']}")
    bad = [f"{k} ({agree[k]:.3e} > {args.tolerance:g})" for k in ("denoised", "logits")
           if not agree[k] <= args.tolerance]
    if not agree["counts_equal"]:
      bad.append("PyTorch's votes differ from jaxpure's")
    if not agree["noisy_logits"] <= args.tolerance:
      bad.append(f"the noise read back from jaxpure does not reproduce its logits "
                 f"({agree['noisy_logits']:.3e})")
    if not agree["counter_equal"]:
      bad.append("make_counter's votes are not the argmax counts of its samples' logits")
    if bad:
      fail("float64 agreement failed: " + ", ".join(bad), code=1)

  # ---- float32, the timed batch
  with jax.default_device(jax_device):
    x = jax.device_put(jnp.asarray(x_np), jax_device)
    keys = certify.stream_keys(pc.example_keys(jax.random.key(args.seed), jnp.arange(batch)),
                               certify.ESTIMATION)
    counter = certify.make_counter(smoothed, n, chunk)
    start = time.perf_counter()
    compiled = counter.lower(variables, x, keys).compile()
    compile_s = time.perf_counter() - start
    votes_jax = np.asarray(compiled(variables, x, keys))
  print(f"jaxpure compile: {compile_s:.1f} s", flush=True)
  k = votes_jax.shape[-1]
  denoise, clf = torch_smoothed(variables, config, family, args.sigma, smoothed.settings,
                                torch_device, torch.float32, channels_last)
  x_t = to_torch(x_np, torch_device)
  gen = torch.Generator(device=torch_device).manual_seed(args.seed)
  noise_fn = lambda start, c: torch.randn((c,) + tuple(x_t.shape), generator=gen,  # noqa: E731
                                          device=torch_device)
  run_torch = lambda: torch_counts(denoise, clf, x_t, args.sigma, n, chunk, k,  # noqa: E731
                                   noise_fn, channels_last)
  votes_torch = run_torch().cpu().numpy()
  top = lambda v: np.argmax(v, -1)  # noqa: E731
  report["float32_top_class_agreement_not_checked"] = float(np.mean(top(votes_jax)
                                                                    == top(votes_torch)))
  print(f"float32 on the timed batch (information, different noise on each side): the most "
        f"voted class agrees on {report['float32_top_class_agreement_not_checked']:.0%} of the "
        "images")

  cuda = torch_device == "cuda"
  runs = {"jaxpure": (lambda: compiled(variables, x, keys), jax.block_until_ready),
          "pytorch_eager": (run_torch, (lambda out: torch.cuda.synchronize()) if cuda
                            else (lambda out: out.cpu()))}
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
  rate = {name: batch * n / t for name, t in median.items()}
  ratio = common.pairwise_ratio(seconds, "pytorch_eager")
  report.update(seconds=seconds, median_s=median, samples_per_sec=rate,
                ratios={"jaxpure/pytorch_eager": ratio}, jaxpure_compile_s=compile_s,
                total_wall_s=time.perf_counter() - wall_start)
  print(f"\n{'implementation':<16} {'samples/s':>12} {'median s/call':>14} {'min s':>8} "
        f"{'max s':>8}")
  for name in names:
    print(f"{name:<16} {rate[name]:>12.1f} {median[name]:>14.3f} {min(seconds[name]):>8.3f} "
          f"{max(seconds[name]):>8.3f}")
  print(f"jaxpure compile: {compile_s:.1f} s (once per shape; not in the rates)")
  print(f"total wall time: {report['total_wall_s']:.0f} s")
  common.print_ratio("jaxpure/pytorch_eager", ratio)
  return report


def main(argv=None) -> int:
  return common.run_against_torch(run_benchmark, parse_args(argv),
                                  "lower --batch or --chunk")


if __name__ == "__main__":
  sys.exit(main())
