"""The device input path (`input.pipeline="device"`): training batches drawn on the devices.

The corpus's flat arrays go to every device once, replicated, and each step's batch is drawn there
with `jax.random` by the rules of `cloze`, beside the jitted train step or inside it; the host only
dispatches. docs/training.md ("Input pipeline") compares it with tf.data; how it draws is
written beside `_draw_rows`. Imports no TensorFlow, so it runs on bare accelerator images.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from bert4rec_jax import cloze
from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax.datasets.corpus import PAD_ID, Corpus, Split

Batch = dict[str, jax.Array]

# fold_in(key, t) equals split(key, n)[t] for t < n, and the train state splits key(seed) in two
# (parameters, dropout). A tag far from small counts keeps the input's keys apart from those.
_INPUT_STREAM = 0x1D47A
_ROWS_STREAM = 1
_FIXED_MASKS_STREAM = 2
# 32-bit words drawn per row for its instance (rejection sampling, see `_uniform_below`).
_INSTANCE_WORDS = 4
# Host stream of a step's bucket (entropy [seed, _INPUT_STREAM, this, step]).
_BUCKET_STREAM = 3
# Indices are int32 on device (64-bit is off by default in JAX).
_INT32_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about a draw; hashable, so equal sources share one compiled program."""

    config: cloze.InputConfig
    mesh: Mesh
    global_batch_size: int
    num_windows: int
    num_instances: int
    mask_id: int
    num_items: int
    with_users: bool = False
    bucket: int | None = None  # with input.buckets: the bucket this program draws from
    bucket_windows: int = 0  # W_k, its windows


