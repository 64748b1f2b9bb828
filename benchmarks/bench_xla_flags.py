"""Does an XLA:CPU flag make jaxpure's purifier or its exact gradient faster?

Times, under each XLA_FLAGS setting, the config's defense's forward purification (B images,
all R restarts and steps; `Defense.make_purifier`) and the exact EOT gradient of its loss (B
images, EOT 2; `attacks.eot.exact_eot_gradient`), random-initialised networks (--config,
default configs/digits.py: the ADP digits defense). Flags are fixed when a process starts, so
each setting runs in its own process. The settings take turns, round after round, in an
order that rotates by one each round (round 1: baseline, flag 1, flag 2; round 2: flag 1,
flag 2, baseline; ...), so no setting always runs first or last. Each flag's ratio (baseline
seconds / its seconds: above 1, the flag is faster) is taken against the baseline of its own
round, printed as the median with its min-max over the rounds. Each flag is added to the
XLA_FLAGS this script was started with (the baseline).

  python benchmarks/bench_xla_flags.py --rounds 2                   # 20-40 minutes on 2 cores
  python benchmarks/bench_xla_flags.py --flags=--xla_cpu_enable_fast_math=true
  python benchmarks/bench_xla_flags.py --config configs/digits_diffpure.py --batch 64 --restarts 2

Without --flags it tries the XLA:CPU flags that route convolutions to other libraries
(XNNPACK, YNNPACK, oneDNN) or change how fusions are built. A flag the installed jaxlib does
not know makes its process fail: that flag is reported as failed, the others go on (a process
still running after --timeout seconds too). Without a single baseline timing it exits 1.

A flag can be accepted and still change nothing: XLA leaves a program alone where the flag's
library does not take its operations. So each process also returns its outputs (the forward
purification; the gradient's per-example loss and input gradient), and each flag's are
compared with its round's baseline, output by output: "identical" (the same bytes), or the
largest absolute difference over the entries finite in both (where the non-finite entries are
the same), or "shapes or non-finite entries differ" (printed, and written to --json).
Identical outputs suggest (they do not prove) that the flag changed nothing; a difference
means another library (or another fusion) computed them. The baselines of later rounds are
compared in the same way with the first baseline that ran, which shows whether the program is
deterministic at all.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

DEFAULT_FLAGS = (
    "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
)
MARK = "bench_xla_flags:"


def parse_args(argv=None):
  from benchmarks import common  # imported here: it imports jax
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--flags", action="append", default=None,
                 help="an XLA_FLAGS setting to compare with the baseline (repeatable)")
  p.add_argument("--config", default=os.path.join(REPO_ROOT, "configs", "digits.py"),
                 help="config file of the defense (default configs/digits.py)")
  p.add_argument("--batch", type=int, default=256, help="images B")
  p.add_argument("--restarts", type=int, default=10, help="R of the forward purification")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per process (median)")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--timeout", type=float, default=1200, help="seconds per process")
  p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--save", default=None, help=argparse.SUPPRESS)  # the child's outputs (.npz)
  args = p.parse_args(argv)
  if min(args.batch, args.restarts, args.repeats, args.rounds) < 1 or not args.timeout > 0:
    p.error("--batch, --restarts, --repeats, --rounds and --timeout must be positive")
  if args.flags is not None:
    if any(not f.strip() or f.strip() == "baseline" for f in args.flags):
      p.error("--flags: each value must be a non-empty XLA flag (the baseline always runs)")
    if len(set(args.flags)) != len(args.flags):
      p.error("--flags: a flag is given twice")
  if not os.path.isfile(args.config):
    p.error(f"--config {args.config}: no such file")
  return args


def child(args) -> None:
  """Times forward and gradient in this process (its XLA_FLAGS) and prints one JSON line."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks import common
  from benchmarks.bench_purify import load_config
  from jaxpure import attacks, model_specs, parallel
  from jaxpure.jobs import evaluation, train
  from jaxpure.purifiers.common import example_keys
  config = load_config(args.config)
  mesh = parallel.make_mesh(jax.devices("cpu")[:1])
  params = {}
  for name, spec in (("score", model_specs.SCORE), ("classifier", model_specs.CLASSIFIER)):
    state = train.init_train_state(spec, config, spec.build(config), jax.random.key(len(name)),
                                   mesh)
    params[name] = {"params": state.ema_params, **state.model_state}
  config.defense.restarts = args.restarts
  defense = evaluation.make_defense(config)
  b = args.batch
  x = jax.random.uniform(jax.random.key(2), (b,) + model_specs.image_shape(config))
  y = jnp.arange(b) % config.data.num_classes
  keys = example_keys(jax.random.key(3), jnp.arange(b))
  purify = defense.make_purifier(args.restarts)
  gradient = jax.jit(attacks.eot.exact_eot_gradient(defense, "ce", 2, 0, 0.0, x))
  out, results = {}, {}
  for name, fn in (("forward", lambda: purify(params, x, keys)),
                   ("gradient", lambda: gradient(params, keys, x, y))):
    results[name] = jax.block_until_ready(fn())  # compiles
    out[name] = statistics.median(common.timed(fn, jax.block_until_ready)
                                  for _ in range(args.repeats))
  if args.save:  # written under another name and renamed: a killed child leaves no half file
    loss, input_gradient = results["gradient"]
    partial = args.save + ".partial.npz"
    np.savez(partial, purified=np.asarray(results["forward"]), loss=np.asarray(loss),
             input_gradient=np.asarray(input_gradient))
    os.replace(partial, args.save)
  print(MARK + json.dumps(out), flush=True)


