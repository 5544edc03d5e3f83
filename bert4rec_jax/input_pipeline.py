"""The tf.data input path: an epoch's instances in a resumable order, masked on the host.

The rules both input paths share (config, windows, mask counts, next-item rows) are in `cloze`;
docs/training.md ("Input pipeline", "Length buckets") describes the paths; the rules of this one
(masks, order, buckets) are written beside the code that follows them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from bert4rec_jax.cloze import (
    InputConfig,
    make_windows,
    next_item_rows,
    num_instances,
    num_masked,
    window_items,
)
from bert4rec_jax.datasets.corpus import Corpus, Split

# Streams of np.random.SeedSequence([seed, stream, ...]); distinct tags keep the draws independent.
_FIXED_MASKS_STREAM = 1
_FRESH_MASKS_STREAM = 2
_ORDER_STREAM = 3
_BATCH_ORDER_STREAM = 4  # the order of an epoch's bucketed batches

# Random keys drawn at once while masking (float32), to bound memory on 20M-interaction data.
_MASK_CHUNK_ELEMENTS = 1 << 22
# Rows built per chunk inside tf.data: large enough to amortise numpy's per-call cost, small
# enough that a chunk of ML-20M rows (200 ids) stays ~13 MB.
_CHUNK_ROWS = 16384
# Epochs whose order (and fresh masks) are kept; two covers the chunks in flight at a boundary.
_EPOCH_CACHE_SIZE = 2


@dataclasses.dataclass(frozen=True, eq=False)
class _Masks:
    """Compact masks of R masked rows (one per window copy).

    Full rows (ids [N] and the [P] prediction arrays) are built only for the rows of the batches
    being produced, in chunks inside tf.data, so a whole epoch is never resident: ML-20M's ~3M
    instances x 200 ids would be ~2.4 GB of int32, its compact masks are ~60 MB.

    positions: uint8/uint16 [R, P]; masked positions ascending, unused slots 0.
    counts: uint8/uint16 [R]; k, the masked positions of each row.
    inputs: int32 [R, P] or None; the token written at each masked position ("bert" mode only;
      None means always [MASK]).
    """

    positions: np.ndarray
    counts: np.ndarray
    inputs: np.ndarray | None


def _draw_masks(
    items: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    config: InputConfig,
    rng: np.random.Generator,
    mask_id: int,
    num_items: int,
) -> _Masks:
    """Draws cloze masks for R rows (windows given by `starts`, `lengths`).

    k positions are drawn uniformly without replacement among each row's n real positions (never
    padding): rows of equal length share k, so each length is one vectorised draw of random keys
    [rows, n] whose k smallest (argpartition) are the masked positions. Only n keys per row are
    drawn, not max_len, which matters on short-sequence data (Beauty: mean 8.8 of 50).
    """
    num_rows = len(lengths)
    pmax = config.max_predictions
    pos_dtype = np.min_scalar_type(config.max_len)
    positions = np.zeros((num_rows, pmax), dtype=pos_dtype)
    counts = num_masked(lengths, config).astype(pos_dtype)
    order = np.argsort(lengths, kind="stable")
    bounds = np.flatnonzero(np.diff(lengths[order])) + 1
    for rows in np.split(order, bounds):
        if not len(rows):
            continue
        n = int(lengths[rows[0]])
        k = int(counts[rows[0]])
        step = max(1, _MASK_CHUNK_ELEMENTS // n)
        for lo in range(0, len(rows), step):
            chunk = rows[lo : lo + step]
            if k == n:  # every position is masked; nothing to draw
                chosen = np.broadcast_to(np.arange(n), (len(chunk), n))
            else:
                keys = rng.random((len(chunk), n), dtype=np.float32)  # [rows, n]
                chosen = np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1)
            positions[chunk, :k] = chosen
    inputs = None
    if config.mask_replacement == "bert":
        inputs = np.empty((num_rows, pmax), dtype=np.int32)
        step = max(1, _MASK_CHUNK_ELEMENTS // pmax)
        for lo in range(0, num_rows, step):
            sl = slice(lo, lo + step)
            pos = positions[sl].astype(np.int64)  # [rows, P]
            original = items[starts[sl, None] + pos]
            u = rng.random(pos.shape, dtype=np.float32)
            random_items = rng.integers(1, num_items + 1, size=pos.shape, dtype=np.int32)
            # The original: 80% [MASK]; of the rest, half keep the item, half a random item.
            inputs[sl] = np.where(u < 0.8, mask_id, np.where(u < 0.9, random_items, original))
    return _Masks(positions=positions, counts=counts, inputs=inputs)


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(entropy)))


class TrainingInstances:
    """One data set's training instances: windows, masks, epoch orders and batch building.

    Builds nothing per epoch up front; `dataset()` / `train_batches()` build rows lazily, and the
    other methods are there for tests and tools (tracing rows to users, whole-epoch arrays).
    """

    def __init__(self, corpus: Corpus, split: Split, config: InputConfig):
        """Cuts the windows and, for fixed masks, draws every copy's masks once from the seed.

        Args:
          corpus: the corpus.
          split: its leave-one-out split; windows come from `split.train_ends` only.
          config: the pipeline's config.

        Raises:
          ValueError: when no user has a training item.
        """
        self.corpus = corpus
        self.split = split
        self.config = config
        self.windows = make_windows(
            corpus, split, config.window_len, config.sliding_step, config.min_window
        )
        if not len(self.windows):
            raise ValueError(
                f"data set {corpus.name!r} has no user with {config.min_window} training items"
            )
        self._fixed_masks = None
        if not config.fresh_masks and not config.next_item:
            rows = np.tile(np.arange(len(self.windows)), config.dupe_factor)  # copy-major
            self._fixed_masks = self._draw(rows, _rng(config.seed, _FIXED_MASKS_STREAM))
        # Reentrant: a bucketed epoch's batches are built from its order, under the same lock.
        self._lock = threading.RLock()
        self._epochs: dict[int, tuple[np.ndarray, _Masks]] = {}
        self._bucketed: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _draw(self, window_rows: np.ndarray, rng: np.random.Generator) -> _Masks:
        return _draw_masks(
            self.corpus.items,
            self.windows.starts[window_rows],
            self.windows.lengths[window_rows],
            self.config,
            rng,
            self.corpus.mask_id,
            self.corpus.num_items,
        )

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    @property
    def num_masked_rows(self) -> int:
        """Instances per epoch with drawn masks: windows x copies."""
        return self.num_windows * self.config.copies

    @property
    def num_instances(self) -> int:
        """Instances per epoch: windows x copies, plus the mask-last instances."""
        return self.config.num_instances(self.num_windows)

    def steps_per_epoch(self, global_batch_size: int, process_count: int = 1) -> int:
        """Global batches per epoch (the remainder of an epoch is dropped).

        Raises:
          ValueError: naming `batch_size` when it is not positive, not divisible by the process
            count, or larger than an epoch.
        """
        return _steps_per_epoch(self.num_instances, global_batch_size, process_count)

    def _epoch_state(self, epoch: int) -> tuple[np.ndarray, _Masks]:
        """The epoch's order (int64 [I]) and masks, cached for the chunks that share them."""
        with self._lock:  # tf.data builds chunks on several threads
            state = self._epochs.get(epoch)
            if state is None:
                order = _rng(self.config.seed, _ORDER_STREAM, epoch).permutation(self.num_instances)
                if self.config.next_item:
                    masks = None  # next-item rows have no masks
                elif self._fixed_masks is not None:
                    masks = self._fixed_masks
                else:
                    rng = _rng(self.config.seed, _FRESH_MASKS_STREAM, epoch)
                    masks = self._draw(np.arange(self.num_windows), rng)
                state = (order, masks)
                self._epochs[epoch] = state
                while len(self._epochs) > _EPOCH_CACHE_SIZE:
                    del self._epochs[min(self._epochs)]
            return state

    def permutation(self, epoch: int) -> np.ndarray:
        """int64 [I]: the epoch's instance order, drawn from (seed, epoch).

        The data position is a function of the global step alone: step s is batch
        `s % steps_per_epoch` of epoch `s // steps_per_epoch`, global batch b is
        `perm[b * G:(b + 1) * G]` (the remainder of an epoch is dropped), and process p takes
        rows `[p * G / P, (p + 1) * G / P)` of it. So a resumed run sees exactly the batches an
        uninterrupted one would, and the global batch does not depend on the process count.
        """
        return self._epoch_state(epoch)[0]

    def instance_windows(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        """int64 [...]: the window of each instance of an epoch (`InputConfig.num_instances`).

        With a `mask_last_share`, mask-last instance j of epoch e is the mask-last copy of window
        `(j + e * M) % W`: the rotation by e * M spreads the remainder M % W (and, when M < W,
        the choice of windows at all) evenly over the windows across epochs; M = W gives the
        default. A fixed count per epoch (not a per-instance coin) keeps every epoch's size, so
        `steps_per_epoch`, the order and resume are as without a share.
        """
        idx = np.asarray(indices, dtype=np.int64)
        num_windows, masked_rows = self.num_windows, self.num_masked_rows
        # Mask-last instance j is window (j + epoch * M) % W: j itself by default (M = W).
        rotation = epoch * self.config.num_mask_last(num_windows)
        return np.where(
            idx >= masked_rows, (idx - masked_rows + rotation) % num_windows, idx % num_windows
        )

    def bucketed_batches(self, epoch: int, global_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """An epoch's global batches with buckets on (docs/training.md, "Length buckets").

        An instance belongs to the shortest bucket that holds its window. The epoch keeps
        exactly the unbucketed instances (`perm[:S * G]`: the same instances, masks and S); they
        are grouped by bucket, stably (each bucket keeps the epoch's random order), cut into S
        batches of G, and the batches shuffled from (seed, epoch). Only the batch at each bucket
        boundary mixes two buckets; it takes the longer one's shape. A bucketed row is the
        unbucketed row cut: only padding goes, so the loss of a batch is that of the same rows
        padded to N (up to float rounding; dropout draws differ with the shape).

        Returns:
          int64 [S, G], the instances of each global batch in order, and int64 [S], each batch's
          bucket; S = steps per epoch, the same as without buckets.
        """
        if not self.config.buckets:
            raise ValueError("bucketed_batches needs input.buckets")
        key = (epoch, global_batch_size)
        with self._lock:
            got = self._bucketed.get(key)
            if got is None:
                spe = _steps_per_epoch(self.num_instances, global_batch_size, 1)
                kept = self.permutation(epoch)[: spe * global_batch_size]  # as without buckets
                lengths = self.windows.lengths[self.instance_windows(kept, epoch)]
                buckets = self.config.bucket_of(lengths)
                # Stable: within a bucket the epoch's random order stays. Cut into batches, only
                # the batch at each bucket boundary mixes two buckets; it takes the longer one.
                by_bucket = np.argsort(buckets, kind="stable")
                batches = kept[by_bucket].reshape(spe, global_batch_size)
                batch_buckets = buckets[by_bucket].reshape(spe, global_batch_size)[:, -1]
                order = _rng(self.config.seed, _BATCH_ORDER_STREAM, epoch).permutation(spe)
                got = (batches[order], batch_buckets[order])
                self._bucketed[key] = got
                while len(self._bucketed) > _EPOCH_CACHE_SIZE:
                    del self._bucketed[min(self._bucketed)]
            return got

    def batch_buckets(
        self,
        epoch: int,
        global_batch_size: int,
        first_batch: int = 0,
        num_batches: int | None = None,
    ) -> np.ndarray | None:
        """int64 [num_batches]: the buckets of some batches of an epoch; None without buckets."""
        if not self.config.buckets:
            return None
        buckets = self.bucketed_batches(epoch, global_batch_size)[1]
        end = len(buckets) if num_batches is None else first_batch + num_batches
        return buckets[first_batch:end]

    def local_indices(
        self,
        epoch: int,
        global_batch_size: int,
        *,
        first_batch: int = 0,
        num_batches: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ) -> np.ndarray:
        """int64 [num_batches, G / process_count]: this process's instances of some batches.

        Args:
          epoch: the epoch.
          global_batch_size: G.
          first_batch: the first global batch of the epoch wanted.
          num_batches: how many; default: to the end of the epoch.
          process_index: this process, in [0, process_count).
          process_count: processes sharing each global batch.

        Returns:
          Row j of batch b holds instance `perm[b * G + process_index * G / process_count + j]`.
        """
        spe = self.steps_per_epoch(global_batch_size, process_count)
        _check_process(process_index, process_count)
        if num_batches is None:
            num_batches = spe - first_batch
        if not (0 <= first_batch and first_batch + num_batches <= spe and num_batches >= 0):
            raise ValueError(
                f"batches [{first_batch}, {first_batch + num_batches}) outside the epoch's {spe}"
            )
        local = global_batch_size // process_count
        if self.config.buckets:
            batches = self.bucketed_batches(epoch, global_batch_size)[0]
            order = batches[first_batch : first_batch + num_batches]  # [batches, G]
        else:
            order = self.permutation(epoch)[
                first_batch * global_batch_size : (first_batch + num_batches) * global_batch_size
            ].reshape(num_batches, global_batch_size)  # [batches, G]
        return order[:, process_index * local : (process_index + 1) * local]

    def materialize(
        self,
        indices: np.ndarray,
        epoch: int,
        *,
        with_users: bool = False,
        bucket: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Builds the rows of some instances of an epoch.

        Args:
          indices: int [...]; instance numbers in [0, num_instances).
          epoch: the epoch (it picks the masks when they are fresh each epoch).
          with_users: also return 'users' int32 [...], each row's user row (corpus user + 1, as
            `models.BERT4Rec` reads it; 0 = unknown), as `dataset()` and `device_input` do.
          bucket: None: rows of N positions and P slots. A bucket: rows cut to its shape
            (`InputConfig.bucket_shape`), which must hold every instance's window.

        Returns:
          'ids' int32 [..., N], 'positions' int32 [..., P], 'labels' int32 [..., P],
          'weights' float32 [..., P] (and 'users'); N and P are the bucket's when given.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self.config.next_item:
            return self._next_item_rows(indices, epoch, with_users=with_users, bucket=bucket)
        batch_shape = indices.shape
        idx = indices.reshape(-1)
        _, masks = self._epoch_state(epoch)
        n, pmax = self.config.max_len, self.config.max_predictions
        masked_rows = self.num_masked_rows
        is_last = idx >= masked_rows  # the mask-last copies follow the masked copies
        window = self.instance_windows(idx, epoch)
        mask_row = np.where(is_last, 0, idx)
        starts = self.windows.starts[window]  # [R]
        lengths = self.windows.lengths[window].astype(np.int64)  # [R]
        n_cut, p_cut = self.config.bucket_shape(bucket)
        if len(lengths) and lengths.max() > n_cut:
            raise ValueError(f"a window of {lengths.max()} items does not fit bucket {bucket}")

        ids, _ = window_items(self.corpus.items, starts, lengths, n)  # [R, N]

        positions = masks.positions[mask_row].astype(np.int32)  # [R, P]
        counts = masks.counts[mask_row].astype(np.int64)  # [R]
        # The mask-last copy masks the last item only, always with [MASK] (the original's
        # force-last masking, i.e. what the model sees at test time).
        positions[is_last] = 0
        positions[is_last, 0] = lengths[is_last] - 1
        counts[is_last] = 1
        used = np.arange(pmax) < counts[:, None]  # [R, P]
        labels = np.take_along_axis(ids, positions, axis=1) * used  # [R, P]
        # A mask-last row's prediction weighs mask_last_weight (exactly 1 * used by default).
        row_weight = np.where(is_last, np.float32(self.config.mask_last_weight), np.float32(1))
        weights = used * row_weight[:, None]  # [R, P] float32

        rows, slots = np.nonzero(used)
        if masks.inputs is None:
            ids[rows, positions[rows, slots]] = self.corpus.mask_id
        else:
            inputs = masks.inputs[mask_row]  # [R, P]
            inputs[is_last] = self.corpus.mask_id
            ids[rows, positions[rows, slots]] = inputs[rows, slots]

        # A bucket's rows are the full rows cut: its windows fill at most n_cut positions and
        # mask at most p_cut of them, so only padding goes.
        out = {
            "ids": ids[:, :n_cut].reshape(*batch_shape, n_cut),
            "positions": positions[:, :p_cut].reshape(*batch_shape, p_cut),
            "labels": labels[:, :p_cut].astype(np.int32).reshape(*batch_shape, p_cut),
            "weights": weights[:, :p_cut].astype(np.float32).reshape(*batch_shape, p_cut),
        }
        if with_users:
            out["users"] = self._user_rows(window).reshape(batch_shape)
        return out

    def _user_rows(self, window: np.ndarray) -> np.ndarray:
        """int32 [R]: the user row (corpus user + 1, as `models.BERT4Rec` reads it) of windows."""
        return (self.windows.users[window] + 1).astype(np.int32)

    def _next_item_rows(
        self, indices: np.ndarray, epoch: int, *, with_users: bool, bucket: int | None
    ) -> dict[str, np.ndarray]:
        """`materialize` for next-item rows (`cloze.next_item_rows`); instance i is window i."""
        batch_shape = indices.shape
        window = self.instance_windows(indices.reshape(-1), epoch)
        lengths = self.windows.lengths[window]  # [R], inputs + 1
        n_cut, _ = self.config.bucket_shape(bucket)
        if len(lengths) and lengths.max() - 1 > n_cut:
            raise ValueError(f"a window of {lengths.max()} items does not fit bucket {bucket}")
        rows = next_item_rows(self.corpus.items, self.windows.starts[window], lengths, n_cut)
        out = {key: value.reshape(*batch_shape, n_cut) for key, value in rows.items()}
        if with_users:
            out["users"] = self._user_rows(window).reshape(batch_shape)
        return out

    def epoch_arrays(self, epoch: int, *, with_users: bool = False) -> dict[str, np.ndarray]:
        """Every instance of an epoch, in the epoch's order ([I, ...]; for tests and tools)."""
        return self.materialize(self.permutation(epoch), epoch, with_users=with_users)

    def dataset(
        self,
        global_batch_size: int,
        *,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        num_threads: int | None = None,
        with_users: bool = False,
    ) -> Any:
        """An endless tf.data.Dataset of this process's batches from global step `start_step`.

        A Python generator lists (epoch, first batch, batches) chunks, epoch after epoch;
        a parallel, order-preserving map builds each chunk's rows in numpy [chunk, B, ...];
        unbatch splits it into batches, and prefetch keeps `config.prefetch` of them ready.
        Resuming starts at the right chunk of the right epoch; nothing is skipped by iterating.

        Args:
          global_batch_size: G, rows of a global batch (`batch_size`).
          start_step: the global step of the first batch.
          process_index: this process, in [0, process_count).
          process_count: processes sharing each global batch.
          num_threads: tf.data threads (chunks built at once and the private thread pool);
            None lets tf.data decide.
          with_users: also yield 'users' int32 [B], each row's user row (corpus user + 1, as
            `models.BERT4Rec` reads it), for `model.user_features`.

        Returns:
          A tf.data.Dataset of dicts: 'ids' int32 [B, N], 'positions' int32 [B, P],
          'labels' int32 [B, P], 'weights' float32 [B, P] (and 'users'), B = G / process_count.
        """
        tf = _import_tf()
        spe = self.steps_per_epoch(global_batch_size, process_count)
        _check_process(process_index, process_count)
        if start_step < 0:
            raise ValueError(f"start_step={start_step} must be >= 0")
        local = global_batch_size // process_count
        bucketed = bool(self.config.buckets)
        # A chunk is unbatched into batches of one shape: with buckets, one batch per chunk.
        chunk_batches = 1 if bucketed else max(1, _CHUNK_ROWS // local)
        # With buckets a batch's positions and slots are its bucket's (None: any).
        n, pmax = (None, None) if bucketed else (self.config.max_len, self.config.max_predictions)

        def chunks() -> Iterator[tuple[int, int, int]]:
            epoch, batch = divmod(start_step, spe)
            while True:
                count = min(chunk_batches, spe - batch)
                yield epoch, batch, count
                batch += count
                if batch == spe:
                    epoch, batch = epoch + 1, 0

        def build(epoch, first_batch, num_batches):
            indices = self.local_indices(
                int(epoch),
                global_batch_size,
                first_batch=int(first_batch),
                num_batches=int(num_batches),
                process_index=process_index,
                process_count=process_count,
            )  # [chunk, B]
            bucket = None
            if bucketed:  # one batch: its bucket
                bucket = int(
                    self.batch_buckets(int(epoch), global_batch_size, int(first_batch), 1)[0]
                )
            rows = self.materialize(indices, int(epoch), with_users=with_users, bucket=bucket)
            out = rows["ids"], rows["positions"], rows["labels"], rows["weights"]
            return out + ((rows["users"],) if with_users else ())

        def build_tf(epoch, first_batch, num_batches):
            ids, positions, labels, weights, *users = tf.numpy_function(
                build,
                [epoch, first_batch, num_batches],
                [tf.int32, tf.int32, tf.int32, tf.float32] + [tf.int32] * with_users,
                stateful=False,
            )
            out = {
                "ids": tf.ensure_shape(ids, [None, local, n]),
                "positions": tf.ensure_shape(positions, [None, local, pmax]),
                "labels": tf.ensure_shape(labels, [None, local, pmax]),
                "weights": tf.ensure_shape(weights, [None, local, pmax]),
            }
            if with_users:
                out["users"] = tf.ensure_shape(users[0], [None, local])
            return out

        scalar = tf.TensorSpec([], tf.int64)
        ds = tf.data.Dataset.from_generator(chunks, output_signature=(scalar, scalar, scalar))
        ds = ds.map(
            build_tf,
            num_parallel_calls=num_threads or tf.data.AUTOTUNE,
            deterministic=True,  # the data position must be a function of the step alone
        )
        ds = ds.unbatch().prefetch(self.config.prefetch)
        options = tf.data.Options()
        options.deterministic = True
        if num_threads:
            options.threading.private_threadpool_size = num_threads
            options.threading.max_intra_op_parallelism = 1
        return ds.with_options(options)


def _import_tf():
    """Imports TensorFlow for tf.data only: it must not take accelerator memory from JAX."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF's runtime already started (someone used it first); leave it
        pass
    return tf


def _check_process(process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} outside [0, process_count={process_count})"
        )


def _steps_per_epoch(num_instances: int, global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"batch_size={global_batch_size} must be a positive multiple of the "
            f"{process_count} processes"
        )
    if num_instances < global_batch_size:
        raise ValueError(
            f"batch_size={global_batch_size} is larger than an epoch's {num_instances} training "
            f"instances; lower batch_size or raise input.dupe_factor"
        )
    return num_instances // global_batch_size


def steps_per_epoch(
    corpus: Corpus,
    split: Split,
    config: InputConfig,
    global_batch_size: int,
    process_count: int = 1,
) -> int:
    """Global batches per epoch, `num_instances // global_batch_size`.

    Raises:
      ValueError: naming `batch_size` when it is not positive, not divisible by `process_count`,
        or larger than an epoch.
    """
    return _steps_per_epoch(num_instances(corpus, split, config), global_batch_size, process_count)


def train_batches(
    corpus: Corpus,
    split: Split,
    config: InputConfig,
    global_batch_size: int,
    *,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    with_users: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches, forever, from global step `start_step`.

    Args:
      corpus: the corpus.
      split: its leave-one-out split (training windows end at `split.train_ends`).
      config: the pipeline's config.
      global_batch_size: G, rows of a global batch; divisible by `process_count`.
      start_step: the global step of the first batch yielded (resume from a checkpoint).
      process_index: this process (`jax.process_index()`).
      process_count: processes (`jax.process_count()`).
      with_users: also yield 'users' int32 [B], the rows' user rows (corpus user + 1), for
        `model.user_features`.

    Returns:
      An iterator of dicts: 'ids' int32 [B, N], 'positions' int32 [B, P], 'labels' int32 [B, P],
      'weights' float32 [B, P] (and 'users'), with B = G / process_count; the k-th dict is this
      process's rows of global batch start_step + k.
    """
    instances = TrainingInstances(corpus, split, config)
    ds = instances.dataset(
        global_batch_size,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        with_users=with_users,
    )
    return ds.as_numpy_iterator()
