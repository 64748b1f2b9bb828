"""Real multi-process runs on localhost: 2 processes x 2 fake CPU devices vs 1 process x 4.

Marked `multihost` (excluded from the default run, run by .ci/run): python -m pytest -m multihost
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxpure import data

pytestmark = pytest.mark.multihost
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def _start(mode, out, workdir, devices, *dist):
  return subprocess.Popen([sys.executable, WORKER, mode, str(out), str(workdir),
                           *map(str, dist)], env=_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out


def _run_both(mode, tmp_path):
  data.open_split("digits", "train")  # prepared once, before the processes read it
  data.open_split("digits", "test")
  one = _start(mode, tmp_path / "one.npz", tmp_path / "w1", 4)
  _finish(one)
  port = _free_port()
  procs = [_start(mode, tmp_path / "two.npz", tmp_path / "w2", 2, f"127.0.0.1:{port}", 2, i)
           for i in range(2)]
  for p in procs:
    _finish(p)
  with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
    assert sorted(a.files) == sorted(b.files)
    return {k: (a[k], b[k]) for k in a.files}


def test_two_processes_train_like_one(tmp_path):
  results = _run_both("train", tmp_path)
  for one, two in results.values():
    np.testing.assert_allclose(one, two, rtol=2e-4, atol=2e-5)
  # both processes wrote one checkpoint tree, readable as a whole (orbax multi-process)
  assert sorted(os.listdir(tmp_path / "w2" / "checkpoints" / "score")) == ["2", "4"]
  assert (tmp_path / "w2" / "metrics.jsonl").read_text().count("\n") == 2  # process 0 only


def test_two_processes_purify_and_attack_like_one(tmp_path):
  results = _run_both("purify", tmp_path)
  for name, (one, two) in results.items():
    assert one.shape[-4:] == (16, 8, 8, 1) or one.shape == (16, 8, 8, 1), name
    np.testing.assert_allclose(one, two, atol=1e-5)


def test_a_dead_process_stops_the_other(tmp_path):
  data.open_split("digits", "train")
  port = _free_port()
  procs = [_start("train_long", tmp_path / "x.npz", tmp_path / "w", 2, f"127.0.0.1:{port}", 2, i)
           for i in range(2)]
  deadline = time.time() + 300
  while time.time() < deadline and not (tmp_path / "w" / "metrics.jsonl").exists():
    assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-2000:]
    time.sleep(0.5)
  assert (tmp_path / "w" / "metrics.jsonl").exists(), "training did not start"
  procs[1].send_signal(signal.SIGKILL)
  t0 = time.time()
  try:
    procs[0].wait(timeout=10 + 60)  # heartbeat timeout 10 s in the worker, plus slack
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail("the surviving process hung after its peer died")
  assert procs[0].returncode != 0
  assert time.time() - t0 < 70