class DeviceInput:
    """Training batches drawn on the devices from a device-resident corpus.

    Build it once per run; `batch(step)` is then a pure function of the step (and the seed):

        source = DeviceInput(corpus, split, input_config, config.batch_size, mesh)
        batch = source.batch(step)  # dict of global jax.Arrays, split over `data`

    or fuse the draw into the train step (one dispatch per step):

        fused = source.jit_fused_step(train_step.make_train_step(model, tx, schedule), state)
        state, metrics = fused(state)  # draws the batch of step `state.step`

    Attributes:
      config: the pipeline's config.
      mesh: the mesh the batches are split over.
      global_batch_size: G, rows of a batch.
      num_windows: W, training windows.
      num_instances: I, instances of a tf.data epoch (the space rows are drawn from).
      arrays: the device-resident corpus, replicated: 'items' int32 [num_interactions],
        'starts' int32 [W], 'lengths' int32 [W], 'num_masked' int32 [N + 1] (k by window length).
    """

    def __init__(
        self,
        corpus: Corpus,
        split: Split,
        config: cloze.InputConfig,
        global_batch_size: int,
        mesh: Mesh,
        *,
        with_users: bool = False,
    ):
        """Cuts the windows and copies the corpus to the devices.

        Args:
          corpus: the corpus.
          split: its leave-one-out split; windows come from `split.train_ends` only.
          config: the pipeline's config (`input.pipeline` itself is not read here).
          global_batch_size: G (`batch_size`), a multiple of the mesh's data axis.
          mesh: the mesh; the corpus is replicated on its devices, batches split over `data`.
          with_users: batches also carry 'users' int32 [G], each row's user row (corpus user
            + 1, as `models.BERT4Rec` reads it), for `model.user_features`.

        Raises:
          ValueError: naming `batch_size` when it does not split over the data axis; when no user
            has a training item; when the corpus is too large for int32 indices.
        """
        sharding_lib.check_batch_size("batch_size", global_batch_size, mesh)
        windows = cloze.make_windows(
            corpus, split, config.window_len, config.sliding_step, config.min_window
        )
        if not len(windows):
            raise ValueError(
                f"data set {corpus.name!r} has no user with {config.min_window} training items"
            )
        num_instances = config.num_instances(len(windows))
        if max(corpus.num_interactions, num_instances) > _INT32_LIMIT:
            raise ValueError(
                f"data set {corpus.name!r} has {corpus.num_interactions} interactions and "
                f"{num_instances} instances, more than int32 indexes; use "
                "input.pipeline='tf.data'"
            )
        self._spec = _Spec(
            config=config,
            mesh=mesh,
            global_batch_size=global_batch_size,
            num_windows=len(windows),
            num_instances=num_instances,
            mask_id=corpus.mask_id,
            num_items=corpus.num_items,
            with_users=with_users,
        )
        self.config = config
        self.mesh = mesh
        self.global_batch_size = global_batch_size
        self.num_windows = len(windows)
        self.num_instances = num_instances
        host = {
            "items": corpus.items.astype(np.int32),
            "starts": windows.starts.astype(np.int32),
            "lengths": windows.lengths.astype(np.int32),
            # Row n: k for a window of n items, the rule the tf.data path follows too.
            "num_masked": cloze.num_masked(np.arange(config.max_len + 1), config).astype(np.int32),
        }
        if with_users:
            host["window_users"] = (windows.users + 1).astype(np.int32)  # [W] user rows
        # With buckets: one spec (program) per non-empty bucket, and each bucket's windows.
        self._bucket_specs: dict[int, _Spec] = {}
        self._bucket_cdf = None
        if config.buckets:
            of_window = config.bucket_of(windows.lengths)  # [W]
            counts = np.bincount(of_window, minlength=len(config.bucket_sizes))  # [K]
            table = np.zeros((len(counts), max(1, counts.max())), np.int32)  # [K, max W_k]
            for k, count in enumerate(counts):
                table[k, :count] = np.flatnonzero(of_window == k)
                if count:
                    self._bucket_specs[k] = dataclasses.replace(
                        self._spec, bucket=k, bucket_windows=int(count)
                    )
            host["bucket_windows"] = table
            self._bucket_cdf = np.cumsum(counts) / counts.sum()  # P(bucket <= k) = sum W_j / W
        replicated = sharding_lib.replicated(mesh)
        # make_array_from_callback works with several processes too (each fills its devices).
        self.arrays = {
            name: jax.make_array_from_callback(value.shape, replicated, lambda i, v=value: v[i])
            for name, value in host.items()
        }

    def bucket(self, step: int) -> int | None:
        """The bucket of a step's batch, drawn on the host from (seed, step); None without
        buckets.

        Bucket k has probability W_k / W (its windows among all), which keeps every row's
        distribution that of an unbucketed row; the host picks the step's compiled program.
        """
        if self._bucket_cdf is None:
            return None
        entropy = [self.config.seed, _INPUT_STREAM, _BUCKET_STREAM, int(step)]
        u = np.random.default_rng(np.random.SeedSequence(entropy)).random()
        # side="right": a bucket of probability 0 (no window) is never drawn.
        return int(np.searchsorted(self._bucket_cdf, u, side="right"))

    def _step_spec(self, step: int | jax.Array) -> _Spec:
        if self._bucket_cdf is None:
            return self._spec
        return self._bucket_specs[self.bucket(int(step))]

    def batch(self, step: int | jax.Array) -> Batch:
        """The global batch of a step.

        Args:
          step: the global step (a Python int or an int32 scalar); jit does not retrace per step.
            With buckets it is read on the host (its bucket picks the program).

        Returns:
          'ids' int32 [G, N], 'positions' int32 [G, P], 'labels' int32 [G, P], 'weights' float32
          [G, P], global arrays split over the mesh's data axis; N and P are the step's bucket's
          with buckets.
        """
        batch = _jitted_draw(self._step_spec(step))(self.arrays, step)
        del batch["instance"]  # [G] int32, computed anyway; one program serves both methods
        return batch

    def batch_with_instances(self, step: int | jax.Array) -> Batch:
        """`batch(step)` plus 'instance' int32 [G], each row's instance (for tests and tools).

        Instance i < W * C is masked copy i // W of window i % W; instance W * C + w is the
        mask-last copy of window w (W windows, C masked copies per window; also with a
        `mask_last_share`, where it means a mask-last row of window w).
        """
        return _jitted_draw(self._step_spec(step))(self.arrays, step)

    def jit_fused_step(
        self,
        train_step: Callable[[Any, Batch], tuple[Any, dict[str, jax.Array]]],
        state: Any,
    ) -> Callable[[Any], tuple[Any, dict[str, jax.Array]]]:
        """One jitted program that draws the batch of `state.step` and takes the train step.

        Args:
          train_step: `train_step.make_train_step(...)`, `(state, batch) -> (state, metrics)`.
          state: the train state (its shardings are kept; it is donated).

        Returns:
          `fused(state) -> (state, metrics)`, equal to
          `train_step(state, self.batch(state.step))`.
        """
        state_shardings = jax.tree.map(lambda x: x.sharding, state)
        replicated = sharding_lib.replicated(self.mesh)

        def jit_for(spec: _Spec):
            def fused(state, arrays):
                batch = _draw(spec, arrays, state.step)
                del batch["instance"]  # unused, so compiled away
                return train_step(state, batch)

            return jax.jit(
                fused,
                in_shardings=(state_shardings, replicated),
                out_shardings=(state_shardings, replicated),
                donate_argnums=0,
            )

        if self._bucket_cdf is None:
            jitted = jit_for(self._spec)
            return lambda state: jitted(state, self.arrays)

        # One program per bucket (each compiles at its first step). The host must know the
        # step to pick one; reading state.step would wait for the previous step, so the step
        # is counted here while the caller feeds back the state it got (the training loop).
        programs = {k: jit_for(spec) for k, spec in self._bucket_specs.items()}
        last: dict[str, Any] = {"step": None, "array": None}

        def bucketed(state):
            if last["array"] is not None and state.step is last["array"]:
                step = last["step"] + 1
            else:
                step = int(state.step)
            state, metrics = programs[self.bucket(step)](state, self.arrays)
            last["step"], last["array"] = step, state.step
            return state, metrics

        return bucketed


