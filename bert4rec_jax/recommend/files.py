"""The job's files: histories (JSON lines, CSV) and interaction tables in, rows out, streamed."""

from __future__ import annotations

import csv
import json
import pathlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from bert4rec_jax.recommend.recommender import Recommendations

JSON_LINES_SUFFIXES = (".jsonl", ".json", ".ndjson")


class InputFileError(ValueError):
    """A line of an input file cannot be read as a history."""


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
