"""Device mesh and shardings for data parallelism.

One 1-D mesh axis, `data`, over all devices of all processes. Batches are sharded on their
leading axis; parameters and optimizer state are replicated. Computations are written for the
global batch and `jax.jit` partitions them (gradients are all-reduced by XLA), the successor
of `jax.pmap` with `lax.pmean`.
"""

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxpure.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis `data` over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  # Auto axis: jit propagates the batch sharding through reshapes/vmaps by itself (the
  # "sharding annotations" mode); Explicit would make every reshape spell out its sharding.
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


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
