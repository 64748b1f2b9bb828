"""The CLIs' persistent compilation cache (`jaxpure.cli.enable_compilation_cache`): a second
process compiling the same program loads it from the cache directory instead of compiling it."""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Enables the cache (min compile time 0: the toy program compiles in milliseconds), compiles
# and runs one jitted function, and prints the cache events JAX recorded and the settings.
_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp
from jaxpure import cli

events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
min_time = float(sys.argv[1]) if len(sys.argv) > 1 else None
path = cli.enable_compilation_cache() if min_time is None else cli.enable_compilation_cache(
    min_time)
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)
value = float(f(jnp.ones((8, 8))).sum())
print(json.dumps({"path": path, "value": value,
                  "dir": jax.config.jax_compilation_cache_dir,
                  "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run(env_cache, *args, **env_vars):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT, **env_vars)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
  if env_cache is None:
    env.pop("JAXPURE_COMPILATION_CACHE", None)
  else:
    env["JAXPURE_COMPILATION_CACHE"] = str(env_cache)
  r = subprocess.run([sys.executable, "-c", _SCRIPT, *args], capture_output=True, text=True,
                     env=env, cwd=REPO_ROOT, timeout=120)
  assert r.returncode == 0, r.stderr
  return json.loads(r.stdout.strip().splitlines()[-1])


def _entries(path):
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_second_process_loads_the_compiled_program(tmp_path):
  cache = tmp_path / "xla"
  first = _run(cache, "0")
  assert first["path"] == str(cache) == first["dir"]
  assert first["misses"] >= 1 and first["hits"] == 0
  stored = _entries(cache)
  assert stored  # the compiled program was written
  second = _run(cache, "0")
  assert second["hits"] >= 1 and second["misses"] == 0  # served from the cache
  assert _entries(cache) == stored  # and nothing new written
  assert second["value"] == first["value"]


def test_defaults_and_opting_out(tmp_path):
  got = _run(None, XDG_CACHE_HOME=str(tmp_path))
  cache = tmp_path / "jaxpure" / "xla"
  assert got["path"] == got["dir"] == str(cache) and got["min_time"] == 1.0
  assert _entries(cache) == []  # a millisecond compile is below the 1 s threshold
  off = _run("off", "0")
  assert off["path"] is None and off["dir"] is None and off["hits"] == off["misses"] == 0


def test_unwritable_directory_is_a_warning_not_an_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO_ROOT,
             JAXPURE_COMPILATION_CACHE=str(blocker / "xla"))
  env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
  r = subprocess.run([sys.executable, "-c", _SCRIPT, "0"], capture_output=True, text=True,
                     env=env, cwd=REPO_ROOT, timeout=120)
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout.strip().splitlines()[-1])["path"] is None
  warnings = [l for l in r.stderr.splitlines() if l.startswith("warning: compilation cache off")]
  assert len(warnings) == 1, r.stderr
