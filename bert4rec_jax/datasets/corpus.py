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
import functools

import numpy as np

PAD_ID = 0
# Users with fewer interactions than this are kept for training but never evaluated.
MIN_EVAL_LENGTH = 3
SPLIT_MODES = ("standard", "paper")
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
    """The leave-one-out split of a corpus.

    Attributes:
      mode: "standard" (train = all but the last two items) or "paper" (the validation item is
        merged into training, as the original code does).
      train_ends: int64 [num_users]; a training sequence starts where the user's full sequence
        starts, so only its end is stored: user u trains on
        `corpus.items[corpus.offsets[u]:train_ends[u]]`.
      eval_users: int64 [num_eval]; users with at least 3 interactions.
      valid_targets: int32 [num_eval]; second-to-last item of each evaluated user.
      test_targets: int32 [num_eval]; last item of each evaluated user.
    """

    mode: str
    train_ends: np.ndarray
    eval_users: np.ndarray
    valid_targets: np.ndarray
    test_targets: np.ndarray

    def train_sequence(self, corpus: Corpus, user: int) -> np.ndarray:
        return corpus.items[corpus.offsets[user] : self.train_ends[user]]

    def history_ends(self, corpus: Corpus, which: str) -> np.ndarray:
        """int64 [num_eval]: where each evaluated user's input history ends in `corpus.items`.

        Validation inputs use the training items only; test inputs use training + validation.
        """
        ends = corpus.offsets[self.eval_users + 1]
        if which == "valid":
            return ends - 2
        if which == "test":
            return ends - 1
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")

    def targets(self, which: str) -> np.ndarray:
        if which == "valid":
            return self.valid_targets
        if which == "test":
            return self.test_targets
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
