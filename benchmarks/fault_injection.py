"""Fault injection: SIGKILL train.py and evaluate.py at random, seeded points; rerun each to
completion; compare with an uninterrupted run, bit for bit.

  python benchmarks/fault_injection.py [--kills 20] [--seed 0] [--per_trial 4]
      [--workdir DIR] [--json FILE]

First one uninterrupted training run of configs/smoke.py (both models, 4 steps each,
checkpoints at steps 2 and 4) and one uninterrupted evaluation of it (16 examples in batches of
8, the clean unit and pgd_clf: 3 compiled programs, 4 stored batches) are the references.
Then trials, training and evaluation in turn: each starts from nothing (an empty workdir; for
evaluation an empty output folder beside the reference training run), runs the same command
up to --per_trial times with a kill planned in each run, and once more without one, until a
run finishes. Every run after a kill resumes what the killed ones left. The trial's final
files are then compared with the reference's:

- training: every kept checkpoint of both models (each saved array, bit for bit, and the
  metadata with its checksums), summary.json, the pictures (bytes), metrics.jsonl (one line
  per (model, step), the same (model, step)s, equal values but for steps/s);
- evaluation: report.json and the per-settings report (but for timings), every stored batch
  (each array bit for bit but the batch's seconds), the unit files, the pictures (bytes);
- both: the same files (names of OCDBT data files aside), and no temporary file left (*.tmp,
  *.tmp.npz, orbax *.orbax-checkpoint-tmp* folders, write probes).

A kill is planned at random (seeded): at a point of the job (JAXPURE_TEST_KILL_AT, see
`jaxpure/faults.py`: the N-th compile, training step or evaluation batch, checkpoint write or
batch store, a random delay after it), or at a random time of the run (the parent's SIGKILL).
Which phase a kill hit is read from what the killed run left: an orbax temporary checkpoint
folder written during the run (a checkpoint write), a batch's temporary file (a batch store),
else its last output line (compiling: compile; a step or batch line before the last
of its model or unit: step; else other). A
kill counts as survived when its trial's final files equal the reference's. Prints one line
per kill and per trial, the kills per phase, and "kills survived: K of K".
"""

import builtins
import dataclasses
import functools
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("compile", "step", "checkpoint write", "batch store")
TRAIN_ARGS = ("train.py", "--config", "configs/smoke.py")
EVAL_ARGS = ("evaluate.py", "--config", "configs/smoke.py", "--num_examples=16",
             "--attacks=pgd_clf", "--config.eval.batch_size=8", "--config.attack.batch_size=8")
#: Points a kill may be planned at, per job (besides "time": a random time of the run).
POINTS = {"train": ("compile", "step", "checkpoint_write"),
          "eval": ("compile", "step", "batch_store")}
RUN_TIMEOUT_S = 600


def parse_args(argv=None):
  from benchmarks import common  # imported here: it imports jax
  p = common.Parser(description=__doc__.split("\n\n")[0])
  p.add_argument("--kills", type=int, default=20, help="kills to make (at least)")
  p.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
  p.add_argument("--per_trial", type=int, default=4,
                 help="kills at most per trial before the run to completion")
  p.add_argument("--workdir", default=None, help="where the runs go (default: a temporary "
                 "folder, removed at the end)")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = p.parse_args(argv)
  if args.kills < 1 or args.per_trial < 1:
    p.error("--kills and --per_trial must be >= 1")
  return args


# ----------------------------------------------------------------------------- running a job
@dataclasses.dataclass
class Run:
  """One run of train.py or evaluate.py: its exit status (-9 when SIGKILLed), its output
  lines [(seconds since start, line)] (stdout and stderr), its start (time.time()) and
  length."""
  returncode: int
  lines: list
  started: float
  seconds: float

  @property
  def killed(self) -> bool:
    return self.returncode == -9

  def text(self) -> str:
    return "\n".join(line for _, line in self.lines)


