"""The training-instance rules both input paths share: the config, the windows, how many positions a
window masks, and the next-item rows. `input_pipeline` (tf.data, on the host) and `device_input`
(on the devices) differ only in how they draw; docs/training.md ("Input pipeline") compares them.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import numpy as np

from bert4rec_jax.datasets.corpus import PAD_ID, Corpus, Split

MASK_REPLACEMENTS = ("mask", "bert")
# Where batches are made: by `input_pipeline` (tf.data, on the host) or `device_input` (devices).
PIPELINES = ("tf.data", "device")


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What the pipeline needs: the config's `input` section (`config.RunConfig.input`).

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
      pipeline: "tf.data" (`input_pipeline`) or "device" (`device_input`: drawn on the devices).
      buckets: () (off): every batch is [B, max_len] ids and [B, max_predictions] slots.
        Otherwise increasing window lengths, e.g. (8, 16, 32, 50): each batch holds windows of
        one bucket and is cut to its shape (`bucket_shape`); max_len is the last bucket, added
        when absent. See docs/training.md, "Length buckets".
      next_item: next-item instances for a left-to-right model (`model.kind="sasrec"`), not
        cloze ones (see `next_item_rows`); max_predictions is then max_len.
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
        """Instances per epoch for W = `num_windows` windows: W * copies + M.

        Both paths number them alike: instance i < W * copies is masked copy i // W of window
        i % W (`dupe_factor` fixed copies, the paper's precomputed data, or one copy masked anew
        each epoch with `fresh_masks`); the M mask-last instances (only the last item masked,
        as at test time) follow. Next-item instances are the W windows once each.
        """
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


def window_items(
    items: Any, starts: Any, lengths: Any, num_positions: int, xp: ModuleType = np
) -> tuple[Any, Any]:
    """Windows as rows of ids: their items first, then padding (PAD_ID), as the original code.

    Args:
      items: int [num_interactions], the corpus's flat items.
      starts: int [...], where each window begins in `items`.
      lengths: int [...], its number of items (>= 1).
      num_positions: N, positions per row (>= every length).
      xp: numpy, or jax.numpy on the devices (one row at a time under vmap, or many).

    Returns:
      ids int32 [..., N] and real bool [..., N] (True on the window's items).
    """
    offsets = xp.arange(num_positions, dtype=xp.int32)  # [N]
    real = offsets < lengths[..., None]  # [..., N]
    # Clamp the gather inside each window; the padding positions are overwritten.
    gather = starts[..., None] + xp.minimum(offsets, lengths[..., None] - 1)  # [..., N]
    return xp.where(real, items[gather], PAD_ID).astype(xp.int32), real


def next_item_rows(
    items: Any, starts: Any, lengths: Any, num_positions: int, xp: ModuleType = np
) -> dict[str, Any]:
    """Next-item rows (`model.kind="sasrec"`, `InputConfig.next_item`) of windows of >= 2 items.

    A window of n items gives ids = its first n - 1 items and labels = its last n - 1 (the ids
    shifted left by one): a prediction at every position, so the causal model learns the next
    item everywhere at once; weight 1 where a label exists, 0 on padding. No masks: the mask
    fields of the config play no part.

    Args:
      items, starts, lengths, num_positions, xp: as in `window_items`; num_positions holds
        every window's n - 1 inputs.

    Returns:
      'ids', 'positions', 'labels' int32 [..., N] and 'weights' float32 [..., N].
    """
    ids, real = window_items(items, starts, lengths - 1, num_positions, xp)
    labels, _ = window_items(items, starts + 1, lengths - 1, num_positions, xp)
    return {
        "ids": ids,
        "positions": xp.broadcast_to(xp.arange(num_positions, dtype=xp.int32), ids.shape),
        "labels": labels,
        "weights": real.astype(xp.float32),
    }
