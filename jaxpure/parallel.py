"""Device mesh and shardings for data parallelism.

One 1-D mesh axis, `data`, over all devices of all processes. Batches are sharded on their
leading axis; parameters and optimizer state are replicated. Computations are written for the
global batch and `jax.jit` partitions them (gradients are all-reduced by XLA), the successor
of `jax.pmap` with `lax.pmean`.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxpure.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis `data` over `devices` (default: every device of every process).

  Devices are ordered by (process, id), so process p holds the contiguous block p of every
  global batch: a batch's examples sit at the same places whatever the number of processes.
  The axis is Auto: jit propagates the batch sharding through reshapes and vmaps by itself.
  """
  devices = sorted(jax.devices() if devices is None else devices,
                   key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


_AUTO_DETECT_ENV = {  # what jax.distributed.initialize() detects by itself
    "SLURM_NTASKS": "SLURM",
    "OMPI_COMM_WORLD_SIZE": "Open MPI",
    "TPU_WORKER_HOSTNAMES": "TPU pod",
}


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None, *,
                           initialization_timeout: int = 300,
                           heartbeat_timeout_seconds: int = 100) -> bool:
  """Starts JAX's distributed runtime when this is one process of several; returns whether.

  With `coordinator_address` the three arguments say it all (all processes pass the same
  address and count, each its own id). Without, a multi-process SLURM or Open MPI job or a
  TPU pod is detected by JAX itself; a single process does nothing. A process whose peer dies
  is stopped by the runtime after `heartbeat_timeout_seconds` instead of hanging.
  """
  import os
  if coordinator_address is None and (num_processes is not None or process_id is not None):
    raise ConfigError("--num_processes/--process_id need --coordinator_address (host:port)")
  if coordinator_address is not None:
    if num_processes is None or process_id is None or not 0 <= process_id < num_processes:
      raise ConfigError(f"need --num_processes >= 1 and 0 <= --process_id < --num_processes; "
                        f"got num_processes={num_processes}, process_id={process_id}")
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  else:
    detected = [name for var, name in _AUTO_DETECT_ENV.items()
                if os.environ.get(var, "1") not in ("", "1")]
    if not detected:
      return False
    kwargs = {}
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process
  jax.distributed.initialize(**kwargs, initialization_timeout=initialization_timeout,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  return True


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays whose leading axis is the batch: split over `data`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays held whole on every device (parameters, keys, scalars)."""
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """Raises ConfigError unless `batch_size` splits evenly over processes and devices."""
  num_devices = mesh.devices.size
  if batch_size <= 0 or batch_size % num_devices:
    raise ConfigError(
        f"{what}={batch_size} must be a positive multiple of the number of devices "
        f"({num_devices} over {jax.process_count()} process(es))")


def round_up_to_devices(batch_size: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count that is >= batch_size."""
  n = mesh.devices.size
  return -(-batch_size // n) * n