@functools.lru_cache(maxsize=32)
def _jitted_draw(spec: _Spec) -> Callable[[dict[str, jax.Array], Any], Batch]:
    return jax.jit(
        functools.partial(_draw, spec), out_shardings=sharding_lib.data_sharded(spec.mesh)
    )


def _draw(spec: _Spec, arrays: dict[str, jax.Array], step) -> Batch:
    """Every device draws the global rows it holds: [G / D] rows on each of D devices.

    Global row r of step s draws from fold_in(fold_in(rows_key, s), r), keys derived from the
    seed, so the global batch depends on (seed, step) alone: not on the device or process count,
    nor on the batch size (row r is the same in a larger batch), and resuming is exact.
    """
    local_rows = spec.global_batch_size // sharding_lib.data_parallelism(spec.mesh)

    def draw_shard(arrays, step):
        first = jax.lax.axis_index(sharding_lib.DATA_AXIS) * local_rows
        rows = first + jnp.arange(local_rows, dtype=jnp.int32)  # global row numbers
        return _draw_rows(spec, arrays, jnp.asarray(step, jnp.int32), rows)

    return jax.shard_map(
        draw_shard,
        mesh=spec.mesh,
        in_specs=(P(), P()),
        out_specs=P(sharding_lib.DATA_AXIS),
    )(arrays, step)


def _key(seed: int, stream: int) -> jax.Array:
    """A constant key of the input's streams, derived eagerly: compiled programs only see its
    data (each call of the generator inside a program costs compile time)."""
    with jax.ensure_compile_time_eval():
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _INPUT_STREAM), stream)
        return jax.random.wrap_key_data(np.asarray(jax.random.key_data(key)))


