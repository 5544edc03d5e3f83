"""The corpus handed to training and evaluation.

A `Corpus` holds every user's chronological item sequence as two flat numpy arrays (CSR style:
`offsets` + `items`), never as Python dicts of lists, so that a 20M-interaction data set costs a few
hundred MB and every operation on it is vectorised. Item ids are dense: 0 is padding, 1..V are items
and V + 1 is [MASK]. The raw ids of the source travel with it so that exports can speak raw ids;
they are integers (int64) or strings, whatever the source used. String ids are Python strings in
an object array, each as long as it is (a numpy unicode array would give every id the width of the
longest: one 200,000-character URL among a million ids would take 800 GB), and are stored on disk
as offsets plus UTF-8 bytes (`pack_raw_ids`), so memory and files follow the ids' total length.
An id may be at most `MAX_RAW_ID_BYTES` long (readers refuse longer ones, naming the row).

The leave-one-out split (`leave_one_out`) is derived from the corpus, not stored beside it:
for a user with n >= 3 interactions the last item is the test target and the second to last the
validation target; users with fewer than 3 interactions only train.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools

import numpy as np

PAD_ID = 0
# Users with fewer interactions than this are kept for training but never evaluated.
MIN_EVAL_LENGTH = 3
# Leave-one-out's modes (`leave_one_out`); a config may also ask for "temporal" (`make_split`).
SPLIT_MODES = ("standard", "paper")
ALL_SPLIT_MODES = (*SPLIT_MODES, "temporal")
# Raw item ids below this many times the interaction count are remapped through a lookup table.
_TABLE_REMAP_FACTOR = 8
# The longest raw id accepted, in UTF-8 bytes: far above URLs and SKUs (browsers cap URLs near
# 64 KB too), far below what would make a cell in a CSV a mistake worth a silent gigabyte.
MAX_RAW_ID_BYTES = 65_536


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """Per-user item sequences with a dense item vocabulary.

    Attributes:
      name: the data set's name, e.g. "beauty".
      offsets: int64 [num_users + 1]; user u's items are `items[offsets[u]:offsets[u + 1]]`.
      items: int32 [num_interactions]; dense item ids in 1..num_items, oldest first.
      raw_item_ids: [num_items + 1], int64 or object (Python str); `raw_item_ids[i]` is the source's
        id of item i. Entry 0 stands for padding: -1 for integer ids, "" for string ids (neither
        is a valid raw id). Sorted from 1 on, so dense ids keep the raw order.
      raw_user_ids: [num_users], int64 or object (str); the source's id of each user.
      item_features: optional categorical item features (`features.py`): name -> int32
        [num_items + 2, width] category ids by dense item id, 0 = none (padding, [MASK] and
        items without the feature). Empty when the source has none.
      user_features: likewise for users: name -> int32 [num_users + 1, width]; row u + 1 is
        user u, row 0 the unknown user (zeros).
      timestamps: int64 or float64 [num_interactions], aligned with `items`: each interaction's
        time in seconds (unix seconds where the source's times are dates), non-decreasing
        within a user; None when the source has no times (the paper's files). Only the temporal
        split reads them (`temporal_split`).
    """

    name: str
    offsets: np.ndarray
    items: np.ndarray
    raw_item_ids: np.ndarray
    raw_user_ids: np.ndarray
    item_features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    user_features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    timestamps: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.raw_item_ids) - 1

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @property
    def mask_id(self) -> int:
        return self.num_items + 1

    @property
    def vocab_size(self) -> int:
        """Rows of the item embedding table: padding, the items and [MASK]."""
        return self.num_items + 2

    @property
    def lengths(self) -> np.ndarray:
        """int64 [num_users]: the length of every user's full sequence."""
        return np.diff(self.offsets)

    @functools.cached_property
    def popularity(self) -> np.ndarray:
        """int64 [num_items + 1]: interactions per item over the full sequences ([0] = 0)."""
        return np.bincount(self.items, minlength=self.num_items + 1).astype(np.int64)

    def sequence(self, user: int) -> np.ndarray:
        """int32 [length]: one user's full sequence of dense item ids."""
        return self.items[self.offsets[user] : self.offsets[user + 1]]


def padding_raw_id(raw_ids: np.ndarray) -> int | str:
    """The raw id that stands for padding in an array of raw ids: -1, or "" for strings."""
    return -1 if raw_ids.dtype.kind in "iu" else ""


def string_ids(values) -> np.ndarray:
    """Strings as an object array [n] of str (never a fixed-width unicode array)."""
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def raw_id_array(raw_ids) -> np.ndarray:
    """Raw ids as the corpus keeps them: int64 for integers, an object array of str for strings.

    Args:
      raw_ids: integers, or strings (a unicode, numpy string or object array of str).

    Returns:
      int64 [n] or object [n].

    Raises:
      ValueError: for any other kind of id (floats, bytes, mixed objects).
    """
    if not isinstance(raw_ids, np.ndarray):
        values = list(raw_ids)
        # Strings straight into an object array: np.asarray would make them fixed-width first.
        if values and all(isinstance(v, str) for v in values):
            return string_ids(values)
        raw_ids = np.asarray(values, dtype=None if values else np.int64)
    if raw_ids.dtype.kind in "iu":
        return raw_ids.astype(np.int64)
    if raw_ids.dtype.kind in "UT":
        return string_ids(raw_ids)
    if raw_ids.dtype.kind == "O" and all(isinstance(v, str) for v in raw_ids.tolist()):
        return raw_ids
    raise ValueError(f"raw ids must be integers or strings, got an array of {raw_ids.dtype}")


def pack_raw_ids(raw_ids: np.ndarray, key: str) -> dict[str, np.ndarray]:
    """Raw ids as plain arrays for `np.savez` (no pickle): int64 ids as they are, string ids as
    `<key>__offsets` (int64 [n + 1]) and `<key>__utf8` (uint8 [total bytes]); `unpack_raw_ids`
    reads both, and also an older file's unicode array under `key`."""
    if raw_ids.dtype.kind in "iu":
        return {key: raw_ids}
    encoded = [s.encode("utf-8") for s in raw_ids.tolist()]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    utf8 = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    return {f"{key}__offsets": offsets, f"{key}__utf8": utf8}


def unpack_raw_ids(arrays, key: str) -> np.ndarray:
    """The raw ids `pack_raw_ids` stored under `key` in `arrays` (a mapping or an NpzFile)."""
    names = arrays.files if hasattr(arrays, "files") else arrays.keys()
    if f"{key}__offsets" not in names:
        return raw_id_array(arrays[key])
    offsets = arrays[f"{key}__offsets"].tolist()
    data = arrays[f"{key}__utf8"].tobytes()
    bounds = zip(offsets[:-1], offsets[1:], strict=True)
    return string_ids(data[a:b].decode("utf-8") for a, b in bounds)


def corpus_from_sequences(
    name: str,
    raw_user_ids: np.ndarray,
    offsets: np.ndarray,
    raw_items: np.ndarray,
    *,
    item_vocab: np.ndarray | None = None,
    timestamps: np.ndarray | None = None,
) -> Corpus:
    """Builds a corpus from per-user sequences of raw item ids, remapping items to 1..V.

    Args:
      name: the data set's name.
      raw_user_ids: [num_users], integers or strings.
      offsets: int64 [num_users + 1], CSR offsets into `raw_items`.
      raw_items: [num_interactions], each user's oldest first: raw item ids (integers), or,
        when `item_vocab` is given, indices into it.
      item_vocab: [vocab], sorted unique raw item ids (integers or strings) that `raw_items`
        indexes; the way to pass string ids without repeating each string at every interaction.
        Items of the vocabulary that no sequence uses get no dense id.
      timestamps: [num_interactions] seconds aligned with `raw_items`, or None (no times).

    Returns:
      The corpus; dense item ids follow the sorted raw ids.
    """
    raw_items = np.asarray(raw_items)
    if raw_items.dtype not in (np.int32, np.int64):
        raw_items = raw_items.astype(np.int64)  # int32 (your own file's indices) stays as it is
    if (
        raw_items.size
        and raw_items.min() >= 0
        and raw_items.max() < _TABLE_REMAP_FACTOR * (raw_items.size + 1)
    ):
        # Small non-negative ids (every source we read): a lookup table gives the same ids as
        # np.unique without its sort, ~5x faster at 20M interactions. int32 dense ids: the
        # table gives them without an int64 copy of every interaction.
        present = np.zeros(int(raw_items.max()) + 1, dtype=bool)
        present[raw_items] = True
        raw_item_ids = np.flatnonzero(present)
        dense_of_raw = np.cumsum(present, dtype=np.int32)  # raw id -> its rank + 1
        items = dense_of_raw[raw_items]
    else:
        raw_item_ids, inverse = np.unique(raw_items.astype(np.int64), return_inverse=True)
        items = inverse + 1
    if item_vocab is not None:
        # The vocabulary is sorted, so indices in ascending order are raw ids in ascending order.
        raw_item_ids = raw_id_array(item_vocab)[raw_item_ids]
    raw_item_ids = raw_id_array(raw_item_ids)
    return Corpus(
        name=name,
        offsets=np.asarray(offsets, dtype=np.int64),
        items=items.astype(np.int32, copy=False),
        raw_item_ids=np.concatenate(
            [np.array([padding_raw_id(raw_item_ids)], dtype=raw_item_ids.dtype), raw_item_ids]
        ),
        raw_user_ids=raw_id_array(raw_user_ids),
        timestamps=None if timestamps is None else np.asarray(timestamps),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """A split of a corpus: leave-one-out (`leave_one_out`) or on a timeline (`temporal_split`).

    Every training sequence and every evaluated history is a prefix of the user's sequence
    (items are oldest first), so only where each ends is stored.

    Attributes:
      mode: "standard" (train = all but the last two items), "paper" (the validation item is
        merged into training, as the original code does) or "temporal" (two cut-off times).
      train_ends: int64 [num_users]; a training sequence starts where the user's full sequence
        starts, so only its end is stored: user u trains on
        `corpus.items[corpus.offsets[u]:train_ends[u]]`.
      eval_users: int64 [num_eval]; leave-one-out: users with at least 3 interactions; temporal:
        the test's users (`users(which)` gives either held-out item's).
      valid_targets: int32 [num_valid]; second-to-last item of each evaluated user (temporal:
        each validation user's first item in [first cut-off, second)).
      test_targets: int32 [num_eval]; last item of each evaluated user (temporal: each test
        user's first item at or after the second cut-off).
      valid_users: temporal only: int64 [num_valid], the validation's users; None = eval_users.
      valid_ends, test_ends: temporal only: int64 history ends in `corpus.items` (the target's
        own index); None = leave-one-out's rule.
      cutoffs: temporal only: (first, second) cut-off in the corpus's seconds.
    """

    mode: str
    train_ends: np.ndarray
    eval_users: np.ndarray
    valid_targets: np.ndarray
    test_targets: np.ndarray
    valid_users: np.ndarray | None = None
    valid_ends: np.ndarray | None = None
    test_ends: np.ndarray | None = None
    cutoffs: tuple[float, float] | None = None

    def train_sequence(self, corpus: Corpus, user: int) -> np.ndarray:
        return corpus.items[corpus.offsets[user] : self.train_ends[user]]

    def users(self, which: str) -> np.ndarray:
        """int64 [n]: the users evaluated on one held-out item ("valid" or "test")."""
        _check_which(which)
        if which == "valid" and self.valid_users is not None:
            return self.valid_users
        return self.eval_users

    def history_ends(self, corpus: Corpus, which: str) -> np.ndarray:
        """int64 [n]: where each of `users(which)`'s input history ends in `corpus.items`.

        Leave-one-out: validation inputs use the training items only; test inputs training +
        validation. Temporal: everything before the target (for the test, the validation
        period's items too).
        """
        _check_which(which)
        if self.mode == "temporal":
            return self.valid_ends if which == "valid" else self.test_ends
        ends = corpus.offsets[self.eval_users + 1]
        return ends - 2 if which == "valid" else ends - 1

    def cutoff(self, which: str) -> float | None:
        """The time before which everything was known at `which`'s targets (None: leave-one-out)."""
        _check_which(which)
        if self.cutoffs is None:
            return None
        return self.cutoffs[0] if which == "valid" else self.cutoffs[1]

    def known_popularity(self, corpus: Corpus, which: str) -> np.ndarray:
        """int64 [num_items + 1]: interactions per item known at `which`'s targets.

        Leave-one-out: the whole corpus (`Corpus.popularity`, as the paper draws negatives);
        temporal: only interactions before the target's cut-off, so no item first seen after
        it is drawn as a candidate and popularity says only what was known then.
        """
        cutoff = self.cutoff(which)
        if cutoff is None:
            return corpus.popularity
        before = corpus.items[corpus.timestamps < cutoff]
        return np.bincount(before, minlength=corpus.num_items + 1).astype(np.int64)

    def targets(self, which: str) -> np.ndarray:
        _check_which(which)
        return self.valid_targets if which == "valid" else self.test_targets


def _check_which(which: str) -> None:
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")


def leave_one_out(corpus: Corpus, mode: str = "standard") -> Split:
    """Splits a corpus leave-one-out.

    Args:
      corpus: the corpus.
      mode: "standard" or "paper" (see `Split`).

    Returns:
      The split.

    Raises:
      ValueError: on an unknown mode, or when no user has enough interactions to be evaluated.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    lengths = corpus.lengths
    evaluable = lengths >= MIN_EVAL_LENGTH
    if not evaluable.any():
        raise ValueError(
            f"data set {corpus.name!r} has no evaluable user: every one of its {corpus.num_users} "
            f"users has fewer than {MIN_EVAL_LENGTH} interactions"
        )
    eval_users = np.flatnonzero(evaluable).astype(np.int64)
    ends = corpus.offsets[1:]
    held_out = 2 if mode == "standard" else 1
    train_ends = np.where(evaluable, ends - held_out, ends)
    last = corpus.offsets[eval_users + 1]
    return Split(
        mode=mode,
        train_ends=train_ends.astype(np.int64),
        eval_users=eval_users,
        valid_targets=corpus.items[last - 2],
        test_targets=corpus.items[last - 1],
    )


def parse_cutoff(value: str, timestamps: np.ndarray, field: str) -> float:
    """A cut-off time in the corpus's seconds from "q<fraction>" or an ISO-8601 date/time.

    Args:
      value: "q0.8" = the time below which 80% of all interactions lie (a quantile of every
        interaction's time); or "2026-01-31" / "2026-01-31T12:00:00" (UTC unless it names a
        zone), read as unix seconds.
      timestamps: every interaction's time, in seconds.
      field: the config field, for the message.

    Raises:
      ValueError: naming `field`, for anything else or a quantile outside (0, 1).
    """
    text = str(value).strip()
    if text.startswith("q"):
        try:
            q = float(text[1:])
        except ValueError:
            q = -1.0
        if not 0.0 < q < 1.0:
            raise ValueError(f"{field}={value!r}: a quantile must be q<fraction> in (0, 1)")
        return float(np.quantile(timestamps, q, method="higher"))
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{field}={value!r}: expected a date such as 2026-01-31 (or a time, ISO 8601) or a "
            "quantile of the interactions' times such as q0.8"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def temporal_split(corpus: Corpus, valid_start: str, test_start: str) -> Split:
    """Splits a corpus on one timeline for all users (Sun, SIGIR 2023).

    With cut-offs t1 < t2: training sees only interactions before t1; the validation target of
    a user is their first interaction in [t1, t2), with everything before it as history; the
    test target their first interaction at or after t2, with everything before it (validation
    period included). A user with no interaction in a period, or none before its target (no
    history to recommend from), is not evaluated on it.

    Args:
      corpus: a corpus with timestamps.
      valid_start: t1 (`parse_cutoff`: a date or "q<fraction>"); config `temporal.valid_start`.
      test_start: t2, likewise; config `temporal.test_start`.

    Returns:
      The split (mode "temporal").

    Raises:
      ValueError: naming the field: no timestamps, an unparseable cut-off, t2 before t1, no
        training interaction, or no user to validate or test.
    """
    if corpus.timestamps is None:
        raise ValueError(
            f"split_mode='temporal' needs timestamps, and data set {corpus.name!r} has none "
            "(MovieLens and your own file with file.timestamp_column have them)"
        )
    times = corpus.timestamps
    t1 = parse_cutoff(valid_start, times, "temporal.valid_start")
    t2 = parse_cutoff(test_start, times, "temporal.test_start")
    if t2 < t1:
        raise ValueError(
            f"temporal.test_start={test_start!r} comes before temporal.valid_start={valid_start!r}"
        )
    starts, ends = corpus.offsets[:-1], corpus.offsets[1:]
    rows = np.repeat(np.arange(corpus.num_users), corpus.lengths)

    def first_at_or_after(t: float) -> np.ndarray:
        # Times are non-decreasing within a user: those before t form a prefix.
        return starts + np.bincount(rows[times < t], minlength=corpus.num_users)

    train_ends = first_at_or_after(t1)
    if not (train_ends > starts).any():
        raise ValueError(
            f"temporal.valid_start={valid_start!r} leaves no training interaction (the first "
            f"is at {_date(times.min())})"
        )
    valid_at = train_ends
    valid_users = np.flatnonzero(
        (valid_at < ends) & (times[np.minimum(valid_at, len(times) - 1)] < t2) & (valid_at > starts)
    )
    test_at = first_at_or_after(t2)
    test_users = np.flatnonzero((test_at < ends) & (test_at > starts))
    for users, field, value in (
        (valid_users, "temporal.valid_start", valid_start),
        (test_users, "temporal.test_start", test_start),
    ):
        if not len(users):
            raise ValueError(
                f"{field}={value!r} leaves no user to evaluate (nobody has an interaction in its "
                f"period with one before it; times run from {_date(times.min())} to "
                f"{_date(times.max())})"
            )
    return Split(
        mode="temporal",
        train_ends=train_ends.astype(np.int64),
        eval_users=test_users.astype(np.int64),
        valid_targets=corpus.items[valid_at[valid_users]],
        test_targets=corpus.items[test_at[test_users]],
        valid_users=valid_users.astype(np.int64),
        valid_ends=valid_at[valid_users].astype(np.int64),
        test_ends=test_at[test_users].astype(np.int64),
        cutoffs=(t1, t2),
    )


def _date(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(float(seconds), datetime.UTC).isoformat()


def make_split(corpus: Corpus, mode: str, valid_start: str = "", test_start: str = "") -> Split:
    """The split a config asks for: `leave_one_out`, or `temporal_split` with its cut-offs."""
    if mode == "temporal":
        return temporal_split(corpus, valid_start, test_start)
    return leave_one_out(corpus, mode)
