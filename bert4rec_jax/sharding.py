"""The device mesh, the shardings used on it, and global arrays built from per-process data.

One `Mesh` spans every device of every process with two axes: `data` (the batch is split over it)
and `model` (size 1 today; reserved for sharding the item table of very large catalogues).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A [data, model=1] mesh over the first `num_devices` devices (default: all of them)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices}, but {len(devices)} devices are visible")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices).reshape(len(devices), 1), (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) dimension is split over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def data_parallelism(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def check_batch_size(name: str, global_batch_size: int, mesh: Mesh) -> int:
    """Returns the per-process batch size, or raises naming the config field that is wrong."""
    devices = data_parallelism(mesh)
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ValueError(
            f"{name}={global_batch_size} must be a positive multiple of the {devices} devices on "
            f"the mesh's data axis"
        )
    return global_batch_size // jax.process_count()


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Lifts this process's rows of a batch to global arrays sharded over the data axis.

    Args:
      mesh: the mesh.
      local: this process's slice of the global batch, every array with the same leading size.

    Returns:
      The same keys, as global jax.Arrays whose leading size is the global batch size.
    """
    sharding = data_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }
