"""Does an XLA:CPU flag make jaxpure's purifier or its exact gradient faster?

Times, under each XLA_FLAGS setting, the config's defense's forward purification (B images,
all R restarts and steps; `Defense.make_purifier`) and the exact EOT gradient of its loss (B
images, EOT 2; `attacks.eot.exact_eot_gradient`), random-initialised networks (--config,
default configs/digits.py: the ADP digits defense). Flags are fixed when a process starts, so each setting runs in its own
process; the settings take turns, round after round (baseline, flag 1, ..., baseline, flag
1, ...), and each flag's ratio (baseline seconds / its seconds: above 1, the flag is faster)
is taken against the baseline of its own round, printed as the median with its min-max over
the rounds. Each flag is added to the XLA_FLAGS this script was started with (the baseline).

  python benchmarks/bench_xla_flags.py --rounds 2                   # 20-40 minutes on 2 cores
  python benchmarks/bench_xla_flags.py --flags=--xla_cpu_enable_fast_math=true
  python benchmarks/bench_xla_flags.py --config configs/digits_diffpure.py --batch 64 --restarts 2

Without --flags it tries the XLA:CPU flags that route convolutions to other libraries
(XNNPACK, oneDNN) or change how fusions are built. A flag the installed jaxlib does not know
makes its process fail: that flag is reported as failed, the others go on (a process still
running after --timeout seconds too). Without a single baseline timing it exits 1.

A flag can be accepted and still change nothing: XLA leaves a program alone where the flag's
library does not take its operations. So each process also returns its forward purification
and gradient, and each flag's are compared with its round's baseline: the largest absolute
difference is printed (and written to --json). 0 means the flag's program computed the
baseline's results bit for bit, which suggests (it does not prove) that the flag changed
nothing; a difference means another library (or another fusion) computed them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

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
  if args.save:
    leaves = {f"{name}{jax.tree_util.keystr(path)}": np.asarray(leaf)
              for name, tree in results.items()
              for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    np.savez(args.save, **leaves)
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


def max_differences(baseline: str, flag: str) -> dict | None:
  """{output: max |flag - baseline|} of two children's saved outputs (None without the
  baseline's; NaN where the two differ in where they are non-finite)."""
  import numpy as np
  if not os.path.exists(baseline):
    return None
  with np.load(baseline) as b, np.load(flag) as f:
    out = {}
    for k in b.files:
      d = np.abs(f[k].astype(np.float64) - b[k].astype(np.float64))
      same_nonfinite = np.array_equal(np.isfinite(b[k]), np.isfinite(f[k]))
      out[k] = float(np.max(d[np.isfinite(d)], initial=0.0)) if same_nonfinite else float("nan")
    return out


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
  differences = {n: [] for n in names[1:]}  # max |flag - baseline| of its round, per output
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for i, n in enumerate(names):
        save = os.path.join(tmp, f"round{r}_{i}.npz")
        t = run_setting(args, None if n == "baseline" else n, save)
        seconds[n].append(t)
        if not t:
          if n != "baseline":
            differences[n].append(None)
          continue
        line = f"round {r + 1} {n}: forward {t['forward']:.3f} s, gradient {t['gradient']:.3f} s"
        if n != "baseline":
          differences[n].append(max_differences(os.path.join(tmp, f"round{r}_0.npz"), save))
          if differences[n][-1] is not None:
            line += "; max |diff| from the baseline: " + ", ".join(
                f"{k} {v:.1e}" for k, v in differences[n][-1].items())
        print(line, flush=True)
  report = {"xla_flags_of_all": os.environ.get("XLA_FLAGS", ""), "seconds": seconds,
            "max_abs_differences": differences, "ratios": {}}
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
