"""Encoded rows, streamed past batch by batch, into per-user sequences in bounded memory.

With every user's row count known beforehand (a first pass over the ids), `Layout` writes each
batch's items straight into their user's slots of one flat array, in file order within a user,
so no table of raw rows is ever held. `order_and_filter` then sorts each user's slots by time
(stable: ties keep file order), counts and drops duplicates and applies the filters, a chunk of
whole users at a time, compacting the array in place. Memory: 4 bytes per interaction for the
items, 8 more for the timestamps (kept, compacted beside the items, for the temporal split),
and a chunk's buffers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bert4rec_jax.datasets import readers

# Rows sorted and filtered together: the buffers of a chunk stay ~100 MB, and chunks are many
# enough that the work shows progress.
CHUNK_ROWS = 1 << 22


class LayoutOverflow(ValueError):
    """A user got more rows than the first pass counted: the source changed between passes."""


def stable_order(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """`np.argsort(keys, kind="stable")` of integer keys in [0, num_keys), num_keys <= 2**31.

    By 16-bit digits, least significant first: numpy sorts uint16 by counting, ~6x faster
    than its stable sort of int32.
    """
    if num_keys <= 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    high = (keys >> 16).astype(np.uint16)
    return order[np.argsort(high[order], kind="stable")]


class Layout:
    """Slots for every interaction, grouped by user (CSR), filled batch by batch.

    Attributes:
      offsets: int64 [num_users + 1]; user u's rows go to `items[offsets[u]:offsets[u + 1]]`.
      items: int32 [num_rows], allocated on the first `place`.
      times: int64 or float64 [num_rows] when `place` got timestamps, else None.
    """

    def __init__(self, counts: np.ndarray):
        """`counts`: int [num_users], each user's rows (from the first pass)."""
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self._next = self.offsets[:-1].copy()  # [num_users]: each user's next free slot
        self.items: np.ndarray | None = None
        self.times: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self._next)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def complete(self) -> bool:
        """Whether every slot was given out: the second pass saw the first's rows."""
        return bool(np.array_equal(self._next, self.offsets[1:]))

    def positions(self, users: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Gives the next slots to a batch's rows, in order within each user.

        Args:
          users: int [rows], the batch's user codes, in file order.

        Returns:
          `order`, the batch's rows grouped by user (stable; None when they already are), and
          `slots`, int64 [rows], the slot of each row in that order.

        Raises:
          LayoutOverflow: a user has more rows than it was counted.
        """
        n = len(users)
        if n == 0:
            return None, np.zeros(0, np.int64)
        order = None
        if not np.all(users[1:] >= users[:-1]):
            order = stable_order(users, self.num_users)
            users = users[order]
        starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))  # [runs]
        run_users = users[starts]
        lengths = np.diff(np.append(starts, n))
        first = self._next[run_users]
        ends = first + lengths
        if np.any(ends > self.offsets[run_users + 1]):
            raise LayoutOverflow("more rows for a user than counted")
        self._next[run_users] = ends
        return order, np.repeat(first - starts, lengths) + np.arange(n)

    def place(self, users: np.ndarray, items: np.ndarray, times: np.ndarray | None) -> None:
        """Writes a batch's items (and timestamps) into their users' next slots."""
        if self.items is None:
            self.items = np.empty(self.num_rows, np.int32)
            if times is not None:
                self.times = np.empty(self.num_rows, times.dtype)
        order, slots = self.positions(users)
        if order is not None:
            items = items[order]
            times = None if times is None else times[order]
        self.items[slots] = items
        if times is not None:
            self.times[slots] = times


def user_chunks(offsets: np.ndarray, chunk_rows: int = 0) -> Iterator[tuple[int, int]]:
    """[first, end) ranges of whole users of about `chunk_rows` rows (one user may exceed it;
    0 = `CHUNK_ROWS`)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    num_users = len(offsets) - 1
    first = 0
    while first < num_users:
        end = int(np.searchsorted(offsets, offsets[first] + chunk_rows, side="right")) - 1
        end = min(max(end, first + 1), num_users)
        yield first, end
        first = end


def time_order(seg: np.ndarray, times: np.ndarray) -> np.ndarray | None:
    """The stable order by (segment, time) of rows grouped by segment; None if already in it."""
    if len(seg) < 2:
        return None
    if not np.any((seg[1:] == seg[:-1]) & (times[1:] < times[:-1])):
        return None
    if times.dtype.kind == "i":
        low, high = int(times.min()), int(times.max())
        span = high - low + 1
        if span * (int(seg[-1]) + 1) < 1 << 62:
            # One int64 key: numpy's stable sort of it is ~2x faster than two keys.
            return np.argsort(seg.astype(np.int64) * span + (times - low), kind="stable")
    table = pa.table({"seg": seg, "time": times})
    keys = [("seg", "ascending"), ("time", "ascending")]
    return pc.sort_indices(table, sort_keys=keys).to_numpy()  # stable, as np.argsort above


def duplicates(seg: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """bool [rows]: the rows (ordered by user and time, ties in file order) that repeat an
    earlier row's user, item and timestamp."""
    duplicate = np.zeros(len(seg), dtype=bool)
    if len(seg) < 2:
        return duplicate
    tie = (seg[1:] == seg[:-1]) & (times[1:] == times[:-1])  # [rows - 1]
    if not tie.any():
        return duplicate
    # Only rows that share their user and time with a neighbour can be duplicates: sort those
    # (usually few) by (user-and-time group, item); the stable sort keeps file order in a group.
    group = np.concatenate([[0], np.cumsum(~tie)])  # [rows]
    candidate = np.zeros(len(seg), dtype=bool)
    candidate[1:] |= tie
    candidate[:-1] |= tie
    rows = np.flatnonzero(candidate)
    rows = rows[np.lexsort((items[rows], group[rows]))]  # stable: ties keep their order
    same = (group[rows][1:] == group[rows][:-1]) & (items[rows][1:] == items[rows][:-1])
    duplicate[rows[1:][same]] = True
    return duplicate


@dataclasses.dataclass(frozen=True)
class Filters:
    """The filters of `file_options.FileOptions`, in the order they apply."""

    drop_duplicates: bool = False
    drop_repeats: bool = False
    min_item_interactions: int = 0
    min_user_interactions: int = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Ordered:
    """The result of `order_and_filter`.

    Attributes:
      sequences: kept users' codes (ascending), offsets, and their items' codes, oldest first.
      counts: rows after each step, for the loading summary ("rows read", ...).
      duplicate_slots: int64 [duplicates], sorted: the slots (`Layout.positions`) that the
        duplicate rows were given in file order, to find the first one's row.
    """

    sequences: readers.Sequences
    counts: dict[str, int]
    duplicate_slots: np.ndarray


def order_and_filter(layout: Layout, filters: Filters, num_items: int) -> Ordered:
    """Sorts each user's rows by time, then drops duplicates, repeats, rare items, short users.

    Rows without timestamps keep file order and have no duplicates (see
    `interactions.read_sequences`). Consumes the layout: its arrays are compacted in place; the
    timestamps, when there are any, stay beside the items (`Sequences.timestamps`, in the
    column's own unit).

    Args:
      layout: filled by every batch.
      filters: what to drop.
      num_items: the item codes' range.

    Returns:
      The sequences and counts; with no user left, `sequences` has none (the caller says why).
    """
    offsets, items, times = layout.offsets, layout.items, layout.times
    lengths = np.diff(offsets)  # [num_users], updated as rows are dropped
    counts = {"rows read": layout.num_rows}
    # Without the item filter, the user filter applies in the same pass (it counts last).
    min_user_first = filters.min_user_interactions if not filters.min_item_interactions else 1
    num_duplicates, kept_after_duplicates, kept_after_repeats = 0, 0, 0
    slots = []
    write = 0
    for first, end in user_chunks(offsets):
        low, high = int(offsets[first]), int(offsets[end])
        seg = np.repeat(np.arange(end - first, dtype=np.int32), lengths[first:end])  # [rows]
        chunk = items[low:high]
        keep = None
        stamps = None
        if times is not None:
            stamps = times[low:high]
            order = time_order(seg, stamps)
            if order is not None:
                chunk, stamps = chunk[order], stamps[order]
            duplicate = duplicates(seg, chunk, stamps)
            if duplicate.any():
                num_duplicates += int(duplicate.sum())
                at = np.flatnonzero(duplicate) if order is None else order[duplicate]
                slots.append(low + at)
                if filters.drop_duplicates:
                    keep = ~duplicate
        kept_after_duplicates += (high - low) if keep is None else int(keep.sum())
        if filters.drop_repeats:
            kept_seg, kept_items = (seg, chunk) if keep is None else (seg[keep], chunk[keep])
            repeat = (kept_seg[1:] == kept_seg[:-1]) & (kept_items[1:] == kept_items[:-1])
            if repeat.any():
                keep_repeat = np.concatenate([[True], ~repeat])
                if keep is None:
                    keep = keep_repeat
                else:
                    keep[keep] = keep_repeat
            kept_after_repeats += len(kept_seg) - int(repeat.sum())
        write = _compact(
            items, lengths, low, first, end, seg, chunk, keep, min_user_first, write, times, stamps
        )
    if num_duplicates:
        counts["exact duplicates"] = num_duplicates
        if filters.drop_duplicates:
            counts["after dropping duplicates"] = kept_after_duplicates
    if filters.drop_repeats:
        counts["after dropping repeats"] = kept_after_repeats
    if filters.min_item_interactions:
        per_item = np.bincount(items[:write], minlength=num_items)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        write, kept_rows = 0, 0
        for first, end in user_chunks(offsets):
            low, high = int(offsets[first]), int(offsets[end])
            seg = np.repeat(np.arange(end - first, dtype=np.int32), lengths[first:end])
            chunk = items[low:high]
            stamps = None if times is None else times[low:high]
            keep = per_item[chunk] >= filters.min_item_interactions
            kept_rows += int(keep.sum())
            min_user = filters.min_user_interactions
            write = _compact(
                items, lengths, low, first, end, seg, chunk, keep, min_user, write, times, stamps
            )
        counts[f"after dropping items with < {filters.min_item_interactions}"] = kept_rows
    kept_users = np.flatnonzero(lengths)
    offsets = np.zeros(len(kept_users) + 1, np.int64)
    np.cumsum(lengths[kept_users], out=offsets[1:])
    items = _shrunk(layout, write)
    if times is not None:
        layout.times = None
        times = _shrunk_array(times, write)
    duplicate_slots = np.sort(np.concatenate(slots)) if slots else np.zeros(0, np.int64)
    return Ordered(readers.Sequences(kept_users, offsets, items, times), counts, duplicate_slots)


def _compact(
    items: np.ndarray,
    lengths: np.ndarray,
    low: int,
    first: int,
    end: int,
    seg: np.ndarray,
    chunk: np.ndarray,
    keep: np.ndarray | None,
    min_user: int,
    write: int,
    times: np.ndarray | None = None,
    stamps: np.ndarray | None = None,
) -> int:
    """Writes a chunk's kept rows (`keep`, and only of users with >= `min_user` of them) at
    `items[write:]`, updates the users' `lengths`, and returns the new end of the kept rows.
    The chunk holds the rows of users [first, end), which started at `items[low]`; `stamps`,
    the chunk's timestamps in the same order, go to `times[write:]` likewise.

    `write` never passes the chunk's start, so the kept rows of earlier chunks stay intact.
    """
    if keep is not None:
        chunk_lengths = np.bincount(seg[keep], minlength=end - first)
    else:
        chunk_lengths = lengths[first:end]
    if min_user > 1:
        short = chunk_lengths < min_user
        if short.any():
            keep = (np.ones(len(seg), bool) if keep is None else keep) & ~short[seg]
            chunk_lengths = np.where(short, 0, chunk_lengths)
    lengths[first:end] = chunk_lengths
    kept = chunk if keep is None else chunk[keep]  # a copy when filtered: safe to write below
    if not (kept is chunk and write == low and np.may_share_memory(chunk, items)):
        items[write : write + len(kept)] = kept  # (else the chunk is already in its place)
    if times is not None:
        kept_stamps = stamps if keep is None else stamps[keep]
        if not (kept_stamps is stamps and write == low and np.may_share_memory(stamps, times)):
            times[write : write + len(kept_stamps)] = kept_stamps
    return write + len(kept)


def _shrunk(layout: Layout, size: int) -> np.ndarray:
    """The layout's first `size` items, giving back the memory of the rest when it can."""
    items = layout.items
    layout.items = None
    return _shrunk_array(items, size)


def _shrunk_array(items: np.ndarray, size: int) -> np.ndarray:
    """`items[:size]`, in place when the array owns its memory (no second copy)."""
    if size == len(items):
        return items
    try:
        items.resize(size, refcheck=False)  # in place: no second copy of the corpus
    except ValueError:  # not the owner of its memory
        items = items[:size].copy()
    return items