def child_env(extra: dict | None = None) -> dict:
  """The environment of the runs: 8 CPU devices as in the tests, unbuffered output (the last
  line before a kill is on the pipe), no kill point unless `extra` names one."""
  env = dict(os.environ)
  env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["PYTHONUNBUFFERED"] = "1"
  env.pop("JAXPURE_TEST_KILL_AT", None)
  env.update(extra or {})
  return env


def run_job(args, *, kill_point: str | None = None, kill_after: float | None = None,
            timeout: float = RUN_TIMEOUT_S) -> Run:
  """Runs `args` (a script of the repository and its flags) to its end; kill_point: a
  JAXPURE_TEST_KILL_AT value (the job kills itself there); kill_after: seconds after the
  start at which this process SIGKILLs it."""
  env = child_env({"JAXPURE_TEST_KILL_AT": kill_point} if kill_point else None)
  started, t0 = time.time(), time.monotonic()
  proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
  lines = []

  def read():
    for line in proc.stdout:
      lines.append((time.monotonic() - t0, line.rstrip("\n")))

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  try:
    if kill_after is not None:
      try:
        proc.wait(timeout=kill_after)
      except subprocess.TimeoutExpired:
        proc.kill()
    proc.wait(timeout=max(timeout - (time.monotonic() - t0), 1))
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{' '.join(args)} ran more than {timeout:.0f} s; last output: "
                       f"{[l for _, l in lines[-5:]]}") from None
  reader.join(timeout=30)
  return Run(proc.returncode, lines, started, time.monotonic() - t0)


def train_args(workdir: str):
  return (*TRAIN_ARGS, "--workdir", workdir)


def eval_args(train_workdir: str, output: str):
  return (*EVAL_ARGS, "--workdir", train_workdir, "--output", output)


def _is_noise(line: str) -> bool:
  """absl/orbax log lines (W1206 04:12:56.763048 ...) and warnings: not the job's progress."""
  return (len(line) > 5 and line[0] in "IWEF" and line[1:5].isdigit()) or "Warning" in line


def progress_lines(run: Run) -> list:
  """[(seconds, line)] of the job's own progress lines."""
  return [(t, l) for t, l in run.lines if l.strip() and not _is_noise(l)
          and not l.startswith("[fault injection]")]


# ----------------------------------------------------------------------------- what a kill hit
def _newest_mtime(path: str) -> float:
  """The latest modification time of `path` and everything under it."""
  times = [os.stat(path).st_mtime]
  for dirpath, dirnames, filenames in os.walk(path):
    times += [os.stat(os.path.join(dirpath, n)).st_mtime for n in dirnames + filenames]
  return max(times)


def _written_since(paths, since: float) -> list:
  """Those of `paths` with something written at or after time `since`."""
  out = []
  for p in paths:
    try:
      if _newest_mtime(p) >= since:
        out.append(p)
    except FileNotFoundError:
      pass
  return out


def phase_hit(run: Run, root: str) -> tuple[str, str]:
  """(phase, evidence) of a killed run whose files are under `root`: an orbax temporary
  checkpoint folder written during the run: "checkpoint write"; a batch's temporary file
  written during it: "batch store"; else from its last progress line: "compile" (a compiling
  line), "step" (the compiled line, or a training step or evaluation batch before the model's
  or unit's last), "other" (start, resume, after a model's or unit's last step, summary,
  report)."""
  ckpt = _written_since(glob.glob(os.path.join(root, "**", "*.orbax-checkpoint-tmp*"),
                                  recursive=True), run.started)
  if ckpt:
    return "checkpoint write", f"left {os.path.relpath(ckpt[0], root)}"
  batch = _written_since(glob.glob(os.path.join(root, "**", "*.tmp.npz"), recursive=True),
                         run.started)
  if batch:
    return "batch store", f"left {os.path.relpath(batch[0], root)}"
  lines = progress_lines(run)
  last = lines[-1][1] if lines else ""
  shown = f"last line {last[:70]!r}" if last else "no output yet"
  if "compiling" in last:
    return "compile", shown
  done = re.search(r"(?:\] step|: batch) (\d+)/(\d+)", last)
  if "] compiled;" in last or (done and done.group(1) != done.group(2)):
    return "step", shown
  return "other", shown  # start, resume, after a model's or unit's last step, summary, report


