"""Top-k recommendations for user histories of raw item ids, from an exported model.

    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --history=12,7,33 --k=10
    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --input=u.jsonl --output=r.jsonl
    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --input=interactions.parquet \
        --output=recs.parquet
    python -m bert4rec_jax.recommend --model=/tmp/bert4rec_export --workdir=/tmp/bert4rec \
        --all_users --output=recs.parquet

From Python:

    rec = Recommender.load("/tmp/bert4rec_export")      # checks every file and the manifest
    result = rec.recommend([[12, 7, 33], [5, 8], []], k=10)
    result[0]              # [(raw item id, score), ...], best first
    result.errors          # per history: None, or why it got nothing (here [2]: "no item ids")
    result.unknown_ids     # per history: ids skipped because the model does not know them
    result.num_unknown     # their total

A history lists raw item ids (integers or strings, as the data set has them), oldest first, and
it is passed WHOLE: the model reads its last `max_len - 1` known items, and with `exclude_seen`
(the default) the exported function itself excludes every item of it, however old, so k unseen
items always come back while the catalogue has that many. Unknown ids are skipped and counted;
a history with no known id gets an error status and no recommendations, and the others are
served. `strict=True` / `--strict` refuses the first unknown id or empty history instead.

Input files (`--input`), by `--input_format` or the file's extension:
  * JSON lines (.jsonl, .json, .ndjson): one object per line, `{"user": ..., "history": [...]}`;
    "user" is optional and any JSON value (with a user-feature model: the raw user id).
  * CSV histories (.csv, .txt): `user,item,item,...` per line, no header.
  * Interactions (.parquet, or `--input_format=interactions` for a CSV with a header): one row
    per interaction, columns `user` and `item` (`--user_column`, `--item_column`) and optionally
    `timestamp` (`--timestamp_column`; a user's rows are ordered by it, else kept in file order).
    Rows must be grouped by user (as a file sorted by user is): the file is streamed, so a user
    whose rows are split gets one output row per run of rows.
The output (`--output`, default standard output) is JSON lines or, for .parquet, Parquet, one row
per user in input order: user, items, scores, unknown_ids, error (null when served). Jobs stream
in chunks of `--chunk_users` users, so memory does not grow with the number of users.
"""

from __future__ import annotations

import collections.abc
import csv
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

import jax
import numpy as np
from absl import app, flags, logging

from bert4rec_jax import artifact, cli, sharding

# Histories run through the exported function at once, from measurements on the 2-core CPU at
# the ML-1m shape (benchmarks/recommend.py): in the sweep of issue 17, batches of 8-64 served
# 3,800-4,700 histories/s and 256-1,024 served 490-570; under a load average of 11, full
# windows (199 items) served 700-770/s at batches of 2-8, 540 at 16 and 250 at 32, while
# windows of 64 items served 2,000-2,500/s at every batch of 4-32. Above the cliff the
# activations ([batch, window, 256] per layer) leave the caches; 8 is on the fast side of it in
# every measurement. With the last block computed for the [MASK] row only (export), four sweeps
# under loads of 3-9 still put 8 and 16 on top, within noise of each other (8: 823-1,836,
# 16: 1,266-1,538, 32: 596-1,375 histories/s; 8 ahead in two, 16 in one), so 8 stays.
DEFAULT_BATCH_SIZE = 8
# Users read, encoded and written together by the file-to-file jobs (memory per chunk, not per job).
DEFAULT_CHUNK_USERS = 4096
JSON_LINES_SUFFIXES = (".jsonl", ".json", ".ndjson")
NO_ITEM_IDS = "no item ids"
NO_KNOWN_ITEM_IDS = "no known item ids"


class UnknownItemError(ValueError):
    """A history holds a raw id the model does not know (with strict=True)."""


class EmptyHistoryError(ValueError):
    """A history holds no item the model knows (with strict=True)."""


class InputFileError(ValueError):
    """A line of an input file cannot be read as a history."""


@dataclasses.dataclass(frozen=True)
class Recommendations(collections.abc.Sequence):
    """What `Recommender.recommend` returns: a sequence with one entry per history.

    Attributes:
      items: per history, (raw item id, score) pairs, best first: k of them, fewer only when
        the catalogue has fewer than k items outside the history; [] for a history in error.
      unknown_ids: per history, how many of its ids were skipped as unknown.
      errors: per history, None when served, else why not ("no item ids", "no known item
        ids"): such a history gets no recommendations.
    """

    items: tuple[list[tuple[Any, float]], ...]
    unknown_ids: tuple[int, ...]
    errors: tuple[str | None, ...]

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_unknown(self) -> int:
        """Unknown ids skipped over all histories."""
        return sum(self.unknown_ids)

    @property
    def num_failed(self) -> int:
        """Histories that got no recommendations (an error status)."""
        return sum(e is not None for e in self.errors)


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


