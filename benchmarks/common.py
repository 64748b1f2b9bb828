"""Shared bits of the benchmark scripts: device checks, versions, one-line failures."""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax


def fail(message: str, code: int = 2):
  """Prints one line to stderr and exits (2: bad request, e.g. a missing device)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


class Parser(argparse.ArgumentParser):
  """An ArgumentParser whose usage errors are one line on stderr and exit code 2."""

  def error(self, message):
    fail(f"{message} (see --help)")


def select_device(kind: str) -> jax.Device:
  """The first JAX device of `kind` ("cpu" or "gpu"); exits 2 in one line if there is none."""
  if kind not in ("cpu", "gpu"):
    fail(f"--device {kind!r}: expected 'cpu' or 'gpu'")
  try:
    devices = jax.devices(kind)
  except RuntimeError:
    devices = []
  if not devices:
    fail(f"--device {kind}: no JAX {kind.upper()} device on this machine "
         f"(available: {sorted({d.platform for d in jax.devices()})})")
  return devices[0]


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def describe(device: jax.Device) -> dict:
  """Device, CPU model, core count and library versions, for the report header."""
  import flax
  info = {"device": f"{device.platform}: {device.device_kind}", "cpu": cpu_model(),
          "cpu_cores": os.cpu_count(), "jax": jax.__version__, "flax": flax.__version__,
          "python": platform.python_version()}
  try:
    import torch
    info["torch"] = torch.__version__
  except ImportError:
    pass
  return info


def print_header(title: str, info: dict) -> None:
  print(f"== {title}")
  for k, v in info.items():
    print(f"{k}: {v}")


def write_json(path: str | None, obj) -> None:
  """Writes a benchmark's numbers to `path` (if given) and says so."""
  if path:
    with open(path, "w") as f:
      json.dump(obj, f, indent=1)
    print(f"wrote {path}")


def memory_limit_bytes(device: jax.Device) -> int | None:
  """Memory a computation on `device` may use: the allocator's limit on an accelerator,
  physical RAM on the CPU."""
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    return None


def is_out_of_memory(e: BaseException) -> bool:
  """Whether an exception from JAX or PyTorch means the device ran out of memory."""
  text = str(e)
  return ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
          or "can't allocate memory" in text or type(e).__name__ == "OutOfMemoryError")


def one_line(e: BaseException, limit: int = 300) -> str:
  """An exception's message on one line, at most `limit` characters."""
  return " ".join(str(e).split())[:limit]


def run_once_each(fns: dict, release=lambda: None) -> tuple[dict, dict]:
  """Calls each of fns {name: () -> output} once, in order: ({name: output} of those that ran,
  {name: one-line message} of those that ran out of device memory). `release()` is called
  after each out-of-memory (to hand the allocator's cached blocks back before the next one).
  Any other exception propagates."""
  outputs, out_of_memory = {}, {}
  for name, fn in fns.items():
    try:
      outputs[name] = fn()
    except Exception as e:  # noqa: BLE001  (only out-of-memory is caught: re-raised otherwise)
      if not is_out_of_memory(e):
        raise
      out_of_memory[name] = one_line(e)
      release()
  return outputs, out_of_memory


def run_against_torch(run_benchmark, args, oom_hint: str) -> int:
  """The main of a benchmark that times jaxpure against PyTorch: needs torch (one line, exit 2
  without it), keeps JAX from preallocating the shared accelerator, turns out-of-memory into
  one line with `oom_hint`, and writes the report to args.json."""
  try:
    import torch  # noqa: F401
  except ImportError:
    fail('PyTorch is not installed: pip install -e ".[bench]"')
  # JAX and PyTorch share an accelerator here: JAX must not take 75% of its memory up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  try:
    report = run_benchmark(args)
  except Exception as e:  # noqa: BLE001
    if is_out_of_memory(e):
      fail(f"out of memory: {one_line(e)}; {oom_hint}")
    raise
  write_json(args.json, report)
  return 0


def timed(fn, sync) -> float:
  """Wall seconds of `sync(fn())`."""
  start = time.perf_counter()
  sync(fn())
  return time.perf_counter() - start


def pairwise_ratio(seconds: dict, other: str, base: str = "jaxpure") -> dict:
  """`other`'s seconds over `base`'s within each round (above 1: `base` is faster), as
  {"median", "min", "max", "pairs"} over the rounds; seconds: {name: [seconds per round]}."""
  values = [o / b for o, b in zip(seconds[other], seconds[base])]
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "pairs": len(values)}


def print_ratio(key: str, r: dict) -> None:
  """One line: the median ratio and its min-max over the pairs."""
  print(f"ratio {key}: {r['median']:.2f} (min-max over {r['pairs']} pairs: "
        f"{r['min']:.2f}-{r['max']:.2f})")