# ----------------------------------------------------------------------------- comparisons
def leftovers(root: str) -> list[str]:
  """Temporary files and folders under `root` (relative paths)."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      if (name.endswith((".tmp", ".tmp.npz")) or "orbax-checkpoint-tmp" in name
          or name.startswith(".write_test_")):
        found.append(os.path.relpath(os.path.join(dirpath, name), root))
  return sorted(found)


def file_set(root: str) -> list[str]:
  """Relative paths of the files under `root`, with the names of OCDBT data files (content
  hashes in a d/ folder, whose number varies from save to save) replaced by '*'."""
  out = set()
  for dirpath, _, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    for name in filenames:
      path = os.path.normpath(os.path.join(rel, name))
      out.add(os.path.join(rel, "*") if os.path.basename(dirpath) == "d" else path)
  return sorted(out)


def checkpoint_arrays(step_dir: str) -> dict:
  """{key path: NumPy array} of every array saved in a checkpoint step folder (its `state`
  or `variables` item), read on the host."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  from etils import epath
  item = next(os.path.join(step_dir, i) for i in ("state", "variables")
              if os.path.isdir(os.path.join(step_dir, i)))
  handler = ocp.PyTreeCheckpointHandler()
  try:
    tree = handler.metadata(epath.Path(item)).tree
  finally:
    handler.close()
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  reader = ocp.PyTreeCheckpointer()
  try:
    restored = reader.restore(item, args=ocp.args.PyTreeRestore(item=tree, restore_args=args))
  finally:
    reader.close()
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]}


def _same_arrays(a: dict, b: dict) -> str | None:
  """None when the two {name: array} are equal bit for bit (names, dtypes, shapes, bytes);
  else the first difference."""
  import numpy as np
  if sorted(a) != sorted(b):
    return f"arrays {sorted(set(a) ^ set(b))[:3]} in only one of them"
  for k in sorted(a):
    x, y = np.asarray(a[k]), np.asarray(b[k])
    if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
      return f"{k} differs ({x.dtype}{x.shape} vs {y.dtype}{y.shape})"
  return None


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def metrics_problems(path: str, reference: str) -> list[str]:
  """metrics.jsonl against the reference's: every line a JSON object, one line per (model,
  step), the same (model, step)s in the same order, equal values but for steps/s."""
  records = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f.read().split("\n")[:-1]):
      try:
        records.append(json.loads(line))
      except ValueError:
        return [f"metrics.jsonl line {i + 1} is not JSON: {line[:60]!r}"]
  keys = [(r.get("model"), r.get("step")) for r in records]
  dup = sorted({k for k in keys if keys.count(k) > 1})
  if dup:
    return [f"metrics.jsonl has more than one line for (model, step) {dup}"]
  with open(reference, encoding="utf-8") as f:
    ref = [json.loads(line) for line in f]
  strip = lambda r: {k: v for k, v in r.items() if k != "steps_per_sec"}  # noqa: E731
  if keys != [(r["model"], r["step"]) for r in ref]:
    return [f"metrics.jsonl lines {keys} differ from the reference's "
            f"{[(r['model'], r['step']) for r in ref]}"]
  return [f"metrics.jsonl {k}: {strip(a)} != {strip(b)}" for k, a, b in
          zip(keys, records, ref) if strip(a) != strip(b)]


def compare_train(got: str, ref: str) -> list[str]:
  """Differences of a training workdir from the reference's (empty: equal)."""
  problems = [f"temporary file left: {p}" for p in leftovers(got)]
  if file_set(got) != file_set(ref):
    a, b = set(file_set(got)), set(file_set(ref))
    problems.append(f"files differ: only here {sorted(a - b)[:4]}, only in the reference "
                    f"{sorted(b - a)[:4]}")
  for kind in ("score", "classifier"):
    ref_dir = os.path.join(ref, "checkpoints", kind)
    for step in sorted(os.listdir(ref_dir)):
      here, there = os.path.join(got, "checkpoints", kind, step), os.path.join(ref_dir, step)
      if not os.path.isdir(here):
        problems.append(f"checkpoint {kind}/{step} missing")
        continue
      meta = os.path.join("metadata", "metadata")
      if _read_json(os.path.join(here, meta)) != _read_json(os.path.join(there, meta)):
        problems.append(f"checkpoint {kind}/{step}: metadata differs")
      diff = _same_arrays(checkpoint_arrays(here), checkpoint_arrays(there))
      if diff:
        problems.append(f"checkpoint {kind}/{step}: {diff}")
  if _read_json(os.path.join(got, "summary.json")) != _read_json(os.path.join(ref,
                                                                              "summary.json")):
    problems.append("summary.json differs")
  for png in ("denoising.png", "samples.png"):
    if _read_bytes(os.path.join(got, png)) != _read_bytes(os.path.join(ref, png)):
      problems.append(f"{png} differs")
  problems += metrics_problems(os.path.join(got, "metrics.jsonl"),
                               os.path.join(ref, "metrics.jsonl"))
  return problems


def strip_timings(report: dict) -> dict:
  """A report without what measures time: "timings" and each attack's "seconds"."""
  out = {k: v for k, v in report.items() if k != "timings"}
  out["attacks"] = {name: {k: v for k, v in a.items() if k != "seconds"}
                    for name, a in report.get("attacks", {}).items()}
  return out


def compare_eval(got: str, ref: str) -> list[str]:
  """Differences of an evaluation output folder from the reference's (empty: equal)."""
  import numpy as np
  problems = [f"temporary file left: {p}" for p in leftovers(got)]
  files = file_set(ref)
  if file_set(got) != files:
    a, b = set(file_set(got)), set(files)
    return problems + [f"files differ: only here {sorted(a - b)[:4]}, only in the reference "
                       f"{sorted(b - a)[:4]}"]
  for rel in files:
    here, there = os.path.join(got, rel), os.path.join(ref, rel)
    if rel.endswith(".json") and os.path.basename(os.path.dirname(rel)) in ("", "reports"):
      if strip_timings(_read_json(here)) != strip_timings(_read_json(there)):
        problems.append(f"{rel} differs (timings aside)")
    elif rel.endswith(".npz"):
      with np.load(here) as a, np.load(there) as b:
        diff = _same_arrays({k: a[k] for k in a.files if k != "seconds"},
                            {k: b[k] for k in b.files if k != "seconds"})
      if diff:
        problems.append(f"{rel}: {diff}")
    elif _read_bytes(here) != _read_bytes(there):
      problems.append(f"{rel} differs")
  return problems


# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass
class Reference:
  """What the uninterrupted run of a job did: its length, when its first progress line came,
  the longest compile (from a compiling line to the next line), and its parts: for training
  {model: (steps, checkpoint_every)}, for evaluation {unit: (batches, compiled programs)}."""
  seconds: float
  first_line: float
  longest_compile: float
  parts: dict


def reference_of(run: Run, job: str, out: str) -> Reference:
  lines = progress_lines(run)
  if job == "train":
    from configs import smoke
    config = smoke.get_config()
    parts = {kind: (config[kind].num_steps, config[kind].checkpoint_every)
             for kind in ("score", "classifier")}
  else:
    parts = {}
    for unit in sorted(os.listdir(os.path.join(out, "batches"))):
      programs = sum(l.startswith(f"[eval] {unit}: compiling") for _, l in lines)
      parts[unit] = (len(_stored_batches(os.path.join(out, "batches", unit))), programs)
  spans = [t2 - t1 for (t1, l1), (t2, _) in zip(lines, lines[1:]) if "compiling" in l1]
  return Reference(run.seconds, lines[0][0] if lines else 0.0, max(spans, default=1.0), parts)


