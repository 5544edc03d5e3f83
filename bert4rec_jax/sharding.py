"""The device mesh, the shardings used on it, and global arrays built from per-process data.

One `Mesh` spans every device of every process with two axes: `data` (the batch is split over it)
and `model` (the rows of the item table and of the output bias are split over it, for catalogues
too large for one device; `config.mesh.model`, 1 by default).

Vocabulary-parallel parameters: with `model` > 1 the two item-row parameters (`ITEM_ROW_PARAMS`)
and their optimizer moments are split by rows over `model`, everything else is replicated. An
array's rows must divide evenly over the axis, so their row count is the vocabulary rounded up to
a multiple of the axis (`padded_vocab_size`): the extra rows are zeros that the losses and the
rankers never score. With `model` = 1 nothing is padded. Checkpoints keep the rows of the mesh
that saved them; `fit_item_rows` pads or cuts them to another mesh's count (the extra rows hold
zeros only).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"


# Parameters whose leading dimension is the item vocabulary (ids 0..V-1): split over `model`.
ITEM_ROW_PARAMS = ("item_embedding", "output_bias")


def make_mesh(num_devices: int | None = None, *, data: int = 0, model: int = 1) -> Mesh:
    """A [data, model] mesh over the first `num_devices` devices (default: all of them).

    Devices are laid out process by process (each process's own devices in `jax.devices()`
    order), so that with several processes a `model` group never spans two processes as long as
    `model` divides the devices of a process: the collectives of the vocabulary-parallel loss then
    stay on one host's interconnect. A plain reshape rather than `mesh_utils.create_device_mesh`,
    which may reorder devices and would change the single-process [data, 1] mesh of earlier runs.

    Args:
      num_devices: use only the first devices (tests, benchmarks); None = every device.
      data: devices on the data axis; 0 = all the devices / `model`.
      model: devices the item table's rows are split over.

    Returns:
      The mesh, axes (DATA_AXIS, MODEL_AXIS).

    Raises:
      ValueError: naming mesh.data / mesh.model when the shape does not fit the devices.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices}, but {len(devices)} devices are visible")
        devices = devices[:num_devices]
    count = len(devices)
    if model < 1:
        raise ValueError(f"mesh.model={model} must be a positive number of devices")
    if data < 0:
        raise ValueError(f"mesh.data={data} must be >= 0 (0 = all devices / mesh.model)")
    if data == 0:
        if count % model:
            raise ValueError(
                f"mesh.model={model} does not divide the {count} devices: set mesh.model to a "
                f"divisor of {count}"
            )
        data = count // model
    if data * model != count:
        raise ValueError(
            f"mesh.data={data} x mesh.model={model} = {data * model} devices, but the mesh has "
            f"{count}; set mesh.data=0 to use all of them"
        )
    if jax.process_count() > 1 and model > 1 and jax.local_device_count() % model:
        raise ValueError(
            f"mesh.model={model} must divide the {jax.local_device_count()} devices of each "
            "process, so that a model group stays within one process"
        )
    # Stable sort: one process's devices keep their order, so one process gets today's mesh.
    devices = sorted(devices, key=lambda d: d.process_index)
    return Mesh(np.asarray(devices).reshape(data, model), (DATA_AXIS, MODEL_AXIS))


def model_parallelism(mesh: Mesh) -> int:
    """Devices the item rows are split over."""
    return mesh.shape[MODEL_AXIS]


def padded_vocab_size(vocab_size: int, mesh: Mesh) -> int:
    """The item-row count on `mesh`: vocab_size rounded up to a multiple of the model axis."""
    shards = model_parallelism(mesh)
    return -(-vocab_size // shards) * shards


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): padding a dimension to it lets a handful of
    compiled shapes serve every size (evaluation's history widths, serving's batches)."""
    return 1 << max(0, n - 1).bit_length()


def is_item_rows(path: tuple) -> bool:
    """Whether a tree path ends at an item-row parameter (or an optimizer moment of one)."""
    return bool(path) and getattr(path[-1], "key", None) in ITEM_ROW_PARAMS


def fit_item_rows(tree: Any, rows: int) -> Any:
    """Pads (with zeros) or cuts the leading dimension of the item-row leaves to `rows`.

    Leaves that already have `rows` rows are returned as they are, so on a [data, 1] mesh this is
    the identity. Cutting drops only padding when `rows` >= the vocabulary size.

    Args:
      tree: parameters, a train state, or anything whose item-row leaves are named by
        ITEM_ROW_PARAMS (optax moments mirror the parameters' names).
      rows: the row count wanted, e.g. `padded_vocab_size(V, mesh)`, or V to drop the padding.

    Returns:
      The tree with its item-row leaves resized.
    """

    def fit(path, x):
        if not is_item_rows(path) or np.ndim(x) == 0 or x.shape[0] == rows:
            return x
        if x.shape[0] > rows:
            return x[:rows]
        return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))

    return jax.tree_util.tree_map_with_path(fit, tree)


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for parameters or a train state: item rows over `model`, rest replicated.

    Args:
      tree: arrays or jax.ShapeDtypeStructs; item-row leaves need rows divisible by the model
        axis (`padded_vocab_size`).
      mesh: the mesh.

    Returns:
      A tree of NamedSharding of the same structure.
    """
    rows = NamedSharding(mesh, P(MODEL_AXIS))
    whole = replicated(mesh)
    sharded = model_parallelism(mesh) > 1

    def pick(path, x):
        return rows if sharded and is_item_rows(path) and np.ndim(x) >= 1 else whole

    return jax.tree_util.tree_map_with_path(pick, tree)


def place_params(params: Any, mesh: Mesh, vocab_size: int) -> Any:
    """Parameters from anywhere (e.g. one device after a restore) laid out on `mesh`.

    Args:
      params: the parameters; item-row leaves of any row count >= vocab_size.
      mesh: the mesh to place them on.
      vocab_size: V, the real rows.

    Returns:
      The parameters with `padded_vocab_size(V, mesh)` item rows, split over `model`, the rest
      replicated.
    """
    params = fit_item_rows(params, padded_vocab_size(vocab_size, mesh))
    return jax.device_put(params, state_shardings(params, mesh))


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