def run_setting(args, flag: str | None, save: str) -> dict | None:
  """The child's timings with `flag` added to this process's XLA_FLAGS (None: the baseline),
  or None (and a line saying why) if its process failed. The child writes its forward
  purification and gradient to `save` (.npz)."""
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--config", args.config,
         "--batch", str(args.batch), "--save", save,
         "--restarts", str(args.restarts), "--repeats", str(args.repeats)]
  flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flag or "") if f)
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                         timeout=args.timeout)
  except subprocess.TimeoutExpired:
    print(f"  {flag or 'baseline'}: failed (still running after {args.timeout:g} s)", flush=True)
    return None
  for line in out.stdout.splitlines():
    if line.startswith(MARK):
      return json.loads(line[len(MARK):])
  tail = " ".join(out.stderr.strip().splitlines()[-1:])[:200]
  print(f"  {flag or 'baseline'}: failed (exit {out.returncode}): {tail}", flush=True)
  return None


def compare_outputs(baseline: str, other: str) -> dict | str:
  """Two children's saved outputs (.npz), output by output: {name: {"identical": the same
  shape, dtype and bytes; "max_abs_diff": max |other - baseline| over the entries finite in
  both, None where the shapes differ or the non-finite entries do (in place or value: +inf
  against -inf or NaN), and 0.0 for identical outputs}}. A string says why there is no
  comparison (a file missing, truncated or not an .npz; the outputs' names differ)."""
  import numpy as np
  try:
    with np.load(baseline) as b, np.load(other) as o:
      if sorted(b.files) != sorted(o.files):
        return f"the outputs differ: {sorted(b.files)} against {sorted(o.files)}"
      out = {}
      for k in b.files:
        bk, ok = b[k], o[k]
        identical = (bk.shape == ok.shape and bk.dtype == ok.dtype
                     and bk.tobytes() == ok.tobytes())
        diff = None
        if identical:
          diff = 0.0
        elif (bk.shape == ok.shape and np.array_equal(np.isfinite(bk), np.isfinite(ok))
              and np.array_equal(bk[~np.isfinite(bk)], ok[~np.isfinite(ok)], equal_nan=True)):
          finite = np.isfinite(bk)
          diff = float(np.max(np.abs(ok[finite].astype(np.float64)
                                     - bk[finite].astype(np.float64)), initial=0.0))
        out[k] = {"identical": identical, "max_abs_diff": diff}
      return out
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # missing, truncated, not .npz
    return f"no comparison: {e}"


def describe_comparison(c: dict | str) -> str:
  """One line's worth of compare_outputs' result."""
  if isinstance(c, str):
    return c
  return ", ".join(
      f"{k} " + ("identical" if v["identical"] else "shapes or non-finite entries differ"
                 if v["max_abs_diff"] is None else f"max |diff| {v['max_abs_diff']:.1e}")
      for k, v in c.items())


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.child:
    child(args)
    return 0
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the parent only reports the CPU
  from benchmarks import common
  import jax
  common.print_header("XLA:CPU flags: a defense's forward purification and exact EOT gradient",
                      {**common.describe(jax.devices("cpu")[0]),
                       "config": os.path.relpath(args.config, REPO_ROOT)})
  print(f"B {args.batch}, R {args.restarts} (forward), EOT 2 (gradient), "
        f"{args.repeats} timed calls per process, {args.rounds} rounds")
  names = ["baseline"] + list(args.flags or DEFAULT_FLAGS)
  seconds = {n: [] for n in names}
  # round by round, each flag's outputs against its round's baseline, and the baseline's
  # against the first baseline that ran (None in that round and before). None where either
  # process failed; see compare_outputs
  outputs = {n: [] for n in names}
  with tempfile.TemporaryDirectory() as tmp:
    saved = lambda r, i: os.path.join(tmp, f"round{r}_{i}.npz")  # noqa: E731
    for r in range(args.rounds):
      k = r % len(names)  # the order rotates round by round
      for i in list(range(len(names)))[k:] + list(range(len(names)))[:k]:
        n = names[i]
        t = run_setting(args, None if n == "baseline" else n, saved(r, i))
        seconds[n].append(t)
        if t:
          print(f"round {r + 1} {n}: forward {t['forward']:.3f} s, "
                f"gradient {t['gradient']:.3f} s", flush=True)
      first = next((q for q, t in enumerate(seconds["baseline"]) if t), None)
      for i, n in enumerate(names):
        ref = first if n == "baseline" else r  # the round of the baseline compared with
        if (ref is None or (n == "baseline" and r <= ref) or not seconds[n][r]
            or not seconds["baseline"][ref]):
          outputs[n].append(None)
          continue
        c = compare_outputs(saved(ref, 0), saved(r, i))
        outputs[n].append(c)
        print(f"round {r + 1} {n} against round {ref + 1}'s baseline: "
              f"{describe_comparison(c)}", flush=True)
  report = {"xla_flags_of_all": os.environ.get("XLA_FLAGS", ""), "seconds": seconds,
            "outputs_against_baseline": outputs, "ratios": {}}
  for n in names[1:]:
    for part in ("forward", "gradient"):
      rounds = [(b[part], t[part]) for b, t in zip(seconds["baseline"], seconds[n]) if b and t]
      if rounds:  # baseline seconds / flag seconds, round by round
        r = common.pairwise_ratio({"baseline": [b for b, _ in rounds],
                                   "flag": [t for _, t in rounds]}, "baseline", base="flag")
        report["ratios"][f"{n} {part}"] = r
        common.print_ratio(f"baseline/flag {part} [{n}]", r)
  common.write_json(args.json, report)
  if not any(seconds["baseline"]):
    print("error: the baseline never ran, so there is no ratio", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