def _stored_batches(unit_dir: str) -> list[str]:
  return [f for f in glob.glob(os.path.join(unit_dir, "*", "*.npz"))
          if not f.endswith(".tmp.npz")]


def points_left(job: str, ref: Reference, out: str) -> dict:
  """How often a run started now on `out` would reach each kill point: from the checkpoints
  (training) or the stored batches (evaluation) that earlier runs left."""
  left = dict.fromkeys(POINTS[job], 0)
  for part, (total, other) in ref.parts.items():
    if job == "train":
      from jaxpure import checkpoint
      done = max(checkpoint.checkpoint_steps(os.path.join(out, "checkpoints", part)),
                 default=0)
      if done < total:
        left["compile"] += 1
        left["step"] += total - done
        left["checkpoint_write"] += total // other - done // other
    else:
      done = len(_stored_batches(os.path.join(out, "batches", part)))
      if done < total:
        left["compile"] += other
        left["step"] += total - done
        left["batch_store"] += total - done
  return left


def plan_kill(rng: random.Random, job: str, ref: Reference, left: dict) -> dict:
  """One kill, drawn at random: at a kill point the run will reach (which arrival, how long
  after it; `left`: {point: arrivals to come}), or at a time of the run."""
  how = rng.choice([p for p in POINTS[job] if left.get(p)] + ["time"])
  if how == "time":  # within the part of the reference's length that is left to run
    total = sum(steps for steps, _ in ref.parts.values())
    end = ref.first_line + (ref.seconds - ref.first_line) * max(left["step"] / total, 0.25)
    return {"kill_after": round(rng.uniform(ref.first_line, end), 3), "planned": "time"}
  n = rng.randint(1, left[how])
  if how == "compile":
    delay = rng.uniform(0, ref.longest_compile)
  elif how == "checkpoint_write":
    delay = rng.choice([0.0, rng.uniform(0, 0.2)])
  elif how == "batch_store":
    delay = rng.choice([0.0, 0.0, rng.uniform(0, 0.05)])
  else:
    delay = rng.choice([0.0, rng.uniform(0, 1.0)])
  return {"kill_point": f"{how}:{n}:{delay:.3f}", "planned": f"{how} #{n} +{delay:.3f} s"}


def _targeted(phase: str) -> tuple[str, dict]:
  """A kill that hits `phase` by construction (used only when the random ones missed it)."""
  return {"compile": ("train", {"kill_point": "compile:1:0", "planned": "compile #1"}),
          "step": ("eval", {"kill_point": "step:1:0", "planned": "step #1"}),
          "checkpoint write": ("train", {"kill_point": "checkpoint_write:1:0",
                                         "planned": "checkpoint_write #1"}),
          "batch store": ("eval", {"kill_point": "batch_store:1:0",
                                   "planned": "batch_store #1"})}[phase]


# ----------------------------------------------------------------------------- trials
def run_trial(job: str, plan, root: str, ref_train: str, ref_eval: str, *,
              per_trial: int, log=print) -> dict:
  """One trial from nothing: runs with a kill planned by `plan(out)` (out: the folder the
  runs write) until per_trial kills, then to completion; returns {"kills": [...],
  "problems": [...], ...}."""
  target = os.path.join(root, "out")
  os.makedirs(root)
  args = train_args(target) if job == "train" else eval_args(ref_train, target)
  kills, runs = [], 0
  while True:
    planned = plan(target) if len(kills) < per_trial else {}
    run = run_job(args, kill_point=planned.get("kill_point"),
                  kill_after=planned.get("kill_after"))
    runs += 1
    if run.killed:
      phase, evidence = phase_hit(run, target)
      kills.append({"job": job, "planned": planned["planned"], "phase": phase,
                    "evidence": evidence, "after_seconds": round(run.seconds, 2)})
      log(f"  kill: {job:5s} {planned['planned']:32s} at {run.seconds:5.1f} s -> {phase} "
          f"({evidence})")
      continue
    if run.returncode != 0:
      return {"job": job, "kills": kills, "runs": runs,
              "problems": [f"a rerun exited {run.returncode}: {run.text()[-1500:]}"]}
    break
  problems = (compare_train(target, ref_train) if job == "train"
              else compare_eval(target, ref_eval))
  return {"job": job, "kills": kills, "runs": runs, "problems": problems}


