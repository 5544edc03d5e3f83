"""The device mesh, the shardings used on it, and global arrays built from per-process data.

One `Mesh` spans every device of every process with two axes: `data` (the batch is split over it)
and `model` (size 1 today; reserved for sharding the item table of very large catalogues).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator, Mapping

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


def prefetch_to_device(
    batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Lifts host batches to global arrays `size` batches ahead of their use.

    The copy to the devices is dispatched asynchronously, so while the step of batch s runs,
    batches s + 1 .. s + size are already on their way: the host-to-device copy overlaps the
    step instead of preceding it. Batches come out in the order they go in.

    Args:
      batches: this process's rows of each global batch, e.g. `input_pipeline.train_batches`.
      mesh: the mesh; batches are split over its data axis (see `global_batch`).
      size: batches dispatched ahead of the one handed out (>= 1); the devices hold up to
        size + 1 batches.

    Returns:
      An iterator of `global_batch(mesh, b)` for each b of `batches`, ending when they end.

    Raises:
      ValueError: when size < 1.
    """
    if size < 1:  # checked here, not at the first next(): this is not itself a generator
        raise ValueError(f"prefetch size={size} must be at least 1")
    return _prefetch(iter(batches), mesh, size)


def _prefetch(
    batches: Iterator[Mapping[str, np.ndarray]], mesh: Mesh, size: int
) -> Iterator[dict[str, jax.Array]]:
    queue: collections.deque[dict[str, jax.Array]] = collections.deque()

    def enqueue(n: int) -> None:
        for local in itertools.islice(batches, n):
            queue.append(global_batch(mesh, local))

    enqueue(size)
    while queue:
        enqueue(1)  # before handing out batch s, so s + 1 .. s + size are in flight during its step
        yield queue.popleft()
