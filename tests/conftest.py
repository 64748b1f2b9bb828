"""Test set-up: 8 fake CPU devices (multi-device code is tested on CPU) and a private TFDS dir.

Both must be set before JAX / TFDS are imported, which is why they live here.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "TFDS_DATA_DIR" not in os.environ:
  os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="jaxpure_tfds_")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)  # `configs` is a top-level folder, not part of the package

import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402

# Tests build the same small networks many times; a persistent cache compiles each once.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAXPURE_TEST_CACHE") or tempfile.mkdtemp(prefix="jaxpure_xla_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def subprocess_env() -> dict:
  """The environment of a CLI run by a test: this process's, with its compilation cache."""
  env = dict(os.environ)
  env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  return env


@pytest.fixture(scope="session")
def smoke_run(request, tmp_path_factory):
  """(workdir, the finished `subprocess.CompletedProcess`) of one `python train.py --config
  configs/smoke.py --workdir WORKDIR` run (both models, 4 steps each, checkpoints at steps 2
  and 4), made once per test session and shared by its worker processes (under a file lock in
  their common temporary folder; a failed run is recorded too, so each worker fails at once
  with its output). Read-only: a test that changes a workdir copies it (`copy_workdir`)."""
  root = tmp_path_factory.getbasetemp()
  if hasattr(request.config, "workerinput"):  # an xdist worker: its basetemp is popen-gwN
    root = root.parent  # the session's folder, above each worker's own
  workdir, record = root / "smoke_run", root / "smoke_run.json"
  with open(root / "smoke_run.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not record.exists():
        shutil.rmtree(workdir, ignore_errors=True)
        cmd = [sys.executable, "train.py", "--config", "configs/smoke.py", "--workdir",
               str(workdir)]
        try:
          proc = subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                                text=True, timeout=900)
          saved = {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
        except subprocess.TimeoutExpired:
          saved = {"returncode": None, "stdout": "", "stderr": "timed out after 900 s"}
        record.write_text(json.dumps(dict(saved, args=cmd)))
      saved = json.loads(record.read_text())
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  if saved["returncode"] != 0:
    pytest.fail(f"the shared smoke run failed (exit {saved['returncode']}): "
                f"{saved['stderr'][-3000:]}")
  return workdir, subprocess.CompletedProcess(saved["args"], 0, saved["stdout"],
                                              saved["stderr"])


def copy_workdir(workdir, dest):
  """A copy of workdir (e.g. the shared smoke run's) at dest, without an evaluation in it."""
  shutil.copytree(workdir, dest, ignore=shutil.ignore_patterns("eval"))
  return dest


def pytest_collection_modifyitems(config, items):
  """Multi-process tests run only when asked for (-m multihost or -k multihost)."""
  asked = "multihost" in (config.option.markexpr or "") + (config.option.keyword or "")
  if asked:
    return
  skipped = [item for item in items if item.get_closest_marker("multihost")]
  if skipped:
    config.hook.pytest_deselected(items=skipped)
    items[:] = [item for item in items if not item.get_closest_marker("multihost")]


def write_random_workdir(config, workdir: str, seed: int = 0) -> dict:
  """Writes randomly initialised networks of `config` into workdir as params-only
  checkpoints (what the importers write, which evaluate.py and load_defense read) in
  seconds, without training; returns {kind: variables} as written."""
  import jax.numpy as jnp
  from jaxpure import checkpoint, model_specs
  from jaxpure.jobs import loading
  written = {}
  for i, (kind, spec) in enumerate(model_specs.SPECS.items()):
    module = spec.build(config)
    x = jnp.zeros((1,) + model_specs.image_shape(config), jnp.float32)
    variables = jax.device_get(jax.jit(lambda k: spec.init(module, k, x))(  # noqa: B023
        jax.random.key(seed + i)))
    checkpoint.save_variables(loading.model_dir(workdir, kind), variables,
                              spec.identity(config), step=0)
    written[kind] = variables
  return written
