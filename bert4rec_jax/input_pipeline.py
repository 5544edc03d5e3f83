"""The training input pipeline: sliding windows, cloze masking, per-process batches (tf.data).

The path from a `Corpus` to the batches a train step sees:

1. Windows. Each user's *training* sequence (`split.train_ends`, so validation and test targets
   never reach training) is cut into windows of at most `max_len` items the original code's way:
   a sequence of length <= max_len is one window; a longer one gets windows starting at
   `range(len - max_len, 0, -sliding_step)` plus 0, in increasing order. A window is stored as
   (start into `corpus.items`, length, user), never as a copy of its items.
2. Instances. Per epoch: every window in `copies` masked copies (`dupe_factor` fixed copies, the
   paper's precomputed data, or one copy with masks drawn anew each epoch when `fresh_masks`),
   then one mask-last copy per window (only the last item masked, as at test time). Instance i of
   an epoch is copy `i // W` of window `i % W` for i < W * copies, and the mask-last copy of window
   `i - W * copies` after that.
   Optional (off by default, the paper's way), `mask_last_share` > 0 replaces the one mask-last
   copy per window by M = round(share * copies * W / (1 - share)) mask-last instances per epoch,
   so that M / (copies * W + M) ~ share: mask-last instance j of epoch e is the mask-last copy of
   window `(j + e * M) % W`. The rotation by e * M spreads the remainder M % W (and, when M < W,
   the choice of windows at all) evenly over the windows across epochs; M = W gives the default.
   A fixed count per epoch (rather than a per-instance coin) keeps every epoch's size, hence
   `steps_per_epoch`, the order and the resume rule below, exactly as they are.
3. Masks are kept compact: per masked instance the sorted masked positions (uint8 when max_len
   <= 256) and, in "bert" mode, the token written at each of them. Full rows (ids [N] and the
   [P] prediction arrays) are only built for the rows of the batches being produced, in chunks,
   inside tf.data. So a whole epoch is never resident: ML-20M's ~3M instances x 200 ids would be
   ~2.4 GB of int32, its compact masks are ~60 MB.
4. Order. The data position is a function of the global step alone: step s is batch
   `s % steps_per_epoch` of epoch `s // steps_per_epoch`; an epoch's order is a permutation drawn
   from (seed, epoch); global batch b is `perm[b * G:(b + 1) * G]` (the remainder of an epoch is
   dropped); process p takes rows `[p * G / P, (p + 1) * G / P)` of it. A resumed run therefore
   sees exactly the batches an uninterrupted run would, and the global batch does not depend on
   the number of processes.
5. Length buckets (`input.buckets`, off by default). Short-sequence data (Beauty: 77% of the
   windows hold <= 8 items of 50) spends most of a step on padding, in the encoder (positions)
   and in the output layer (prediction slots). With buckets (n_1 < ... < n_K = N), an instance
   belongs to the shortest bucket that holds its window; a batch of bucket k has n_k positions
   and p_k = min(P, max(1, round(n_k * mask_prob))) slots, the most a window of n_k items
   masks. An epoch keeps exactly the instances of 4. (`perm[:S * G]`, S steps per epoch, so the
   same multiset of instances and masks, the same S, the same rows): they are grouped by bucket,
   stably (each bucket keeps the epoch's random order), cut into S batches of G, and the batches
   are shuffled from (seed, epoch). Only the one batch at each bucket boundary mixes two buckets;
   it takes the longer one's shape. Step s is still batch `s % S` of epoch `s // S`, processes
   still take their rows of the global batch, so resume and multi-process work as before. Each
   bucket shape compiles the step once. A bucketed row is the unbucketed row cut: only padding
   goes, and the model's output at real positions does not depend on padding positions, so the
   loss of a batch is that of the same rows padded to N (up to float rounding; dropout draws
   differ with the shape). Why buckets rather than packing several users into a row: see the
   README ("Length buckets").

Next-item instances (`model.kind="sasrec"`, `InputConfig.next_item`): no masks. Windows are cut
as in 1. but `max_len + 1` items long (users with fewer than 2 training items have none), and an
epoch holds each window once (`copies` = 1, no mask-last copies). A window of n items gives ids =
its first n - 1 items and, at every position t, label = item t + 1: positions = 0..N-1, labels =
the ids shifted left by one, weights 1 where a label exists and 0 on padding (P = N). So the
model, causal, learns the next item at every position at once. The mask fields of the config
(mask_prob, max_predictions, dupe_factor, fresh_masks, mask_replacement, mask_last_*) play no
part; order, processes and buckets work as above (a bucket of n holds windows of <= n + 1 items,
i.e. n inputs, and has n slots).

Example shapes (N = max_len, P = max_predictions, B = this process's batch):
  ids int32 [B, N]: the window's items first, then padding 0 (as the original), masked
    positions replaced by [MASK] (or, in "bert" mode, sometimes a random item or the item itself).
  positions int32 [B, P]: masked positions, ascending, padded with 0.
  labels int32 [B, P]: the original items at `positions`, padded with 0.
  weights float32 [B, P]: 1 for a real prediction, 0 for padding; a mask-last row's single
    prediction gets `mask_last_weight` instead of 1 (default 1, the paper's).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from bert4rec_jax.datasets.corpus import PAD_ID, Corpus, Split

MASK_REPLACEMENTS = ("mask", "bert")
# Where batches are made: here (tf.data, on the host) or by `device_input` on the devices.
PIPELINES = ("tf.data", "device")

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


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What the pipeline needs, taken from the ConfigDict once (see `configs/default.py`).

    Attributes:
      max_len: N, positions per example (`model.max_len`); also the window length.
      mask_prob: fraction of a window's items to mask, in (0, 1].
      max_predictions: P, the most masked positions per example, 1 <= P <= max_len.
      sliding_step: step between the windows of a sequence longer than max_len.
      dupe_factor: masked copies of every window per epoch (fixed masks only).
      fresh_masks: True: one copy per window, masks drawn anew every epoch from (seed, epoch).
        False: `dupe_factor` copies whose masks are drawn once from the seed, the paper's way.
      mask_replacement: "mask" (always [MASK], the paper's runs) or "bert" (80% [MASK], 10% a
        random item, 10% unchanged).
      mask_last_copy: add one copy per window per epoch with only its last item masked.
      mask_last_weight: the loss weight of a mask-last instance's prediction (1 = the paper's;
        the others weigh 1). The loss is normalised by the sum of weights (see `train_step`).
      mask_last_share: 0 (the paper's): one mask-last copy per window per epoch. In (0, 1):
        instead, the share of an epoch's instances that are mask-last (see `num_mask_last`).
      prefetch: batches tf.data prepares ahead; tf.data.AUTOTUNE (-1) is allowed.
      seed: masks and data order derive from it.
      pipeline: "tf.data" (this module) or "device" (`device_input`: drawn on the devices).
      buckets: () (off): every batch is [B, max_len] ids and [B, max_predictions] slots.
        Otherwise increasing window lengths, e.g. (8, 16, 32, 50): each batch holds windows of
        one bucket and is cut to its shape (`bucket_shape`); max_len is the last bucket, added
        when absent. See "Length buckets" in the module docstring.
      next_item: next-item instances for a left-to-right model (`model.kind="sasrec"`), not
        cloze ones (see the module docstring); max_predictions is then max_len.
    """

    max_len: int = 50
    mask_prob: float = 0.2
    max_predictions: int = 20
    sliding_step: int = 10
    dupe_factor: int = 10
    fresh_masks: bool = False
    mask_replacement: str = "mask"
    mask_last_copy: bool = True
    mask_last_weight: float = 1.0
    mask_last_share: float = 0.0
    prefetch: int = 2
    seed: int = 0
    pipeline: str = "tf.data"
    buckets: tuple[int, ...] = ()
    next_item: bool = False

    def __post_init__(self):
        # Field names are the config's, so a bad command-line override is easy to find.
        if self.max_len < 1:
            raise ValueError(f"model.max_len={self.max_len} must be at least 1")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"input.mask_prob={self.mask_prob} must be in (0, 1]")
        if not 1 <= self.max_predictions <= self.max_len:
            raise ValueError(
                f"input.max_predictions={self.max_predictions} must be in [1, model.max_len="
                f"{self.max_len}]"
            )
        if self.sliding_step < 1:
            raise ValueError(f"input.sliding_step={self.sliding_step} must be at least 1")
        if self.dupe_factor < 1:
            raise ValueError(f"input.dupe_factor={self.dupe_factor} must be at least 1")
        if self.mask_replacement not in MASK_REPLACEMENTS:
            raise ValueError(
                f"input.mask_replacement={self.mask_replacement!r} must be one of "
                f"{MASK_REPLACEMENTS}"
            )
        if not (np.isfinite(self.mask_last_weight) and self.mask_last_weight > 0):
            raise ValueError(
                f"input.mask_last_weight={self.mask_last_weight} must be a finite number > 0"
            )
        if not (np.isfinite(self.mask_last_share) and 0.0 <= self.mask_last_share < 1.0):
            raise ValueError(f"input.mask_last_share={self.mask_last_share} must be in [0, 1)")
        if not self.mask_last_copy:
            # Either setting would silently do nothing: there is no mask-last instance.
            if self.mask_last_weight != 1.0:
                raise ValueError(
                    f"input.mask_last_weight={self.mask_last_weight} needs "
                    "input.mask_last_copy=True (there are no mask-last instances to weigh)"
                )
            if self.mask_last_share != 0.0:
                raise ValueError(
                    f"input.mask_last_share={self.mask_last_share} needs input.mask_last_copy=True"
                )
        if self.next_item:
            # The cloze switches of "Beyond the paper" would silently do nothing.
            for name, default in (("mask_last_weight", 1.0), ("mask_last_share", 0.0)):
                if getattr(self, name) != default:
                    raise ValueError(
                        f"input.{name}={getattr(self, name)} weighs [MASK]-last instances, and "
                        'model.kind="sasrec" has none (it predicts every next item)'
                    )
            if self.max_predictions != self.max_len:
                raise ValueError(
                    f"input.max_predictions={self.max_predictions}: next-item instances predict "
                    f"at every position, max_predictions = model.max_len = {self.max_len}"
                )
        if self.prefetch < -1:
            raise ValueError(f"input.prefetch={self.prefetch} must be >= 0 or -1 (AUTOTUNE)")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"input.pipeline={self.pipeline!r} must be one of {PIPELINES}")
        sizes = self.buckets
        if not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in sizes):
            raise ValueError(f"input.buckets={sizes!r} must be whole numbers of positions")
        if sizes and not (
            all(a < b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
            and 1 <= sizes[0]
            and sizes[-1] <= self.max_len
        ):
            raise ValueError(
                f"input.buckets={sizes!r} must be increasing lengths in [1, model.max_len="
                f"{self.max_len}]"
            )

    @classmethod
    def from_config(cls, config: Any) -> InputConfig:
        """Reads `model.max_len`, `input.*` and `seed` from an ml_collections.ConfigDict."""
        inp = config.input
        # Older configs have no model.kind: BERT4Rec, as they ran.
        next_item = config.model.get("kind", "bert4rec") == "sasrec"
        return cls(
            max_len=int(config.model.max_len),
            mask_prob=float(inp.mask_prob),
            # A next-item row predicts at every position; input.max_predictions is cloze's.
            max_predictions=int(config.model.max_len if next_item else inp.max_predictions),
            sliding_step=int(inp.sliding_step),
            dupe_factor=int(inp.dupe_factor),
            fresh_masks=bool(inp.fresh_masks),
            mask_replacement=str(inp.mask_replacement),
            mask_last_copy=bool(inp.mask_last_copy),
            mask_last_weight=float(inp.mask_last_weight),
            mask_last_share=float(inp.mask_last_share),
            prefetch=int(inp.prefetch),
            seed=int(config.seed),
            pipeline=str(inp.pipeline),
            # Configs saved before buckets existed have no such field: off, as they ran.
            buckets=tuple(int(b) for b in inp.get("buckets", ())),
            next_item=next_item,
        )

    @property
    def bucket_sizes(self) -> tuple[int, ...]:
        """The buckets' lengths with max_len last; () when buckets are off."""
        if not self.buckets:
            return ()
        return tuple(self.buckets) + ((self.max_len,) if self.buckets[-1] < self.max_len else ())

    def bucket_shape(self, bucket: int | None) -> tuple[int, int]:
        """(positions, prediction slots) of a batch of bucket `bucket` (None: unbucketed).

        A bucket of length n holds windows of at most n items, which mask at most
        `num_masked(n)` of them (k grows with the length; a mask-last row masks 1).
        """
        if bucket is None:
            return self.max_len, self.max_predictions
        n = self.bucket_sizes[bucket]
        if self.next_item:  # a prediction at every input position
            return n, n
        return n, int(num_masked(np.asarray(n), self))

    def bucket_of(self, lengths: np.ndarray) -> np.ndarray:
        """int64 [...]: the bucket of windows of these lengths, the shortest that holds them
        (next-item windows: their inputs, one item fewer)."""
        inputs = np.asarray(lengths) - 1 if self.next_item else lengths
        return np.searchsorted(np.asarray(self.bucket_sizes), inputs, side="left")

    @property
    def window_len(self) -> int:
        """Items per window: max_len, or max_len + 1 for next-item windows (inputs + target)."""
        return self.max_len + 1 if self.next_item else self.max_len

    @property
    def min_window(self) -> int:
        """The fewest training items that make a window: 2 for next-item (an input, a label)."""
        return 2 if self.next_item else 1

    @property
    def copies(self) -> int:
        """Masked copies of each window per epoch, not counting the mask-last copy."""
        if self.next_item:
            return 1
        return 1 if self.fresh_masks else self.dupe_factor

    def num_mask_last(self, num_windows: int) -> int:
        """M, mask-last instances per epoch for W = `num_windows` windows.

        0 without `mask_last_copy`; W (one per window) when `mask_last_share` is 0; otherwise
        round(share * copies * W / (1 - share)), at least 1, so that M / (copies * W + M) is the
        share up to rounding (within 1 / (copies * W + M)).
        """
        if not self.mask_last_copy or self.next_item:
            return 0
        if self.mask_last_share == 0.0:
            return num_windows
        share = self.mask_last_share
        return max(1, int(round_half_away(share * self.copies * num_windows / (1.0 - share))))

    def num_instances(self, num_windows: int) -> int:
        """Instances per epoch for W = `num_windows` windows: W * copies + M."""
        return num_windows * self.copies + self.num_mask_last(num_windows)


@dataclasses.dataclass(frozen=True, eq=False)
class Windows:
    """The training windows, in user order and, within a user, in increasing start order.

    Attributes:
      starts: int64 [W]; where each window begins in `corpus.items`.
      lengths: int32 [W]; its number of items, 1..max_len.
      users: int64 [W]; the user it belongs to.
    """

    starts: np.ndarray
    lengths: np.ndarray
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def make_windows(
    corpus: Corpus, split: Split, max_len: int, sliding_step: int, min_length: int = 1
) -> Windows:
    """Cuts every user's training sequence into windows, the original code's way.

    A sequence of length T <= max_len is one window; a longer one has windows starting at
    `range(T - max_len, 0, -sliding_step)` and 0, each `max_len` long. Users with fewer than
    `min_length` training items have no window.

    Args:
      corpus: the corpus.
      split: its split; only `train_ends` is read, so held-out items never enter a window.
      max_len: the window length (`InputConfig.window_len`).
      sliding_step: the step between window starts.
      min_length: the fewest training items that make a window (`InputConfig.min_window`).

    Returns:
      The windows.
    """
    begins = corpus.offsets[:-1]
    train_lengths = np.asarray(split.train_ends, dtype=np.int64) - begins  # [U]
    users = np.flatnonzero(train_lengths >= max(1, min_length)).astype(np.int64)
    lengths = train_lengths[users]
    overhang = np.maximum(lengths - max_len, 0)  # items before the last full window
    counts = 1 + -(-overhang // sliding_step)  # ceil: len(range(overhang, 0, -step)) + 1
    total = int(counts.sum())
    first = np.cumsum(counts) - counts
    rank = np.arange(total, dtype=np.int64) - np.repeat(first, counts)  # 0..count-1 per user
    # The r-th window (r >= 1) starts (count - 1 - r) steps before the last one, at `overhang`.
    rel = np.repeat(overhang, counts) - sliding_step * (np.repeat(counts, counts) - 1 - rank)
    rel = np.where(rank == 0, 0, rel)
    return Windows(
        starts=np.repeat(begins[users], counts) + rel,
        lengths=np.repeat(np.minimum(lengths, max_len), counts).astype(np.int32),
        users=np.repeat(users, counts),
    )


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Rounds non-negative numbers half away from zero, as Python 2's round() did.

    The original data generator ran on Python 2, whose round(2.5) is 3.0; Python 3's round() and
    np.round round half to even (2). `x - trunc(x)` is exact in floating point, so this matches
    Python 2 on every double (floor(x + 0.5) does not for 0.49999999999999994).
    """
    x = np.asarray(x, dtype=np.float64)
    whole = np.trunc(x)
    return (whole + (x - whole >= 0.5)).astype(np.int64)


def num_masked(lengths: np.ndarray, config: InputConfig) -> np.ndarray:
    """int64 [...]: k = min(P, max(1, round(n * mask_prob))) for window lengths n."""
    k = round_half_away(np.asarray(lengths, dtype=np.float64) * config.mask_prob)
    return np.minimum(config.max_predictions, np.maximum(1, k))


@dataclasses.dataclass(frozen=True, eq=False)
class _Masks:
    """Compact masks of R masked rows (one per window copy).

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
        """int64 [I]: the epoch's instance order, drawn from (seed, epoch)."""
        return self._epoch_state(epoch)[0]

    def instance_windows(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        """int64 [...]: the window of each instance of an epoch (see the module docstring)."""
        idx = np.asarray(indices, dtype=np.int64)
        num_windows, masked_rows = self.num_windows, self.num_masked_rows
        # Mask-last instance j is window (j + epoch * M) % W: j itself by default (M = W).
        rotation = epoch * self.config.num_mask_last(num_windows)
        return np.where(
            idx >= masked_rows, (idx - masked_rows + rotation) % num_windows, idx % num_windows
        )

    def bucketed_batches(self, epoch: int, global_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """An epoch's global batches with buckets on (see "Length buckets" above).

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
          with_users: also return 'users' int64 [..., ] (for tests; not a model input).
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

        # Items first, then padding, as the original; clamp the gather inside each window.
        offsets = np.arange(n)
        valid = offsets < lengths[:, None]  # [R, N]
        gather = starts[:, None] + np.minimum(offsets, lengths[:, None] - 1)
        ids = np.where(valid, self.corpus.items[gather], PAD_ID).astype(np.int32)  # [R, N]

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
            out["users"] = self.windows.users[window].reshape(batch_shape)
        return out

    def _next_item_rows(
        self, indices: np.ndarray, epoch: int, *, with_users: bool, bucket: int | None
    ) -> dict[str, np.ndarray]:
        """`materialize` for next-item instances: ids = a window but its last item, labels =
        the window but its first item (ids shifted left by one), a prediction at every position,
        weight 0 where there is no label (padding)."""
        batch_shape = indices.shape
        window = self.instance_windows(indices.reshape(-1), epoch)  # instance i = window i
        starts = self.windows.starts[window]  # [R]
        inputs = self.windows.lengths[window].astype(np.int64) - 1  # [R], 1..N
        n = self.config.max_len
        n_cut, _ = self.config.bucket_shape(bucket)
        if len(inputs) and inputs.max() > n_cut:
            raise ValueError(f"a window of {inputs.max() + 1} items does not fit bucket {bucket}")
        offsets = np.arange(n)
        valid = offsets < inputs[:, None]  # [R, N]
        gather = starts[:, None] + np.minimum(offsets, inputs[:, None] - 1)  # [R, N]
        ids = np.where(valid, self.corpus.items[gather], PAD_ID).astype(np.int32)
        labels = np.where(valid, self.corpus.items[gather + 1], PAD_ID).astype(np.int32)
        positions = np.broadcast_to(offsets.astype(np.int32), ids.shape)
        out = {
            "ids": ids[:, :n_cut].reshape(*batch_shape, n_cut),
            "positions": positions[:, :n_cut].reshape(*batch_shape, n_cut),
            "labels": labels[:, :n_cut].reshape(*batch_shape, n_cut),
            "weights": valid[:, :n_cut].astype(np.float32).reshape(*batch_shape, n_cut),
        }
        if with_users:
            out["users"] = self.windows.users[window].reshape(batch_shape)
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
            if with_users:
                out += ((rows["users"] + 1).astype(np.int32),)  # user rows, 0 = unknown
            return out

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


def num_instances(corpus: Corpus, split: Split, config: InputConfig) -> int:
    """Training instances per epoch: windows x copies (+ the mask-last instances).

    Args:
      corpus: the corpus.
      split: its split.
      config: the pipeline's config.

    Returns:
      The count; only the windows are computed, no masks.
    """
    num_windows = len(
        make_windows(corpus, split, config.window_len, config.sliding_step, config.min_window)
    )
    return config.num_instances(num_windows)


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
