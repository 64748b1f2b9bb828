"""Fault injection for the crash tests only: SIGKILL this process at a named point of a job.

Nothing here runs unless the environment variable JAXPURE_TEST_KILL_AT is set, which only
`benchmarks/fault_injection.py` (and through it tests/test_fault_injection.py) does:

  JAXPURE_TEST_KILL_AT=POINT:N[:DELAY]

kills the process with SIGKILL (no handler, no cleanup: as a power cut or the OOM killer
would) when it reaches POINT for the N-th time (N >= 1), DELAY seconds later (default 0: at
once; with a delay the kill comes from a timer thread while the job goes on). Before the kill
one line "[fault injection] SIGKILL at POINT #N +DELAY s" goes to stderr. The points:

- "compile": before a program is compiled (the train step, an evaluation unit's programs);
- "step": after a training step (its logging and checkpoint call included) or an evaluation
  batch (computed, stored and reported);
- "checkpoint_write": when a checkpoint save has started (orbax writes in the background);
- "batch_store": when an evaluation batch's temporary file is written, before it is renamed
  into place.

Unset, `reached` costs one dictionary lookup.
"""

import os
import signal
import sys
import threading

ENV = "JAXPURE_TEST_KILL_AT"
POINTS = ("compile", "step", "checkpoint_write", "batch_store")

_counts: dict[str, int] = {}


def parse(spec: str) -> tuple[str, int, float]:
  """(point, n, delay seconds) of a JAXPURE_TEST_KILL_AT value; ValueError when malformed."""
  parts = spec.split(":")
  if len(parts) not in (2, 3) or parts[0] not in POINTS:
    raise ValueError(f"{ENV}={spec!r}; expected POINT:N[:DELAY] with POINT in {POINTS}")
  n, delay = int(parts[1]), float(parts[2]) if len(parts) == 3 else 0.0
  if n < 1 or delay < 0:
    raise ValueError(f"{ENV}={spec!r}; expected N >= 1 and DELAY >= 0")
  return parts[0], n, delay


def _kill(point: str, n: int, delay: float) -> None:
  print(f"[fault injection] SIGKILL at {point} #{n} +{delay:.3f} s", file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


def reached(point: str) -> None:
  """Counts one arrival at `point`; kills the process there (or DELAY later) when
  JAXPURE_TEST_KILL_AT names this point and arrival."""
  spec = os.environ.get(ENV)
  if not spec:
    return
  target, n, delay = parse(spec)
  if point != target:
    return
  _counts[point] = _counts.get(point, 0) + 1
  if _counts[point] != n:
    return
  if delay <= 0:
    _kill(point, n, delay)
  timer = threading.Timer(delay, _kill, (point, n, delay))
  timer.daemon = True  # a job that ends first is not kept waiting for it
  timer.start()