def _uniform_below(words: jax.Array, bound: int) -> jax.Array:
    """int32 []: uniform in [0, bound) from uint32 words [T], by rejection.

    The first word below the largest multiple of `bound` that fits in 32 bits, modulo `bound`.
    A word is rejected with probability below bound / 2^32, so all T of them only with
    probability below (bound / 2^32)^T (then the last one is used, slightly biased).
    """
    limit = (2**32 // bound) * bound
    if limit == 2**32:  # bound is a power of two: every word is fine
        return (words[0] % np.uint32(bound)).astype(jnp.int32)
    accepted = words < np.uint32(limit)
    pick = jnp.where(accepted.any(), jnp.argmax(accepted), len(words) - 1)
    return (words[pick] % np.uint32(bound)).astype(jnp.int32)


def _draw_rows(
    spec: _Spec, arrays: dict[str, jax.Array], step: jax.Array, rows: jax.Array
) -> Batch:
    """The rows numbered `rows` (int32 [R]) of step `step`'s global batch, with 'instance' [R].

    The instances are numbered as in a tf.data epoch (`cloze.InputConfig.num_instances`: I of
    them, W windows, C masked copies each). Every row draws its instance uniformly from [0, I),
    independently of every other row and step (with replacement; there are no epochs), so its
    window is uniform and it is mask-last with the tf.data epoch's probability; an instance is
    seen Poisson(1) times per I rows instead of exactly once. With a `mask_last_share` a
    mask-last row's window is drawn uniformly from four more words (tf.data's per-epoch rotation
    has no meaning without epochs) and its instance reported as W * C + window. Uniform draws
    are by rejection from four 32-bit words (`_uniform_below`).

    Masks: k = `cloze.num_masked` of the window's n items, the k positions the k largest of n
    random 31-bit keys (a tie, probability below n^2 / 2^32 per row, goes to the lower
    position), ascending, padded with 0. "bert" writes [MASK] with probability 0.8, a random
    item 0.1 (a 32-bit word modulo the item count: a relative bias below items / 2^32), the item
    itself 0.1. A mask-last row masks its last item with [MASK], weighing `mask_last_weight`.
    With `fresh_masks` a row's mask comes from its own words, new at every draw; without (the
    paper's fixed copies) instance i's mask comes from fold_in(fixed_key, i) alone, so every
    draw of it carries the same mask: the copies are emulated with nothing stored (the same
    distribution as tf.data's copies, not the same masks).

    With buckets (the step's bucket k drawn by `DeviceInput.bucket`) the window is uniform over
    bucket k's W_k windows and a masked row takes copy v // W of it, v uniform in [0, I): each
    instance stays equally likely and keeps its fixed mask, since its words are laid out for N
    positions and P slots whatever the bucket (a bucketed row is the unbucketed row cut).

    Every random number of a row comes from at most two calls of the generator (each call site
    costs compile time): the row's words (its instance, and with fresh masks its mask), and with
    fixed masks the words of its instance's mask.
    """
    config = spec.config
    if config.next_item:
        return _draw_next_item_rows(spec, arrays, step, rows)
    # A row's words are laid out for N positions and P slots whatever the bucket, so that a
    # bucket's row is the unbucketed row of its instance cut to (n_max, p_max).
    n_words, p_words = config.max_len, config.max_predictions
    n_max, p_max = config.bucket_shape(spec.bucket)
    num_windows = spec.num_windows
    masked_instances = num_windows * config.copies  # the mask-last copies follow these
    bert = config.mask_replacement == "bert"
    # Per masked row: a key per position, and in "bert" mode two words per prediction slot.
    mask_words = n_words + (2 * p_words if bert else 0)
    step_key = jax.random.fold_in(_key(config.seed, _ROWS_STREAM), step)
    fixed_key = _key(config.seed, _FIXED_MASKS_STREAM)
    slots = jnp.arange(p_max, dtype=jnp.int32)

    # With a mask-last share, a mask-last row's window is drawn from words of its own. The word
    # count is static and unchanged without a share, so the default draws stay as they were.
    share = config.mask_last_share > 0
    bucketed = spec.bucket is not None
    instance_words = _INSTANCE_WORDS * (2 if share or bucketed else 1)

    def row(r):
        fresh = config.fresh_masks
        words = jax.random.bits(
            jax.random.fold_in(step_key, r), (instance_words + (mask_words if fresh else 0),)
        )  # uint32
        instance = _uniform_below(words[:_INSTANCE_WORDS], spec.num_instances)
        is_last = instance >= masked_instances
        if bucketed:  # the window uniform over the bucket's; a masked row keeps its copy
            local = _uniform_below(words[_INSTANCE_WORDS:instance_words], spec.bucket_windows)
            window = arrays["bucket_windows"][spec.bucket, local]
            copy = instance // num_windows
            instance = jnp.where(is_last, masked_instances + window, copy * num_windows + window)
        elif share:  # M != W mask-last instances: the window uniform over W on its own
            last_window = _uniform_below(words[_INSTANCE_WORDS:instance_words], num_windows)
            instance = jnp.where(is_last, masked_instances + last_window, instance)
        if not bucketed:
            window = jnp.where(is_last, instance - masked_instances, instance % num_windows)
        if fresh:
            words = words[instance_words:]  # [mask_words]
        else:  # a fixed copy: its mask depends on the instance (copy, window) only
            words = jax.random.bits(jax.random.fold_in(fixed_key, instance), (mask_words,))

        n = arrays["lengths"][window]
        ids, real = cloze.window_items(arrays["items"], arrays["starts"][window], n, n_max, jnp)

        k = jnp.where(is_last, 1, arrays["num_masked"][n])
        used = slots < k  # [P]
        # Uniform k-subset of the n real positions: the k largest random keys; padding gets -1
        # so it is never chosen (k <= n).
        keys = jnp.where(real, (words[:n_max] >> 1).astype(jnp.int32), -1)  # [N], 31 bits
        # (Within a bucket the real positions all lie in the first n_max words.)
        _, top = jax.lax.top_k(keys, p_max)  # [P] int32, the P largest
        positions = jnp.sort(jnp.where(used, top, n_max))  # chosen ascending, unused last
        positions = jnp.where(is_last, jnp.where(slots == 0, n - 1, n_max), positions)
        positions = jnp.where(used, positions, 0)  # [P]
        labels = jnp.where(used, ids[positions], PAD_ID)  # [P]

        if bert:
            choice = words[n_words : n_words + p_max]  # [P]
            random_words = words[n_words + p_words : n_words + p_words + p_max]  # [P]
            random_items = (random_words % np.uint32(spec.num_items)).astype(jnp.int32)
            # The original: 80% [MASK]; of the rest, half keep the item, half a random item.
            inputs = jnp.where(
                choice < np.uint32(0.8 * 2**32),
                spec.mask_id,
                jnp.where(choice < np.uint32(0.9 * 2**32), 1 + random_items, labels),
            )
            inputs = jnp.where(is_last, spec.mask_id, inputs)  # [P]
        else:
            inputs = jnp.full((p_max,), spec.mask_id, jnp.int32)
        # Unused slots point past the row (n_max) and are dropped, not written at position 0.
        ids = ids.at[jnp.where(used, positions, n_max)].set(inputs, mode="drop")
        # A mask-last row's prediction weighs mask_last_weight (exactly `used` by default).
        row_weight = jnp.where(is_last, np.float32(config.mask_last_weight), np.float32(1))
        out = {
            "ids": ids,
            "positions": positions,
            "labels": labels,
            "weights": used.astype(jnp.float32) * row_weight,
            "instance": instance,
        }
        if spec.with_users:
            out["users"] = arrays["window_users"][window]
        return out

    return jax.vmap(row)(rows)


def _draw_next_item_rows(
    spec: _Spec, arrays: dict[str, jax.Array], step: jax.Array, rows: jax.Array
) -> Batch:
    """`_draw_rows` for next-item rows: a row draws its window uniformly (from four words; within
    its step's bucket with buckets) and is built by `cloze.next_item_rows`. No masks, so nothing
    else is drawn; 'instance' is the window."""
    config = spec.config
    n_max, _ = config.bucket_shape(spec.bucket)
    step_key = jax.random.fold_in(_key(config.seed, _ROWS_STREAM), step)

    def row(r):
        words = jax.random.bits(jax.random.fold_in(step_key, r), (_INSTANCE_WORDS,))  # uint32
        if spec.bucket is not None:  # uniform over the bucket's windows
            local = _uniform_below(words, spec.bucket_windows)
            window = arrays["bucket_windows"][spec.bucket, local]
        else:
            window = _uniform_below(words, spec.num_windows)
        lengths = arrays["lengths"][window]
        out = cloze.next_item_rows(arrays["items"], arrays["starts"][window], lengths, n_max, jnp)
        out["instance"] = window
        if spec.with_users:
            out["users"] = arrays["window_users"][window]
        return out

    return jax.vmap(row)(rows)
