"""Shared bits of the benchmark scripts: device checks, versions, one-line failures."""

import json
import os
import platform
import sys

import jax


def fail(message: str, code: int = 2):
  """Prints one line to stderr and exits (2: bad request, e.g. a missing device)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


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