def main(argv=None) -> dict:
  """Runs the references and the trials; prints the figures; returns them as a dict
  {"kills", "survived", "by_phase", "seed", "seconds", "trials"}."""
  args = parse_args(argv)
  print = functools.partial(builtins.print, flush=True)  # noqa: A001  (progress as it comes)
  from benchmarks import common
  t_start = time.monotonic()
  base = args.workdir or tempfile.mkdtemp(prefix="jaxpure_faults_")
  os.makedirs(base, exist_ok=True)
  print(f"== fault injection: {args.kills} SIGKILLs of train.py and evaluate.py "
        f"(configs/smoke.py), seed {args.seed}, in {base}")
  print(f"cpu: {common.cpu_model()}, {os.cpu_count()} cores")
  try:
    ref_train, ref_eval = os.path.join(base, "reference", "train"), os.path.join(
        base, "reference", "eval")
    refs = {}
    for job, job_args, out in (("train", train_args(ref_train), ref_train),
                               ("eval", eval_args(ref_train, ref_eval), ref_eval)):
      run = run_job(job_args)
      if run.returncode != 0:
        common.fail(f"the uninterrupted {job} run failed ({run.returncode}): "
                    f"{run.text()[-1500:]}", code=1)
      refs[job] = reference_of(run, job, out)
      print(f"reference {job}: {run.seconds:.1f} s, parts {refs[job].parts}; longest "
            f"compile {refs[job].longest_compile:.1f} s")
    rng = random.Random(args.seed)
    trials, kills = [], []

    def planner(job):
      return lambda out: plan_kill(rng, job, refs[job], points_left(job, refs[job], out))

    def do_trial(job, plan, per_trial):
      index = len(trials)
      print(f"trial {index + 1} ({job}):")
      trial = run_trial(job, plan, os.path.join(base, f"trial{index + 1:02d}_{job}"),
                        ref_train, ref_eval, per_trial=per_trial, log=print)
      trials.append(trial)
      kills.extend(trial["kills"])
      verdict = "equal to the uninterrupted run" if not trial["problems"] else (
          "DIFFERS: " + "; ".join(trial["problems"][:4]))
      print(f"  {len(trial['kills'])} kills, {trial['runs']} runs: final files {verdict}")

    jobs = ("train", "eval")
    while len(kills) < args.kills:
      job = jobs[len(trials) % 2]
      do_trial(job, planner(job), min(args.per_trial, args.kills - len(kills)))
    # Every phase must be hit: a phase the random kills missed gets a kill aimed at it.
    for phase in PHASES:
      if not any(k["phase"] == phase for k in kills):
        job, plan = _targeted(phase)
        print(f"no random kill hit {phase}: one aimed at it")
        do_trial(job, lambda out, plan=plan: plan, 1)
    survived = sum(len(t["kills"]) for t in trials if not t["problems"])
    by_phase = {p: sum(k["phase"] == p for k in kills)
                for p in PHASES + ("other",)}
    seconds = time.monotonic() - t_start
    print("kills per phase: " + ", ".join(f"{p} {n}" for p, n in by_phase.items()))
    print(f"trials: {len(trials)}, runs: {sum(t['runs'] for t in trials)}, "
          f"{seconds:.0f} s in all")
    print(f"kills survived: {survived} of {len(kills)}")
    result = {"kills": len(kills), "survived": survived, "by_phase": by_phase,
              "seed": args.seed, "seconds": seconds, "trials": trials}
    common.write_json(args.json, result)
    return result
  finally:
    if not args.workdir:
      shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
  main()
