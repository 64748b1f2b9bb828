"""Test set-up: 8 fake CPU devices (multi-device code is tested on CPU) and a private TFDS dir.

Both must be set before JAX / TFDS are imported, which is why they live here.
"""

import os
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

# Tests build the same small networks many times; a persistent cache compiles each once.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAXPURE_TEST_CACHE") or tempfile.mkdtemp(prefix="jaxpure_xla_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
