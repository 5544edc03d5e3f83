"""Raw ids -> dense ids for serving: an artifact's item vocabulary and its user rows.

Unknown item ids are skipped and counted per history (or refused, with strict); a history with
no known id gets an error status instead of recommendations.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

NO_ITEM_IDS = "no item ids"
NO_KNOWN_ITEM_IDS = "no known item ids"


class UnknownItemError(ValueError):
    """A history holds a raw id the model does not know (with strict=True)."""


class EmptyHistoryError(ValueError):
    """A history holds no item the model knows (with strict=True)."""


@dataclasses.dataclass(frozen=True)
class EncodedHistories:
    """Histories as the exported functions read them.

    Attributes:
      histories: per history, int32 [m] dense ids of its known items, oldest first (whole).
      users: int32 [n] user rows (0 = unknown user, or a model without user features).
      unknown_ids: int64 [n]; ids skipped per history.
      errors: per history, None or why it cannot be served (then its ids are empty).
    """

    histories: list[np.ndarray]
    users: np.ndarray
    unknown_ids: np.ndarray
    errors: list[str | None]


def _key_function(kind: str) -> Callable[[Any], Any]:
    """Raw id -> the vocabulary's key for it, or None when it cannot be one.

    Integer vocabularies accept integers and their decimal strings (command lines, CSV); string
    vocabularies accept strings, bytes (UTF-8) and integers (JSON numbers), compared as text.
    """
    if kind in "iu":

        def integer_key(raw: Any) -> int | None:
            if isinstance(raw, bool | np.bool_):
                return None
            if isinstance(raw, int | np.integer):
                return int(raw)
            if isinstance(raw, str | bytes):
                try:
                    return int(raw)
                except ValueError:
                    return None
            if isinstance(raw, float | np.floating) and float(raw).is_integer():
                return int(raw)
            return None

        return integer_key

    def string_key(raw: Any) -> str | None:
        if isinstance(raw, str):
            return str(raw)
        if isinstance(raw, bytes):
            return raw.decode("utf-8", errors="replace")
        if isinstance(raw, int | np.integer) and not isinstance(raw, bool | np.bool_):
            return str(int(raw))
        return None

    return string_key


class IdMap:
    """An artifact's vocabularies: raw item ids by dense id, raw user ids by user row."""

    def __init__(self, vocabulary: np.ndarray, user_vocabulary: np.ndarray | None):
        """
        Args:
          vocabulary: raw item ids by dense id ([0] stands for padding), integers or strings.
          user_vocabulary: raw user ids by user row ([0] = the unknown user); None for a model
            without user features.
        """
        if vocabulary.dtype.kind == "S":
            vocabulary = vocabulary.astype(str)
        self.vocabulary = vocabulary
        self.vocabulary.flags.writeable = False
        self.num_items = len(vocabulary) - 1
        self._key = _key_function(vocabulary.dtype.kind)
        # raw -> dense through a dict: the one lookup that takes ints and strings alike.
        self._dense = {self._key(raw): i for i, raw in enumerate(vocabulary.tolist()) if i > 0}
        # Sorted copy for histories given as numpy arrays of the vocabulary's kind (vectorised).
        self._sorted_order = np.argsort(vocabulary[1:], kind="stable") + 1  # [V] dense ids
        self._sorted_raw = vocabulary[self._sorted_order]  # [V]
        self._arrow_vocabulary = None  # vocabulary[1:] for string look-ups, built when needed
        self._user_rows: dict[Any, int] = {}
        if user_vocabulary is not None:
            if user_vocabulary.dtype.kind == "S":
                user_vocabulary = user_vocabulary.astype(str)
            self._user_key = _key_function(user_vocabulary.dtype.kind)
            self._user_rows = {
                self._user_key(raw): i for i, raw in enumerate(user_vocabulary.tolist()) if i > 0
            }

    def _look_up_sorted(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dense ids, found) [n] each for a 1-D numpy array of raw ids of the vocabulary's kind,
        by binary search in the sorted raw ids; an unknown id's dense id is meaningless."""
        at = np.minimum(np.searchsorted(self._sorted_raw, raw), len(self._sorted_raw) - 1)
        return self._sorted_order[at], self._sorted_raw[at] == raw

    def _dense_ids(self, history: Any, where: str, strict: bool) -> tuple[np.ndarray, list[Any]]:
        """(dense ids int32 of the known items in order, the unknown raw ids)."""
        if isinstance(history, str | bytes) or not isinstance(history, collections.abc.Iterable):
            raise TypeError(
                f"{where}: expected a sequence of item ids, got {type(history).__name__} "
                "(recommend takes a list of histories)"
            )
        vocab_kind = "iu" if self.vocabulary.dtype.kind in "iu" else "U"
        if (
            isinstance(history, np.ndarray)
            and history.ndim == 1
            and history.dtype.kind in vocab_kind
        ):
            dense, found = self._look_up_sorted(history)
            dense = dense[found].astype(np.int32)
            unknown = history[~found].tolist()
        else:
            dense_list, unknown = [], []
            for raw in history:
                try:
                    i = self._dense.get(self._key(raw))
                except TypeError:  # unhashable: a list inside a history
                    i = None
                if i is None:
                    unknown.append(raw)
                else:
                    dense_list.append(i)
            dense = np.asarray(dense_list, np.int32)
        if strict and unknown:
            more = f" (and {len(unknown) - 1} more unknown ids)" if len(unknown) > 1 else ""
            raise UnknownItemError(
                f"{where}: item id {unknown[0]!r} is not in the model's vocabulary of "
                f"{self.num_items} items{more}"
            )
        return dense, unknown

    def user_rows(self, users: Sequence[Any] | None, n: int) -> np.ndarray:
        """int32 [n]: each raw user id's feature row; 0 (the unknown user) when the model has no
        user features, when `users` is None, or for a user the artifact does not know."""
        rows = np.zeros(n, np.int32)
        if users is None or not self._user_rows:
            return rows
        if len(users) != n:
            raise ValueError(f"users: {len(users)} ids for {n} histories")
        for i, raw in enumerate(users):
            try:
                rows[i] = self._user_rows.get(self._user_key(raw), 0)
            except TypeError:  # unhashable: not an id
                rows[i] = 0
        return rows

    def encode(
        self,
        histories: Sequence[Sequence[Any]],
        *,
        users: Sequence[Any] | None = None,
        strict: bool = False,
        labels: Sequence[str] | None = None,
    ) -> EncodedHistories:
        """Maps histories of raw ids (and raw user ids) to the exported functions' input.

        Args:
          histories: per user, raw item ids, oldest first (the whole history).
          users: per history, the raw user id (read by models with user features; unknown
            users, and None, get the unknown-user row).
          strict: refuse unknown ids and empty histories instead of reporting them.
          labels: names of the histories for messages (default "histories[i]").

        Returns:
          The encoded histories, with a per-history error status.

        Raises:
          UnknownItemError, EmptyHistoryError: with strict, naming the history.
        """
        if isinstance(histories, str | bytes) or not isinstance(
            histories, collections.abc.Sequence
        ):
            raise TypeError(
                f"histories: expected a list of histories, got {type(histories).__name__}"
            )
        flat = self.map_arrays(histories, strict)
        if flat is not None:
            dense_rows, unknown, errors, examples = flat
        else:
            dense_rows, unknown, errors, examples = self._map_each(histories, strict, labels)
        if unknown.any():
            logging.log_first_n(
                logging.WARNING,
                "Skipped %d unknown item ids in %d of %d histories (e.g. %s)",
                5,
                int(unknown.sum()),
                int((unknown > 0).sum()),
                len(histories),
                ", ".join(repr(x) for x in examples),
            )
        return EncodedHistories(dense_rows, self.user_rows(users, len(histories)), unknown, errors)

    def map_arrays(
        self, histories: Sequence[Any], strict: bool
    ) -> tuple[list[np.ndarray], np.ndarray, list[str | None], list[Any]] | None:
        """`_map_each`'s result in a few numpy calls, for histories that are all 1-D numpy
        arrays of the vocabulary's kind, or of Python strings (object arrays, as a Parquet
        string column gives them) for a string vocabulary: what the file readers and
        `workdir_users` give. None otherwise, and with strict when a history would be refused
        (`_map_each` then raises the same error, naming the first one)."""
        kinds = "iu" if self.vocabulary.dtype.kind in "iu" else "UO"
        first = histories[0] if len(histories) else None
        if not isinstance(first, np.ndarray) or first.dtype.kind not in kinds:
            return None
        # One dtype (strings of any width), so that concatenating casts nothing (int64 with
        # uint64 would give floats).
        if not all(
            isinstance(h, np.ndarray)
            and h.ndim == 1
            and (h.dtype == first.dtype or h.dtype.kind == first.dtype.kind == "U")
            for h in histories
        ):
            return None
        lengths = np.fromiter((len(h) for h in histories), np.int64, len(histories))
        flat = np.concatenate(histories)  # [total]
        if flat.dtype.kind == "O":
            looked_up = self._look_up_strings(flat)
            if looked_up is None:
                return None
            dense_all, found = looked_up  # [total] each
        else:
            dense_all, found = self._look_up_sorted(flat)  # the whole chunk at once
        row_of = np.repeat(np.arange(len(histories)), lengths)  # [total]
        unknown = np.bincount(row_of[~found], minlength=len(histories)).astype(np.int64)
        known = lengths - unknown
        if strict and (unknown.any() or not known.all()):
            return None
        dense = dense_all[found].astype(np.int32)  # [total known]
        dense_rows = np.split(dense, np.cumsum(known)[:-1])
        errors: list[str | None] = [None] * len(histories)
        for row in np.flatnonzero(known == 0).tolist():
            errors[row] = NO_KNOWN_ITEM_IDS if unknown[row] else NO_ITEM_IDS
        examples = flat[~found][:5].tolist()
        return dense_rows, unknown, errors, examples

    def _look_up_strings(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(dense ids, found) [n] each for an object array of raw ids, by a hash look-up
        (pyarrow's index_in: a numpy unicode copy of a chunk would be slow, and as wide as its
        longest id); None unless every entry is a str or None (None is unknown, as in
        `_dense_ids`), so that other objects keep `_dense_ids`'s rules."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(flat):
            return np.zeros(0, np.int64), np.zeros(0, bool)
        try:
            values = pa.array(flat, from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        if pa.types.is_null(values.type):
            return np.zeros(len(flat), np.int64), np.zeros(len(flat), bool)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            return None
        if self._arrow_vocabulary is None:
            self._arrow_vocabulary = pa.array(self.vocabulary[1:].tolist(), pa.string())
        index = pc.index_in(values.cast(pa.string()), value_set=self._arrow_vocabulary)
        found = index.is_valid().to_numpy(zero_copy_only=False)
        # Position in vocabulary[1:] -> dense id; unknown ids get 0 and are dropped by `found`.
        return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1, found

    def _map_each(
        self, histories: Sequence[Any], strict: bool, labels: Sequence[str] | None
    ) -> tuple[list[np.ndarray], np.ndarray, list[str | None], list[Any]]:
        """(dense ids per history, unknown ids per history, errors, up to 5 unknown ids), one
        history at a time: any iterable of raw ids of any type."""
        dense_rows: list[np.ndarray] = []
        unknown = np.zeros(len(histories), np.int64)
        errors: list[str | None] = []
        examples: list[Any] = []
        for row, history in enumerate(histories):
            where = labels[row] if labels is not None else f"histories[{row}]"
            dense, skipped = self._dense_ids(history, where, strict)
            unknown[row] = len(skipped)
            examples.extend(skipped[: 5 - len(examples)])
            error = None
            if not len(dense):
                error = NO_KNOWN_ITEM_IDS if skipped else NO_ITEM_IDS
                if strict:
                    what = f"only unknown item ids ({len(skipped)})" if skipped else "no item ids"
                    raise EmptyHistoryError(f"{where} has {what}: nothing to recommend from")
            dense_rows.append(dense)
            errors.append(error)
        return dense_rows, unknown, errors, examples