def _padded(rows: Sequence[np.ndarray], size: int, minimum: int = 8) -> np.ndarray:
    """int32 [size, w]: the rows left-aligned, padded with 0; w a power of two >= the longest.

    Powers of two, so that a handful of compiled history lengths serve every request.
    """
    width = sharding.pow2(max([minimum] + [len(r) for r in rows]))
    out = np.zeros((size, width), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


class Recommender:
    """An exported model, ready to recommend; build it with `Recommender.load`."""

    def __init__(
        self,
        directory: pathlib.Path,
        manifest: dict[str, Any],
        vocabulary: np.ndarray,
        params: dict[str, Any],
        exported: jax.export.Exported,
        encoder: jax.export.Exported,
        user_vocabulary: np.ndarray | None,
        batch_size: int,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        self.directory = directory
        self.manifest = manifest
        self.batch_size = batch_size
        if vocabulary.dtype.kind == "S":
            vocabulary = vocabulary.astype(str)
        self.vocabulary = vocabulary
        self.vocabulary.flags.writeable = False
        self._key = _key_function(vocabulary.dtype.kind)
        # raw -> dense through a dict: the one lookup that takes ints and strings alike.
        self._dense = {self._key(raw): i for i, raw in enumerate(vocabulary.tolist()) if i > 0}
        # Sorted copy for histories given as numpy arrays of the vocabulary's kind (vectorised).
        self._sorted_order = np.argsort(vocabulary[1:], kind="stable") + 1  # [V] dense ids
        self._sorted_raw = vocabulary[self._sorted_order]  # [V]
        self._arrow_vocabulary = None  # vocabulary[1:] for string look-ups, built when needed
        self.user_vocabulary = user_vocabulary
        self._user_rows: dict[Any, int] = {}
        if user_vocabulary is not None:
            if user_vocabulary.dtype.kind == "S":
                user_vocabulary = user_vocabulary.astype(str)
            self._user_key = _key_function(user_vocabulary.dtype.kind)
            self._user_rows = {
                self._user_key(raw): i for i, raw in enumerate(user_vocabulary.tolist()) if i > 0
            }
        self._flat_item_table = (params["item_embedding"], params["output_bias"])
        self._params = jax.device_put(params)
        self._serve = jax.jit(exported.call)
        self._encode = jax.jit(encoder.call)

    @classmethod
    def load(
        cls, directory: str | pathlib.Path, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Recommender:
        """Loads an export directory after checking its files and its manifest.

        Args:
          directory: written by `export.export_model` / `python -m bert4rec_jax.export`.
          batch_size: histories run at once; batches are padded to powers of two up to this, so
            a few compiled shapes serve every request size.

        Returns:
          The recommender.

        Raises:
          artifact.ArtifactError: naming the file or the manifest's field, when a file is
            missing, altered or unreadable, or the manifest disagrees with itself or the files;
            nothing is loaded then.
        """
        directory = pathlib.Path(directory)
        manifest = artifact.read_verified_manifest(directory)
        artifact.check_manifest(manifest)

        def read(name: str, reader: Callable[[pathlib.Path], Any]) -> Any:
            try:
                return reader(directory / name)
            except Exception as e:  # a verified file that still cannot be read
                raise artifact.ArtifactError(
                    f"{directory / name} cannot be read ({type(e).__name__}: {e})"
                ) from e

        def read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
            with np.load(path, allow_pickle=False) as saved:
                return {k: saved[k] for k in saved.files}

        def read_npy(path: pathlib.Path) -> np.ndarray:
            return np.load(path, allow_pickle=False)

        def deserialize(path: pathlib.Path) -> jax.export.Exported:
            return jax.export.deserialize(bytearray(path.read_bytes()))

        vocabulary = read(artifact.VOCABULARY, read_npy)
        flat = read(artifact.PARAMS, read_npz)
        for name, file in artifact.SEPARATE_PARAMS.items():
            flat[name] = read(file, read_npy)
        arrays = dict(flat, **{artifact.VOCABULARY: vocabulary})
        user_vocabulary = None
        if manifest["user_features"]:
            user_vocabulary = arrays[artifact.USERS] = read(artifact.USERS, read_npy)
        # The manifest's shapes against the files (check_manifest tied them to num_items etc.).
        for name, shape in manifest["shapes"].items():
            have = list(np.shape(arrays[name])) if name in arrays else None
            if have != shape:
                raise artifact.ArtifactError(
                    f"{artifact.MANIFEST}: shapes[{name!r}] is {shape}, but the artifact holds "
                    f"{have}: the manifest was edited or the artifact is damaged"
                )
        exported = read(artifact.SERVING_FN, deserialize)
        encoder = read(artifact.ENCODE_FN, deserialize)
        # The functions' signatures against the manifest.
        for field, got, want in (
            ("top_k", exported.out_avals[0].shape[1], manifest["top_k"]),
            ("hidden_size", encoder.out_avals[0].shape[1] - 1, manifest["hidden_size"]),
            ("serving.inputs", len(exported.in_avals) - len(flat), 3),
        ):
            if got != want:
                raise artifact.ArtifactError(
                    f"{artifact.MANIFEST}: {field} is {want}, but {artifact.SERVING_FN} / "
                    f"{artifact.ENCODE_FN} give {got}: the manifest was edited or the artifact "
                    "is damaged"
                )
        _warn_on_version_difference(manifest)
        params = artifact.unflatten_params(flat)
        return cls(
            directory, manifest, vocabulary, params, exported, encoder, user_vocabulary, batch_size
        )

    @property
    def top_k(self) -> int:
        """The most items one history can get (fixed at export)."""
        return int(self.manifest["top_k"])

    @property
    def history_length(self) -> int:
        """The model reads a history's last this many known items (max_len - 1)."""
        return int(self.manifest["history_length"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

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
        flat = self._encode_arrays(histories, strict)
        if flat is not None:
            dense_rows, unknown, errors, examples = flat
        else:
            dense_rows, unknown, errors, examples = self._encode_each(histories, strict, labels)
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

    def _encode_arrays(
        self, histories: Sequence[Any], strict: bool
    ) -> tuple[list[np.ndarray], np.ndarray, list[str | None], list[Any]] | None:
        """`_encode_each`'s result in a few numpy calls, for histories that are all 1-D numpy
        arrays of the vocabulary's kind, or of Python strings (object arrays, as a Parquet
        string column gives them) for a string vocabulary: what the file readers and
        `workdir_users` give. None otherwise, and with strict when a history would be refused
        (`_encode_each` then raises the same error, naming the first one)."""
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

    def _encode_each(
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

    def _batches(
        self, histories: Sequence[np.ndarray] | np.ndarray, users: np.ndarray | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(history [size, w], users [size], rows) per batch, padded to powers of two.

        Rows go shortest first: the exported encoder reads a window as wide as the batch's
        history (up to max_len - 1), so a batch of short histories costs what they are long.
        """
        n = len(histories)
        users = np.zeros(n, np.int32) if users is None else np.asarray(users, np.int32)
        if isinstance(histories, np.ndarray):
            lengths = np.count_nonzero(histories, axis=1)
        else:
            lengths = np.fromiter((len(h) for h in histories), np.int64, n)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            size = min(sharding.pow2(len(rows)), self.batch_size)
            batch_users = np.zeros(size, np.int32)
            batch_users[: len(rows)] = users[rows]
            chunk = [histories[i] for i in rows]
            yield _padded(chunk, size), batch_users, rows

    def run(
        self,
        histories: Sequence[np.ndarray] | np.ndarray,
        users: np.ndarray | None = None,
        exclude_seen: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exported function on encoded histories, in batches.

        Args:
          histories: per history, int32 dense ids, oldest first (whole; 0 = padding), as a list
            of arrays or a padded [n, s] array.
          users: int32 [n] user rows (default: all unknown).
          exclude_seen: drop each row's own items.

        Returns:
          (dense ids int32 [n, top_k], scores float32 [n, top_k]); excluded items score -inf
          and come last, only in rows with fewer than top_k other items.
        """
        return self._gather(self._dispatch(histories, users, exclude_seen), len(histories))

    def _dispatch(
        self,
        histories: Sequence[np.ndarray] | np.ndarray,
        users: np.ndarray | None,
        exclude_seen: bool,
    ) -> list[tuple[Any, np.ndarray]]:
        """Starts `run`'s batches without waiting for their results: jax runs them on its own
        threads while the caller goes on (a job reads, maps ids and writes meanwhile);
        `_gather` waits for them."""
        pending = []
        for history, batch_users, rows in self._batches(histories, users):
            exclude = np.full(len(batch_users), bool(exclude_seen))
            pending.append((self._serve(self._params, history, batch_users, exclude), rows))
        return pending

    def _gather(
        self, pending: list[tuple[Any, np.ndarray]], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`run`'s result from `_dispatch`'s batches of n histories (waiting for them)."""
        ids = np.zeros((n, self.top_k), np.int32)
        scores = np.zeros((n, self.top_k), np.float32)
        for (batch_ids, batch_scores), rows in pending:
            ids[rows] = np.asarray(batch_ids)[: len(rows)]
            scores[rows] = np.asarray(batch_scores)[: len(rows)]
        return ids, scores

    def user_vectors(
        self, histories: Sequence[np.ndarray] | np.ndarray, users: np.ndarray | None = None
    ) -> np.ndarray:
        """float32 [n, hidden + 1]: the exported encode function on encoded histories.

        Dotted with `item_vectors()` they give the model's scores (the output bias is the last
        coordinate, 1 on the user side).
        """
        out = np.zeros((len(histories), int(self.manifest["hidden_size"]) + 1), np.float32)
        for history, batch_users, rows in self._batches(histories, users):
            out[rows] = np.asarray(self._encode(self._params, history, batch_users))[: len(rows)]
        return out

    def item_vectors(self) -> np.ndarray:
        """float32 [num_items, hidden + 1]: row j is dense item j + 1's [embedding, output bias]."""
        table, bias = self._flat_item_table
        return np.concatenate(
            [table[1 : self.num_items + 1], bias[1 : self.num_items + 1, None]], 1
        )

    def recommend(
        self,
        histories: Sequence[Sequence[Any]],
        k: int = 10,
        *,
        users: Sequence[Any] | None = None,
        exclude_seen: bool = True,
        strict: bool = False,
        labels: Sequence[str] | None = None,
    ) -> Recommendations:
        """The k best items for each history.

        Args:
          histories: per user, raw item ids (ints or strings), oldest first, whole.
          k: items per history, at most the exported top_k.
          users: per history, the raw user id (models with user features read it).
          exclude_seen: never return an item of the history (all of it: the exported function
            excludes every item it is given).
          strict: refuse the first unknown id (UnknownItemError) or empty history
            (EmptyHistoryError) instead of reporting them per history.
          labels: names of the histories in error messages.

        Returns:
          Per history, [(raw id, score)] best first; `.errors` says which histories got nothing
          and why, `.unknown_ids` counts skipped ids.

        Raises:
          ValueError: k out of range; with strict, UnknownItemError or EmptyHistoryError.
        """
        self._check_k(k)
        encoded = self.encode(histories, users=users, strict=strict, labels=labels)
        return self._recommendations(encoded, self._start(encoded, exclude_seen), k)

    def _start(self, encoded: EncodedHistories, exclude_seen: bool) -> list[tuple[Any, Any]]:
        """`_dispatch` for the histories of `encoded` that can be served."""
        served = [i for i, e in enumerate(encoded.errors) if e is None]
        return self._dispatch(
            [encoded.histories[i] for i in served], encoded.users[served], exclude_seen
        )

    def _recommendations(
        self, encoded: EncodedHistories, pending: list[tuple[Any, Any]], k: int
    ) -> Recommendations:
        """`recommend`'s result from `_start`'s batches (waiting for them)."""
        served = [i for i, e in enumerate(encoded.errors) if e is None]
        ids, scores = self._gather(pending, len(served))  # [served, top_k] each
        raw = self.vocabulary[ids[:, :k]].tolist()  # [served][k]
        top = scores[:, :k]  # [served, k]
        # -inf marks excluded items: only rows that ran out of other items reach them.
        counts = np.count_nonzero(~np.isneginf(top), axis=1).tolist()
        top_scores = top.tolist()
        items: list[list[tuple[Any, float]]] = [[] for _ in encoded.errors]
        for row, i in enumerate(served):
            n = counts[row]
            items[i] = list(zip(raw[row][:n], top_scores[row][:n], strict=True))
        return Recommendations(
            tuple(items), tuple(encoded.unknown_ids.tolist()), tuple(encoded.errors)
        )

    def _check_k(self, k: int) -> None:
        if not isinstance(k, int | np.integer) or not 1 <= k <= self.top_k:
            more = (
                f"export again with --top_k={k} for more"
                if isinstance(k, int | np.integer) and self.top_k < k <= self.num_items
                else f"the model has {self.num_items} items"
            )
            raise ValueError(
                f"k={k}: must be in 1..{self.top_k}, the top_k this model was exported with "
                f"({more})"
            )


def _warn_on_version_difference(manifest: dict[str, Any]) -> None:
    """Logs a warning when the libraries that exported differ from the running ones."""
    import importlib.metadata

    differ = []
    for package, exported in sorted(manifest.get("versions", {}).items()):
        if package == "tensorflow":
            continue  # only the SavedModel's readers need it
        try:
            running = jax.__version__ if package == "jax" else importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            running = "not installed"
        if running != exported:
            differ.append(f"{package} {exported} (running {running})")
    if differ:
        logging.warning(
            "The artifact was exported with %s; it should still load (jax.export keeps "
            "compatibility for 6 months), but export again if results look off",
            ", ".join(differ),
        )


# ---------------------------------------------------------------------------------------------
# Jobs over many users: streamed readers, writers and a progress bar
# ---------------------------------------------------------------------------------------------

# One user to serve: (raw user id, history of raw item ids, label for messages).
Record = tuple[Any, Sequence[Any], str]


def input_kind(path: pathlib.Path, input_format: str = "auto") -> str:
    """ "jsonl", "csv" (histories) or "interactions", by `input_format` or the extension."""
    if input_format != "auto":
        if input_format not in ("jsonl", "csv", "interactions"):
            raise ValueError(
                f"input_format={input_format!r}: expected auto, jsonl, csv or interactions"
            )
        return input_format
    suffix = path.suffix.lower()
    if suffix in JSON_LINES_SUFFIXES:
        return "jsonl"
    if suffix == ".parquet":
        return "interactions"
    return "csv"


def _count_lines(path: pathlib.Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def input_size(path: pathlib.Path, kind: str) -> int:
    """The progress bar's total for an input: lines of text, rows of Parquet."""
    if kind == "interactions" and path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return _count_lines(path)


def iter_histories(path: pathlib.Path, kind: str) -> Iterator[tuple[Record, int]]:
    """Streams a JSON-lines or CSV file of histories: ((user, history, label), lines read).

    Raises:
      InputFileError: naming the file and line of a malformed line.
    """
    with open(path, newline="", encoding="utf-8") as f:
        if kind == "jsonl":
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputFileError(f"{where}: not valid JSON ({e})") from e
                if not isinstance(record, dict) or not isinstance(record.get("history"), list):
                    raise InputFileError(
                        f'{where}: expected an object with a "history" list, e.g. '
                        '{"user": "u1", "history": [12, 7]}'
                    )
                user = record.get("user")
                yield (user, record["history"], f"{where} (user {user!r})"), number
        else:
            reader = csv.reader(f)
            for row in reader:
                fields = [field.strip() for field in row]
                if not any(fields):
                    continue
                number = reader.line_num
                yield (
                    (
                        fields[0],
                        [x for x in fields[1:] if x],
                        f"{path}:{number} (user {fields[0]!r})",
                    ),
                    number,
                )


def read_histories(path: pathlib.Path, input_format: str = "auto") -> tuple[list, list, list]:
    """Reads a whole JSON-lines or CSV file of histories (formats in the module docstring).

    Returns:
      (users, histories, labels "<file>:<line> (user ...)"), one entry per non-blank line.
    """
    kind = input_kind(path, input_format)
    if kind == "interactions":
        raise ValueError(f"{path}: read_histories reads histories; use iter_interactions")
    records = [record for record, _ in iter_histories(path, kind)]
    return [r[0] for r in records], [r[1] for r in records], [r[2] for r in records]


def iter_interactions(
    path: pathlib.Path,
    user_column: str = "user",
    item_column: str = "item",
    timestamp_column: str | None = "timestamp",
    batch_rows: int = 1 << 16,
) -> Iterator[tuple[Record, int]]:
    """Streams an interactions table (Parquet, or CSV with a header), grouped by user.

    Yields ((user, history, label), rows read) per run of rows of one user; a user's items are
    ordered by the timestamp column when the file has it (stable: ties keep file order).

    Raises:
      InputFileError: naming the file and the column that is missing.
    """
    import pyarrow as pa

    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        source = pq.ParquetFile(path)
        names = source.schema_arrow.names
        columns = [c for c in (user_column, item_column, timestamp_column) if c in names]
        batches: Iterable[pa.RecordBatch] = source.iter_batches(
            batch_size=batch_rows, columns=columns
        )
    else:
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 22))
        names = reader.schema.names
        batches = reader
    for column in (user_column, item_column):
        if column not in names:
            raise InputFileError(
                f"{path}: no column {column!r} (columns: {names}); name them with "
                "--user_column / --item_column"
            )
    with_time = timestamp_column is not None and timestamp_column in names
    rows_read = 0
    user: Any = None
    items: list[np.ndarray] = []
    times: list[np.ndarray] = []
    out_of_order = False
    first_row = 0

    def record() -> Record:
        # A user inside one batch is a slice of it; only rows out of time order need a sort.
        history = items[0] if len(items) == 1 else np.concatenate(items)
        if with_time and (len(items) > 1 or out_of_order):
            history = history[np.argsort(np.concatenate(times), kind="stable")]
        return user, history, f"{path}: rows {first_row + 1}.. (user {user!r})"

    for batch in batches:
        if not batch.num_rows:
            continue
        users = batch.column(user_column).to_numpy(zero_copy_only=False)
        batch_items = batch.column(item_column).to_numpy(zero_copy_only=False)
        batch_times = (
            batch.column(timestamp_column).to_numpy(zero_copy_only=False) if with_time else None
        )
        # Where the user changes inside the batch (and whether it continues the last one).
        starts = np.flatnonzero(users[1:] != users[:-1]) + 1
        firsts = np.concatenate([[0], starts])  # [runs]
        lasts = np.append(starts, len(users))  # [runs]
        run_users = users[firsts].tolist()  # Python ints or the column's objects
        if with_time:
            # Rows earlier in time than the row before them (or not comparable, like NaN):
            # a run holding one needs sorting, the others are in time order already.
            late = np.flatnonzero(~(batch_times[1:] >= batch_times[:-1])) + 1
            unsorted = (
                np.searchsorted(late, lasts) - np.searchsorted(late, firsts, side="right") > 0
            ).tolist()
        for lo, hi, u, run_unsorted in zip(
            firsts.tolist(),
            lasts.tolist(),
            run_users,
            unsorted if with_time else [False] * len(run_users),
            strict=True,
        ):
            if items and u != user:
                yield record(), rows_read + lo
                items, times, out_of_order = [], [], False
            if not items:
                user, first_row = u, rows_read + lo
            items.append(batch_items[lo:hi])
            out_of_order = out_of_order or run_unsorted
            if with_time:
                times.append(batch_times[lo:hi])
        rows_read += len(users)
    if items:
        yield record(), rows_read


class Progress:
    """A progress bar on stderr: a redrawn line on a terminal, plain lines every 10 s otherwise
    (a log file gets no carriage returns or escape codes)."""

    def __init__(self, total: int | None, unit: str, stream: TextIO | None = None):
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, done: int, users: int, final: bool = False) -> None:
        """Shows `done` of `total` input units read and `users` users served so far."""
        now = time.monotonic()
        if not final and now - self._last < (0.5 if self.tty else 10.0):
            return
        if not final and not self.tty and self.total and done >= self.total:
            return  # the final line follows at once; a log gets it only once
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        text = f"{users:,} users, {users / elapsed:,.0f}/s"
        if self.total:
            fraction = min(done / self.total, 1.0)
            eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
            bar = "#" * int(30 * fraction)
            eta_text = "" if final or eta != eta else f" ETA {_clock(eta)}"
            text = (
                f"[{bar:<30}] {fraction:4.0%} {done:,}/{self.total:,} {self.unit}, {text}, "
                f"{_clock(elapsed)}{eta_text}"
            )
        else:
            text = f"{done:,} {self.unit}, {text}, {_clock(elapsed)}"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class OutputWriter:
    """Writes recommendation rows as JSON lines or Parquet (by the path's extension), chunk by
    chunk: user, items, scores, unknown_ids, error."""

    def __init__(self, path: str, item_dtype: np.dtype):
        self.path = path
        self.parquet = path != "-" and pathlib.Path(path).suffix.lower() == ".parquet"
        self._writer = None
        self._schema = None
        self._item_type = item_dtype
        if self.parquet:
            self._file = None
        elif path == "-":
            self._file = sys.stdout
        else:
            self._file = open(path, "w", encoding="utf-8")
        self.rows = 0

    def write(self, users: Sequence[Any], result: Recommendations) -> None:
        self.rows += len(users)
        if not self.parquet:
            lines = []
            for user, pairs, unknown, error in zip(
                users, result.items, result.unknown_ids, result.errors, strict=True
            ):
                line = {
                    "user": user,
                    "recommendations": [{"item": item, "score": score} for item, score in pairs],
                    "unknown_ids": unknown,
                }
                if error is not None:
                    line["error"] = error
                lines.append(json.dumps(line) + "\n")
            self._file.write("".join(lines))
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._schema is None:
            user_type = pa.array(list(users)).type if users else pa.string()
            if not (pa.types.is_integer(user_type) or pa.types.is_string(user_type)):
                user_type = pa.string()
            item_type = pa.string() if self._item_type.kind in "US" else pa.int64()
            self._schema = pa.schema(
                [
                    ("user", user_type),
                    ("items", pa.list_(item_type)),
                    ("scores", pa.list_(pa.float32())),
                    ("unknown_ids", pa.int64()),
                    ("error", pa.string()),
                ]
            )
            self._writer = pq.ParquetWriter(self.path, self._schema)
        user_type = self._schema.field("user").type
        if pa.types.is_string(user_type):
            users = [u if isinstance(u, str) or u is None else json.dumps(u) for u in users]
        try:
            user_column = pa.array(list(users), user_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise InputFileError(
                f"users of type {user_type} came first, then {users[:3]}...: a Parquet column "
                f"holds one type; write JSON lines instead ({e})"
            ) from e
        table = pa.table(
            [
                user_column,
                pa.array([[item for item, _ in pairs] for pairs in result.items],
                         self._schema.field("items").type),
                pa.array([[score for _, score in pairs] for pairs in result.items],
                         self._schema.field("scores").type),
                pa.array(result.unknown_ids, pa.int64()),
                pa.array(result.errors, pa.string()),
            ],
            schema=self._schema,
        )  # fmt: skip
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()


@dataclasses.dataclass
class JobSummary:
    """Counts of a job over many users."""

    users: int = 0
    served: int = 0
    unknown_ids: int = 0
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0

    def text(self) -> str:
        failed = sum(self.errors.values())
        why = ", ".join(f"{n:,} {error}" for error, n in sorted(self.errors.items()))
        return (
            f"{self.users:,} users: {self.served:,} served, {failed:,} without recommendations"
            + (f" ({why})" if why else "")
            + f"; {self.unknown_ids:,} unknown item ids skipped; "
            f"{self.users / max(self.seconds, 1e-9):,.0f} users/s"
        )


def recommend_all(
    recommender: Recommender,
    records: Iterable[tuple[Record, int]],
    writer: OutputWriter,
    k: int,
    *,
    exclude_seen: bool = True,
    strict: bool = False,
    chunk_users: int = DEFAULT_CHUNK_USERS,
    progress: Progress | None = None,
) -> JobSummary:
    """Serves a stream of users chunk by chunk, writing each chunk before reading the next.

    Args:
      recommender: the model.
      records: ((raw user id, history, label), input units read so far) per user.
      writer: where the rows go, one per user in order.
      k: items per user.
      exclude_seen: never return an item of the history.
      strict: stop at the first unknown id or empty history (raising, naming it).
      chunk_users: users per chunk: memory holds one chunk.
      progress: shown after each chunk.

    Returns:
      The job's counts.
    """
    recommender._check_k(k)
    summary = JobSummary()
    start = time.monotonic()
    chunk: list[Record] = []
    done = 0
    # A chunk whose batches run while the next chunk is read and mapped and this one's rows
    # are written: the model (on jax's threads) and that Python work overlap, and the model
    # does not wait between chunks. The results are `recommend`'s, chunk by chunk.
    in_flight: tuple[list[Any], EncodedHistories, list[Any], int] | None = None

    def begin(chunk: list[Record], done: int) -> tuple[list[Any], EncodedHistories, list, int]:
        users = [r[0] for r in chunk]
        encoded = recommender.encode(
            [r[1] for r in chunk], users=users, strict=strict, labels=[r[2] for r in chunk]
        )
        return users, encoded, recommender._start(encoded, exclude_seen), done

    def finish(flight: tuple[list[Any], EncodedHistories, list, int]) -> None:
        users, encoded, pending, done = flight
        result = recommender._recommendations(encoded, pending, k)
        writer.write(users, result)
        summary.users += len(users)
        summary.served += len(users) - result.num_failed
        summary.unknown_ids += result.num_unknown
        summary.errors.update(e for e in result.errors if e is not None)
        if progress is not None:
            progress.update(done, summary.users)

    def advance(chunk: list[Record], done: int) -> None:
        nonlocal in_flight
        started = begin(chunk, done)
        flight, in_flight = in_flight, None
        if flight is not None:
            finish(flight)
        in_flight = started

    try:
        for record, done in records:
            chunk.append(record)
            if len(chunk) >= chunk_users:
                advance(chunk, done)
                chunk = []
        if chunk:
            advance(chunk, done)
    except Exception:
        # A bad line or (strict) a bad user: the users before it are written, as when
        # chunks ran one after the other.
        flight, in_flight = in_flight, None
        if flight is not None:
            finish(flight)
        raise
    if in_flight is not None:
        finish(in_flight)
    summary.seconds = time.monotonic() - start
    if progress is not None:
        progress.update(done, summary.users, final=True)
    return summary


def workdir_users(
    workdir: str, data_dir: str | None = None
) -> tuple[Iterator[tuple[Record, int]], int]:
    """Every user of a training run's corpus, whole sequences as raw ids: (records, users)."""
    from bert4rec_jax import experiment  # the data sets: only here
    from bert4rec_jax import workdir as workdir_lib

    _, config = workdir_lib.open_run(workdir, data_dir=data_dir)
    corpus = experiment.Experiment.from_config(config).corpus

    def records() -> Iterator[tuple[Record, int]]:
        raw_items = corpus.raw_item_ids
        for u in range(corpus.num_users):
            user = corpus.raw_user_ids[u].item()
            yield (user, raw_items[corpus.sequence(u)], f"{workdir} user {user!r}"), u + 1

    return records(), corpus.num_users


def format_table(pairs: list[tuple[Any, float]]) -> str:
    """Ranked (raw id, score) pairs as an aligned table."""
    width = max([len("item")] + [len(str(item)) for item, _ in pairs])
    lines = [f"{'rank':>4}  {'item':<{width}}  score"]
    lines += [
        f"{rank:>4}  {str(item):<{width}}  {score:.4f}"
        for rank, (item, score) in enumerate(pairs, 1)
    ]
    return "\n".join(lines)


def define_flags() -> None:
    """The command line's flags (defined only when this module runs as the program)."""
    flags.DEFINE_string("model", None, "An export directory (python -m bert4rec_jax.export).")
    flags.DEFINE_list("history", None, "One history: raw item ids, oldest first, comma-separated.")
    flags.DEFINE_string("user", None, "With --history: the raw user id (user-feature models).")
    flags.DEFINE_string("input", None, "A file of users (JSON lines, CSV, Parquet; see --help).")
    flags.DEFINE_string("workdir", None, "With --all_users: a training run whose users to serve.")
    flags.DEFINE_bool("all_users", False, "Serve every user of --workdir's corpus.")
    flags.DEFINE_string("data_dir", None, "With --workdir: override the run's config.data_dir.")
    flags.DEFINE_string("output", "-", "Where the rows go: .parquet, else JSON lines; - = stdout.")
    flags.DEFINE_enum(
        "input_format", "auto", ["auto", "csv", "jsonl", "interactions"], "How --input is read."
    )
    flags.DEFINE_string("user_column", "user", "Interactions: the user id column.")
    flags.DEFINE_string("item_column", "item", "Interactions: the item id column.")
    flags.DEFINE_string("timestamp_column", "timestamp", "Interactions: orders a user's rows.")
    flags.DEFINE_integer("k", 10, "Items per history (at most the exported top_k).")
    flags.DEFINE_bool("exclude_seen", True, "Never recommend an item of the history.")
    flags.DEFINE_bool(
        "strict", False, "Stop at the first unknown item id or empty history (exit 1)."
    )
    flags.DEFINE_integer("batch_size", DEFAULT_BATCH_SIZE, "Histories run at once.")
    flags.DEFINE_integer("chunk_users", DEFAULT_CHUNK_USERS, "Users read and written at once.")
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
    flags.mark_flags_as_required(["model"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    sources = [f.history is not None, f.input is not None, f.all_users]
    if sum(sources) != 1:
        raise app.UsageError("give exactly one of --history, --input and --workdir --all_users")
    if f.all_users != (f.workdir is not None):
        raise app.UsageError("--all_users and --workdir go together")
    writer = None
    try:
        recommender = Recommender.load(f.model, batch_size=f.batch_size)
        if f.history is not None:
            result = recommender.recommend(
                [f.history],
                f.k,
                users=None if f.user is None else [f.user],
                exclude_seen=f.exclude_seen,
                strict=f.strict,
                labels=["--history"],
            )
            if result.errors[0] is not None:
                sys.exit(f"error: --history has {result.errors[0]}: nothing to recommend from")
            print(format_table(result[0]))
            return
        if f.all_users:
            records, total = workdir_users(f.workdir, f.data_dir)
            unit = "users"
        else:
            path = pathlib.Path(f.input)
            kind = input_kind(path, f.input_format)
            total = input_size(path, kind)
            if kind == "interactions":
                records = iter_interactions(
                    path, f.user_column, f.item_column, f.timestamp_column or None
                )
                unit = "rows"
            else:
                records = iter_histories(path, kind)
                unit = "lines"
        writer = OutputWriter(f.output, recommender.vocabulary.dtype)
        summary = recommend_all(
            recommender,
            records,
            writer,
            f.k,
            exclude_seen=f.exclude_seen,
            strict=f.strict,
            chunk_users=f.chunk_users,
            progress=Progress(total, unit) if f.progress else None,
        )
        writer.close()
    except (ValueError, TypeError, OSError) as e:  # ArtifactError and ours are ValueErrors
        if writer is not None:
            writer.close()
        sys.exit(f"error: {e}")
    print(summary.text(), file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
