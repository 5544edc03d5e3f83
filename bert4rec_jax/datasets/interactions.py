"""Reads your own interaction log (CSV, TSV, Parquet or the paper's format) into sequences.

One row per interaction; `file_options.FileOptions` names the user, item and optional timestamp
columns. The log is one file or a directory (or glob) of part files (`parts.list_parts`), read
as one stream of record batches in two passes, so memory follows the result rather than the
log: the first pass gathers the distinct ids and each user's row count, the second writes each
interaction's item straight into its user's slots (`ordering.Layout`). The result,
`EncodedSequences`, holds each user's items in order as indices into two sorted vocabularies of
raw ids, so a string id is stored once, not once per interaction. The rules (ids, timestamps,
order, duplicates, filters, errors) are in `read_sequences`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from absl import logging
from etils import epath

from bert4rec_jax import progress
from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets import file_options, ordering, readers
from bert4rec_jax.datasets import parts as parts_lib
from bert4rec_jax.datasets.file_options import FileOptions

# Canonical non-negative integers that fit int64 with room to spare (as readers._MAX_DIGITS).
_INTEGER_ID = r"^(0|[1-9][0-9]{0,17})$"
# pyarrow's CSV block size: each block is parsed by one thread; 16 MiB keeps both cores busy on
# a few-hundred-MB file while the per-block dictionaries stay small.
_CSV_BLOCK_BYTES = 16 << 20
# Rows per record batch of Parquet and paper-format parts: large enough that numpy's per-call
# costs vanish, small enough that a batch's buffers (~50 MB) are nothing next to the result.
_BATCH_ROWS = 1 << 20
# Integer ids below this are counted in a table indexed by the id (the common case: ids from
# 1 to the number of users or items; 256 MB at most); larger ones by hashing.
_DENSE_IDS = 1 << 25
# Seconds between progress lines in a log (a terminal's line is redrawn twice a second).
_PROGRESS_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSequences:
    """Per-user sequences whose ids are indices into sorted vocabularies of raw ids.

    Attributes:
      sequences: `raw_user_ids` index `user_ids`, `raw_items` (int32) index `item_ids`; users
        in ascending order (= ascending raw id), each user's items oldest first.
      user_ids: [num_user_ids], int64 or object (str), sorted and unique.
      item_ids: [num_item_ids], int64 or object (str), sorted and unique. Items that the filters
        removed stay in the vocabulary (no sequence uses them).
    """

    sequences: readers.Sequences
    user_ids: np.ndarray
    item_ids: np.ndarray


def read_sequences(options: FileOptions) -> EncodedSequences:
    """Reads, orders and filters an interaction log: one file or a directory of part files.

    Parts: a directory's or glob's part files (`parts.list_parts`: hidden and `_` files
    skipped) are read one after another in the order of their paths, which is the "file
    order" below; every part must have the columns read, with the same types (Parquet). Hive
    partition values in a part's path (`date=2026-11-30/`) are columns like the file's own,
    read as text (so "2026-11-30" is a timestamp and "17" an integer id, as in a CSV file); the
    path's value wins over a column of the file of the same name, as in Hive.
    Splitting a file's rows into parts gives the same result whenever rows that tie (same
    user and timestamp) keep their order: consecutive ranges of rows, or partitions by any
    column, each part keeping its rows' order. Errors name the part file.

    Ids: a column whose values are all non-negative decimal integers without leading zeros (up
    to 18 digits) holds integer ids; any other column holds string ids (surrounding whitespace
    is stripped, so "7" and " 7" are one id; "007" and "7" are two), of at most
    `corpus.MAX_RAW_ID_BYTES` (64 KiB) of UTF-8 each: a longer one is refused, naming its line.
    Parquet integer columns are integer ids, Parquet string columns string ids. An empty or
    missing id is an error, as is a negative integer id (-1 stands for padding in
    `Corpus.raw_item_ids`). (`_Vocabulary`.)

    Timestamps: integers or floats (e.g. unix seconds), ISO-8601 strings ("2015-03-31",
    "2015-03-31T06:40:02", with or without a zone such as "Z" or "+02:00", but the same kind in
    the whole column), or Parquet timestamp/date columns; they order each user's interactions
    (`_Times`) and are kept as float64 seconds (numbers taken as unix seconds, times and dates by
    their unit) for the temporal split.
    Each user's interactions are sorted by timestamp, ties kept in file order (a stable sort);
    without a timestamp column the file order is the order.

    Exact duplicates: rows with the same user, item and timestamp are counted in the loading
    summary, and a warning names their count and the first one's line; they usually come from a
    log exported or concatenated twice, and they double sequences and let users pass
    `min_user_interactions`. Without a timestamp column a duplicate cannot be told from a
    repeated interaction, so none is counted (`ordering.duplicates`).

    Filters, in this order, once each (not repeated until nothing changes): `drop_duplicates`
    keeps the first of each; `drop_repeats` drops an interaction with the same item as the
    user's previous one ("A A B A" -> "A B A"); `min_item_interactions` drops items with fewer
    interactions (counted after the step before) from every sequence; `min_user_interactions`
    drops users with fewer (counted after both), so every kept user has at least this many, while
    an item may end up with fewer than `min_item_interactions` once short users are gone.

    Reading: streamed by record batch, twice (ids, then interactions), a line of progress on
    stderr when it takes a while. CSV/TSV by pyarrow's streaming multi-threaded reader, the ids
    read as bytes and only their distinct values decoded; Parquet by `pyarrow.parquet`, column
    by column (string ids read as dictionaries); the paper's format by `readers.read_int_table`.
    Memory: 4 bytes per interaction for the items, 8 more for the timestamps, the vocabularies,
    and buffers of a few batches.

    Args:
      options: the log and how to read it.

    Returns:
      The sequences with their vocabularies.

    Raises:
      readers.DataFormatError: a missing, empty or malformed file or part, a missing column, a
        part whose column types differ from the first part's, an unparsable id or timestamp, or
        no user left after filtering; naming the file (or part), the line (CSV/TSV/paper:
        physical lines, blank lines included; a quoted value that spans lines shifts the count)
        or the row group (Parquet) and the column.
      ValueError: a configuration mistake (an unknown format, a column that is not in
        `columns`), naming the `file.*` field.
    """
    found = parts_lib.list_parts(options.path)
    fmt = options.resolved_format
    source_cls = {"paper": _PaperSource, "parquet": _ParquetSource}.get(fmt, _CsvSource)
    source = source_cls(found, options)
    users = _Vocabulary("user", source.columns["user"], count=True)
    items = _Vocabulary("item", source.columns["item"], count=False)
    num_rows = 0
    with contextlib.closing(source.stream(["user", "item"], "pass 1 of 2, ids")) as batches:
        for batch in batches:
            users.observe(batch)
            items.observe(batch)
            num_rows += batch.num_rows
    if num_rows == 0:
        raise readers.DataFormatError(
            options.path,
            None,
            "file is empty (no interactions)"
            if source.single
            else f"no interactions in any of its {len(found)} part files",
        )
    users.finish()
    items.finish()
    layout, seconds_per_unit = _placed(source, users, items)
    filters = ordering.Filters(
        drop_duplicates=options.drop_duplicates,
        drop_repeats=options.drop_repeats,
        min_item_interactions=options.min_item_interactions,
        min_user_interactions=options.min_user_interactions,
    )
    ordered = ordering.order_and_filter(layout, filters, len(items.ids))
    del layout
    counts, name = ordered.counts, options.path
    if "exact duplicates" in counts:
        logging.warning(
            "%s: %d exact duplicate rows (same user, item and timestamp), the first at %s; %s",
            name,
            counts["exact duplicates"],
            _first_duplicate(source, users, ordered.duplicate_slots),
            "dropped (file.drop_duplicates)"
            if options.drop_duplicates
            else "kept; set file.drop_duplicates=True to drop them",
        )
    sequences = ordered.sequences
    if sequences.timestamps is not None:
        # Seconds for the temporal split's cut-offs; float64 keeps each user's order (a
        # monotone map) and whole seconds exactly. In place when the unit is seconds already.
        seconds = sequences.timestamps.astype(np.float64, copy=False)
        if seconds_per_unit != 1.0:
            seconds = seconds * seconds_per_unit
        sequences = dataclasses.replace(sequences, timestamps=seconds)
    if sequences.num_users == 0:
        steps = ", ".join(f"{n} {what}" for what, n in counts.items())
        raise readers.DataFormatError(
            name,
            None,
            f"no user left after filtering: no user has at least "
            f"{options.min_user_interactions} interactions (file.min_user_interactions; "
            f"{steps})",
        )
    logging.info(
        "Read %s: %s; kept %d users with >= %d interactions, %d interactions",
        name,
        ", ".join(f"{n} {what}" for what, n in counts.items()),
        sequences.num_users,
        options.min_user_interactions,
        sequences.offsets[-1],
    )
    return EncodedSequences(sequences, users.ids, items.ids)


class _Changed(Exception):
    """The second pass met rows that the first did not count."""


def _changed(source: _Source) -> readers.DataFormatError:
    what = "file" if source.single else "directory's parts"
    return readers.DataFormatError(
        source.options.path,
        None,
        f"the {what} changed while being read (the second pass met other rows than the "
        "first); read it again once nothing writes to it",
    )


def _placed(
    source: _Source, users: _Vocabulary, items: _Vocabulary
) -> tuple[ordering.Layout, float]:
    """Pass 2: every interaction into its user's slots, timestamps beside them; with the
    seconds per unit of the timestamps (`_Times.seconds_per_unit`)."""
    column = source.columns.get("time")
    roles = ["user", "item"] + (["time"] if column else [])
    text_kind = None
    while True:
        times = _Times(column, text_kind) if column else None
        layout = ordering.Layout(users.counts)
        try:
            label = "pass 2 of 2, interactions"
            with contextlib.closing(source.stream(roles, label)) as batches:
                for batch in batches:
                    stamps = None if times is None else times.convert(batch)
                    layout.place(users.codes(batch), items.codes(batch), stamps)
        except _TimeKindChanged as change:
            # Integers so far, then a decimal: the column holds numbers, as when one file is
            # read whole. Rare (a CSV whose first values happen to be whole): read it again.
            text_kind = change.kind
            logging.info("%s: column %r holds numbers; reading it again", source.name, column)
            continue
        except (ordering.LayoutOverflow, _Changed):
            raise _changed(source) from None
        if not layout.complete:
            raise _changed(source)
        return layout, 1.0 if times is None else times.seconds_per_unit


def _first_duplicate(source: _Source, users: _Vocabulary, slots: np.ndarray) -> str:
    """Where the first duplicate row (in file order) is: reads the user column once more,
    giving out the slots again until one of `slots` comes up."""
    layout = ordering.Layout(users.counts)
    with contextlib.closing(_prefetch(source.batches(["user"]))) as batches:
        for batch in batches:
            order, given = layout.positions(users.codes(batch))
            at = np.minimum(np.searchsorted(slots, given), len(slots) - 1)
            hit = slots[at] == given
            if hit.any():
                row = int((np.flatnonzero(hit) if order is None else order[hit]).min())
                line, where = batch.locate(batch.first_row + row)
                text = f"line {line}" if line is not None else where.rstrip(", :")
                return text if source.single else f"{text} of {batch.part.relative}"
    return "an unknown row"  # only if the log changed since it was read


# ---- Batches and formats ----------------------------------------------------------------------


# Where a row of a part is, for messages: row (0-based, in the part's order) -> (line, prefix).
_Locate = Callable[[int], tuple[int | None, str]]


@dataclasses.dataclass(frozen=True, eq=False)
class _Batch:
    """Consecutive rows of one part.

    Attributes:
      columns: role ("user", "item", "time") -> the column's values [rows].
      part: the part they come from.
      part_index: its place in file order.
      first_row: the first row's index in the part (0-based).
      locate: a row of the part -> where it is, for messages.
    """

    columns: dict[str, pa.Array]
    part: parts_lib.Part
    part_index: int
    first_row: int
    locate: _Locate

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values())))

    def fail(self, row: int, column: str, problem: str) -> readers.DataFormatError:
        """The error of `row` (in the batch) of `column`, naming the part, line or row."""
        line, where = self.locate(self.first_row + row)
        return readers.DataFormatError(self.part.name, line, f"{where}column {column!r}: {problem}")


class _Source:
    """The parts of a log in one format: checks before reading, then batches of their rows.

    Attributes:
      options: how to read.
      parts: the parts in file order.
      columns: role -> the column's name ("user", "item", and "time" with a timestamp).
      single: whether the log is one file (its errors keep their words: "file", not "part").
      total_rows: the rows of all parts when their metadata says so (Parquet), else None.
    """

    def __init__(self, found: list[parts_lib.Part], options: FileOptions):
        self.options = options
        self.parts = found
        self.single = len(found) == 1 and not found[0].relative
        self.columns = {"user": options.user_column, "item": options.item_column}
        if options.timestamp_column:
            self.columns["time"] = options.timestamp_column
        self.total_rows: int | None = None

    @property
    def name(self) -> str:
        return self.options.path

    def _part_batches(self, index: int, part: parts_lib.Part, roles: list[str]):
        raise NotImplementedError

    def batches(self, roles: list[str]) -> Iterator[_Batch]:
        """The rows of every part in file order, with the columns of `roles`."""
        for index, part in enumerate(self.parts):
            yield from self._part_batches(index, part, roles)

    def _file_columns(self, part: parts_lib.Part, roles: list[str]) -> list[str]:
        """The columns of `roles` read from the part's file: all but its partition keys (a key
        that is also a column of the file is taken from the path, as Hive does)."""
        return [self.columns[r] for r in roles if self.columns[r] not in part.partition]

    def _with_partition(
        self, part: parts_lib.Part, roles: list[str], read: dict[str, pa.Array], rows: int
    ) -> dict[str, pa.Array]:
        """`read` (column -> values) and the partition keys among `roles`, by role."""
        out = {}
        for role in roles:
            column = self.columns[role]
            if column in read:
                out[role] = read[column]
            else:  # one value for the whole part: a dictionary of one entry
                value = part.partition[column]
                indices = pa.nulls(rows, pa.int32()) if value is None else np.zeros(rows, np.int32)
                out[role] = pa.DictionaryArray.from_arrays(indices, pa.array([value], pa.string()))
        return out

    def _batches_of(
        self,
        records: Iterator[pa.RecordBatch],
        index: int,
        part: parts_lib.Part,
        roles: list[str],
        locate: _Locate,
    ) -> Iterator[_Batch]:
        """A part's record batches (of the columns of `roles` that its file holds) as batches."""
        first_row = 0
        for record in records:
            read = dict(zip(record.schema.names, record.columns, strict=True))
            rows = record.num_rows
            yield _Batch(
                self._with_partition(part, roles, read, rows), part, index, first_row, locate
            )
            first_row += rows

    def _no_column(self, part: parts_lib.Part, column: str, names: list[str], line=None):
        whose = "file's" if self.single else "part's"
        if line is not None:
            whose = "header's"
        keys = f" (partition keys: {', '.join(part.partition)})" if part.partition else ""
        return readers.DataFormatError(
            part.name,
            line,
            f"no column {column!r} ({_field_of(self.options, column)}); the {whose} columns "
            f"are: {', '.join(names)}{keys}",
        )

    def stream(self, roles: list[str], label: str) -> Iterator[_Batch]:
        """`batches`, read ahead in a thread, with a line of progress every few seconds."""
        counted_by_rows = self.total_rows is not None
        line = progress.ProgressLine(
            self.total_rows if counted_by_rows else len(self.parts),
            "rows" if counted_by_rows else "parts",
            log_every_s=_PROGRESS_EVERY_S,
            label=f"Reading {self.name} ({label})",
            delay_first=True,
        )
        rows, index = 0, 0

        def show(final: bool = False) -> None:
            parts_done = len(self.parts) if final else index
            done = rows if counted_by_rows else parts_done
            if line.due(done, final):
                speed = f"{rows / line.elapsed:,.0f} rows/s"
                detail = (
                    f"{parts_done}/{len(self.parts)} parts, {speed}"
                    if counted_by_rows
                    else f"{rows:,} rows, {speed}"
                )
                line.update(done, detail, final)

        with contextlib.closing(_prefetch(self.batches(roles))) as batches:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                index = batch.part_index
                yield batch
                rows += batch.num_rows
                show()
        if line.shown:
            show(final=True)


class _ParquetSource(_Source):
    """Parquet parts: every footer read first (columns, types, row groups), then the columns."""

    def __init__(self, found: list[parts_lib.Part], options: FileOptions):
        super().__init__(found, options)
        self._group_starts: list[np.ndarray] = []
        self.text_columns: set[str] = set()
        first_types: dict[str, tuple[str, parts_lib.Part]] = {}
        total = 0
        for part in found:
            try:
                with _opened(part.path) as source:
                    metadata = pq.ParquetFile(source).metadata
                schema = metadata.schema.to_arrow_schema()
            except (pa.ArrowException, OSError) as e:
                problem = f"cannot read as Parquet ({e})"
                raise readers.DataFormatError(part.name, None, problem) from e
            rows = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
            self._group_starts.append(np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]))
            total += metadata.num_rows
            if metadata.num_rows == 0:
                continue  # writers leave empty parts (a task without rows): nothing to check
            for role, column in self.columns.items():
                if column in part.partition:  # the path's value, as Hive reads it
                    kind = "text"
                elif column in schema.names:
                    kind = _type_class(schema.field(column).type)
                else:
                    raise self._no_column(part, column, schema.names)
                if kind == "text" and role != "time":
                    self.text_columns.add(column)  # string ids: read as dictionaries
                first = first_types.setdefault(column, (kind, part))
                if first[0] != kind:
                    raise readers.DataFormatError(
                        part.name,
                        None,
                        f"column {column!r} is {kind} here but {first[0]} in the first part, "
                        f"{first[1].relative}: every part must have the same column types",
                    )
        self.total_rows = total

    def _part_batches(self, index: int, part: parts_lib.Part, roles: list[str]):
        starts = self._group_starts[index]
        if starts[-1] == 0:
            return

        def locate(row: int) -> tuple[int | None, str]:
            group = int(np.searchsorted(starts, row, side="right")) - 1
            return None, f"row group {group}, row {row - starts[group]} (0-based), "

        columns = self._file_columns(part, roles)
        try:
            with _opened(part.path) as source:
                parquet = pq.ParquetFile(
                    source, read_dictionary=[c for c in columns if c in self.text_columns]
                )
                # A row group at a time: pyarrow pre-buffers (coalesces the reads of) every row
                # group it is asked for at once, which for one big file is the whole file.
                records = (
                    record
                    for group in range(parquet.metadata.num_row_groups)
                    for record in parquet.iter_batches(
                        batch_size=_BATCH_ROWS, row_groups=[group], columns=columns
                    )
                )
                yield from self._batches_of(records, index, part, roles, locate)
        except (pa.ArrowException, OSError) as e:
            raise readers.DataFormatError(part.name, None, f"cannot read as Parquet ({e})") from e


def _type_class(kind: pa.DataType) -> str:
    """A column type as the reader sees it: integer widths and string flavours are one class."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_floating(kind):
        return "floating point"
    if _is_text(kind):
        return "text"
    return str(kind)  # times and dates: the unit and zone count, as they set the order


class _CsvSource(_Source):
    """CSV/TSV parts: every header checked first, then streamed block by block."""

    def __init__(self, found: list[parts_lib.Part], options: FileOptions):
        super().__init__(found, options)
        self.names = options.column_names
        # TSV has no quoting convention (a quote is just a character); CSV quotes with '"'.
        self.quote = '"' if options.resolved_format == "csv" else False
        self.parse_options = pacsv.ParseOptions(
            delimiter=options.separator, quote_char=self.quote, ignore_empty_lines=True
        )
        if self.names is None:
            for part in found:
                with _unreadable_named(part):
                    header = _csv_header(part.path, options.separator, self.quote)
                if not header:
                    continue  # an empty part: nothing to read
                for column in self.columns.values():
                    if column not in header and column not in part.partition:
                        raise self._no_column(part, column, header, line=1)

    def _part_batches(self, index: int, part: parts_lib.Part, roles: list[str]):
        has_header = self.names is None
        read_options = pacsv.ReadOptions(
            use_threads=True, block_size=_CSV_BLOCK_BYTES, column_names=self.names
        )
        # Ids as bytes: the reader's cheapest conversion (no UTF-8 check, no number parsing);
        # `_Vocabulary` hashes them and decodes only the distinct ones. Timestamps as text,
        # parsed by `_Times` into the one kind that fits the whole column (block by block, the
        # reader's own type inference could give each block or part another one).
        columns = self._file_columns(part, roles)
        types = {self.columns["user"]: pa.binary(), self.columns["item"]: pa.binary()}
        if "time" in self.columns:
            types[self.columns["time"]] = pa.string()
        convert_options = pacsv.ConvertOptions(
            include_columns=columns,
            column_types={c: t for c, t in types.items() if c in columns},
            strings_can_be_null=False,
        )

        def locate(row: int) -> tuple[int | None, str]:
            return _physical_line(part.path, row + 1 + has_header), ""

        try:
            with _opened(part.path) as source:
                reader = pacsv.open_csv(
                    source,
                    read_options=read_options,
                    parse_options=self.parse_options,
                    convert_options=convert_options,
                )
                yield from self._batches_of(reader, index, part, roles, locate)
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):
                return
            raise _csv_error_with_line(
                part.path, part.name, e, read_options, self.parse_options, convert_options
            ) from e
        except OSError as e:  # e.g. a compressed part cut short
            raise readers.DataFormatError(part.name, None, f"cannot read ({e})") from e


class _PaperSource(_Source):
    """Paper-format parts (`<user> <item>` lines), each parsed whole by `readers.read_int_table`."""

    def __init__(self, found: list[parts_lib.Part], options: FileOptions):
        super().__init__(found, options)
        self.columns = {"user": "user", "item": "item"}  # the format's columns have no names

    def _part_batches(self, index: int, part: parts_lib.Part, roles: list[str]):
        with _unreadable_named(part), _opened(part.path) as source, _binary(source) as f:
            table = readers.read_int_table(f, num_columns=2, name=part.name)  # [rows, 2]

        def locate(row: int) -> tuple[int | None, str]:
            return None, f"row {row + 1}: "

        for start in range(0, len(table), _BATCH_ROWS):
            block = table[start : start + _BATCH_ROWS]
            read = {"user": pa.array(block[:, 0]), "item": pa.array(block[:, 1])}
            yield _Batch({r: read[r] for r in roles}, part, index, start, locate)


@contextlib.contextmanager
def _unreadable_named(part: parts_lib.Part):
    """Turns an unreadable part (a compressed stream cut short, a permission) into an error
    naming it."""
    try:
        yield
    except OSError as e:
        raise readers.DataFormatError(part.name, None, f"cannot read ({e})") from e


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def _prefetch(batches: Iterator, depth: int = 2) -> Iterator:
    """`batches`, produced in a thread `depth` items ahead: pyarrow decodes the next batch (its
    work releases the GIL) while numpy encodes and places the current one."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        """Hands `item` over, waiting for room; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not put(item):
                    return
            item = end
        except BaseException as e:  # handed to the consumer, raised there
            item = _Raised(e)
        finally:
            if stop.is_set() and hasattr(batches, "close"):
                batches.close()  # closes the part being read
        put(item)

    thread = threading.Thread(target=produce, name="interactions-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is end:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


# ---- Ids and timestamps -----------------------------------------------------------------------


def _first_index(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _is_text(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _first_null(column: pa.Array) -> int:
    return _first_index(pc.is_null(column).to_numpy(zero_copy_only=False))


def _canonical_integers(column: pa.Array) -> np.ndarray | None:
    """A text column's values as int64 when every one is a canonical integer (`_INTEGER_ID`:
    no sign, space or leading zero, at most 18 digits), else None. A parse and a look at each
    value's first byte: several times cheaper than hashing the text."""
    if not pa.types.is_binary(column.type) and not pa.types.is_string(column.type):
        return None
    try:
        values = pc.cast(column, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # Parsed, so each value is digits with at most a leading "-" (pyarrow refuses "+" and
    # spaces): canonical unless it starts with "-" or with a "0" that is not all of it.
    _, offsets, data = column.buffers()
    offsets = np.frombuffer(offsets, np.int32)[column.offset : column.offset + len(column) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    first = data[np.minimum(offsets[:-1], len(data) - 1)]
    leading_zero = (first == ord("0")) & (lengths > 1)
    if np.any(leading_zero | (first == ord("-")) | (lengths > 18) | (lengths == 0)):
        return None  # "007", "-0", "-5", 19 digits
    return values


def _dictionary(column: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A text column's codes [rows] and dictionary: its own if it has one, else by hashing."""
    if not pa.types.is_dictionary(column.type):
        # A hash table, not a sort: ~10x faster than np.unique on 20M ids.
        column = pc.dictionary_encode(column)
    return column.indices.to_numpy(zero_copy_only=False), column.dictionary


class _Vocabulary:
    """One id column's sorted distinct ids, gathered batch by batch, then the rows' codes.

    Pass 1 (`observe`, then `finish`) checks every id and keeps the distinct ones and, for
    users, each one's row count; pass 2 (`codes`) gives each row its id's index in `ids`.
    Integer ids below `_DENSE_IDS` live in a table indexed by the id; other integers and
    strings in hashed (id, count) lists merged from time to time.

    Attributes:
      ids: after `finish`: int64 or str objects [num_ids], sorted and unique.
      counts: after `finish`, with `count`: int64 [num_ids], the rows of each id.
    """

    def __init__(self, role: str, column: str, count: bool):
        self.role = role
        self.column = column
        self.count = count
        self.kind: str | None = None  # "integer" or "text", from the first batch
        self._dense: np.ndarray | None = np.zeros(0, np.int64 if count else bool)
        self._pending: list[tuple[pa.Array, np.ndarray]] = []
        self._pending_rows = 0
        self._merged: tuple[pa.Array, np.ndarray] | None = None
        self.ids: np.ndarray | None = None
        self.counts: np.ndarray | None = None
        self._rank: np.ndarray | None = None  # dense integer ids -> index in ids
        self._text_ids: pa.Array | None = None  # string ids as pyarrow, for index_in
        self._text_as_integers = False  # text holding only canonical integers: integer ids
        self._integer_text = False  # text counted as integers so far (`_canonical_integers`)

    # -- pass 1

    def observe(self, batch: _Batch) -> None:
        """Checks a batch's ids and adds them."""
        column = batch.columns[self.role]
        kind = self._kind_of(column, batch)
        if column.null_count:
            raise batch.fail(_first_null(column), self.column, "missing id")
        if kind == "integer":
            self._add_integers(self._integers(column, batch))
            return
        if self._integer_text:
            # A CSV column of integers (the common case) is counted as integers, without
            # hashing its text; at its first other value, what was counted becomes text.
            plain = not pa.types.is_dictionary(column.type)
            values = _canonical_integers(column) if plain else None
            if values is not None:
                self._add_integers(values)
                return
            self._integers_as_text()
        indices, dictionary = _dictionary(column)
        row_counts = np.bincount(indices, minlength=len(dictionary))
        used = np.flatnonzero(row_counts)  # a Parquet row group's dictionary covers more
        values = self._checked_text(dictionary.take(pa.array(used)), batch, indices, used)
        self._add(values, row_counts[used])

    def _kind_of(self, column: pa.Array, batch: _Batch) -> str:
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if pa.types.is_integer(kind):
            found = "integer"
        elif _is_text(kind):
            found = "text"
        else:
            raise readers.DataFormatError(
                batch.part.name,
                None,
                f"column {self.column!r} has type {kind}; ids must be integers or strings",
            )
        if self.kind is None:
            self.kind = found
            self._integer_text = found == "text" and not pa.types.is_dictionary(column.type)
        elif self.kind != found:
            raise readers.DataFormatError(
                batch.part.name,
                None,
                f"column {self.column!r} holds {found} ids here but {self.kind} ids in the "
                "parts before: every part must have the same column types",
            )
        return found

    def _integers(self, column: pa.Array, batch: _Batch) -> np.ndarray:
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        values = column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if values.min() < 0:
            row = _first_index(values < 0)
            raise batch.fail(
                row, self.column, f"negative id {values[row]}; integer ids must be >= 0"
            )
        return values

    def _checked_text(
        self, values: pa.Array, batch: _Batch, indices: np.ndarray, used: np.ndarray
    ) -> pa.Array:
        """The distinct ids of a batch, decoded and trimmed, each checked (naming its row)."""

        def first_row_of(entries) -> int:  # entries: indices into `values`
            return _first_index(np.isin(indices, used[np.asarray(entries)]))

        if not pa.types.is_string(values.type):
            # CSV ids are read as bytes (the reader's fastest type) and only the distinct ids
            # are decoded here; the cast validates UTF-8.
            try:
                values = values.cast(pa.string())
            except pa.ArrowInvalid:
                bad = _first_failure(values, lambda part: part.cast(pa.string()))
                row = first_row_of([bad])
                raise batch.fail(row, self.column, "id is not valid UTF-8") from None
        trimmed = pc.utf8_trim_whitespace(values)
        empty = np.flatnonzero(pc.equal(trimmed, "").to_numpy(zero_copy_only=False))
        if len(empty):
            raise batch.fail(first_row_of(empty), self.column, "empty id")
        sizes = pc.binary_length(trimmed).to_numpy(zero_copy_only=False)
        too_long = np.flatnonzero(sizes > corpus_lib.MAX_RAW_ID_BYTES)
        if len(too_long):
            row = first_row_of(too_long)
            size = int(sizes[np.searchsorted(used, indices[row])])
            raise batch.fail(
                row,
                self.column,
                f"id of {size:,} bytes; ids may be at most {corpus_lib.MAX_RAW_ID_BYTES:,} "
                "bytes (UTF-8)",
            )
        return trimmed

    def _add_integers(self, values: np.ndarray) -> None:
        if self._dense is not None:
            top = int(values.max())
            if top < _DENSE_IDS:
                if top >= len(self._dense):
                    size = min(max(top + 1, 2 * len(self._dense)), _DENSE_IDS)
                    grown = np.zeros(size, self._dense.dtype)
                    grown[: len(self._dense)] = self._dense
                    self._dense = grown
                if not self.count:
                    self._dense[values] = True
                elif len(self._dense) <= 8 * len(values):
                    self._dense += np.bincount(values, minlength=len(self._dense))
                else:  # a large table: touch only the rows' entries
                    np.add.at(self._dense, values, 1)
                return
            # Large ids (hashes, timestamps as ids): from now on hashed.
            present = np.flatnonzero(self._dense)
            self._add(pa.array(present), self._dense[present].astype(np.int64))
            self._dense = None
        found = pc.value_counts(pa.array(values))
        self._add(found.field("values"), found.field("counts").to_numpy())

    def _integers_as_text(self) -> None:
        """Turns the integers counted so far into their text (canonical, hence as trimmed)."""
        self._integer_text = False
        if self._dense is not None:
            present = np.flatnonzero(self._dense)
            self._pending.append((pa.array(present), self._dense[present].astype(np.int64)))
            self._dense = None
        self._merge()
        if self._merged is not None:
            values, counts = self._merged
            self._merged = (values.cast(pa.string()), counts)

    def _add(self, values: pa.Array, counts: np.ndarray) -> None:
        self._pending.append((values, counts))
        self._pending_rows += len(values)
        merged = 0 if self._merged is None else len(self._merged[0])
        if self._pending_rows > max(1 << 22, 2 * merged):
            self._merge()

    def _merge(self) -> None:
        """Folds the pending (id, count) lists into one, each id once (a hash aggregation)."""
        chunks = ([self._merged] if self._merged is not None else []) + self._pending
        if not chunks:
            return
        table = pa.table(
            {
                "id": pa.chunked_array([values for values, _ in chunks]),
                "n": np.concatenate([counts for _, counts in chunks]),
            }
        )
        grouped = table.group_by("id").aggregate([("n", "sum")])
        self._merged = (grouped["id"].combine_chunks(), grouped["n_sum"].to_numpy())
        self._pending, self._pending_rows = [], 0

    def finish(self) -> None:
        """Sorts the distinct ids (strings that are all canonical integers become integers)."""
        if self._integer_text:
            self._text_as_integers = True  # and read as integers from here on
        if self._dense is not None and (self.kind == "integer" or self._integer_text):
            self.ids = np.flatnonzero(self._dense).astype(np.int64)
            if self.count:
                self.counts = self._dense[self.ids]
            self._rank = np.full(len(self._dense), -1, np.int32)
            self._rank[self.ids] = np.arange(len(self.ids), dtype=np.int32)
            self._dense = None
            return
        self._merge()
        values, counts = self._merged
        self._merged = None
        if (
            self.kind == "text"
            and not self._integer_text
            and pc.all(pc.match_substring_regex(values, _INTEGER_ID)).as_py()
        ):
            self._text_as_integers = True
            values = pc.cast(values, pa.int64())
        if pa.types.is_integer(values.type):
            numbers = values.to_numpy()
            order = np.argsort(numbers)
            self.ids = numbers[order]
        else:
            # Code point order, as np.unique sorts str objects (UTF-8 bytes sort the same way).
            order = pc.sort_indices(values).to_numpy()
            self._text_ids = values.take(pa.array(order))
            # Python strings, each as long as it is (see corpus.py: never fixed-width unicode).
            self.ids = corpus_lib.string_ids(self._text_ids.to_pylist())
        self.counts = counts[order] if self.count else None

    # -- pass 2

    def codes(self, batch: _Batch) -> np.ndarray:
        """int32 [rows]: each row's id as an index into `ids`.

        Raises:
          _Changed: an id that pass 1 did not see.
        """
        column = batch.columns[self.role]
        if column.null_count:
            raise _Changed()
        values = None
        if self.kind == "integer":
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            values = column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        elif self._text_as_integers and not pa.types.is_dictionary(column.type):
            values = _canonical_integers(column)  # None: padded with spaces, say
        if values is not None:
            if self._rank is not None:
                if values.min() < 0 or values.max() >= len(self._rank):
                    raise _Changed()
                codes = self._rank[values]
                if codes.min() < 0:
                    raise _Changed()
                return codes
            encoded = pc.dictionary_encode(pa.array(values))
            table = self._lookup(encoded.dictionary.to_numpy())
            return table[encoded.indices.to_numpy()]
        indices, dictionary = _dictionary(column)
        used = np.flatnonzero(np.bincount(indices, minlength=len(dictionary)))
        try:
            text = dictionary.take(pa.array(used)).cast(pa.string())
        except pa.ArrowInvalid:
            raise _Changed() from None
        trimmed = pc.utf8_trim_whitespace(text)
        if self._text_as_integers:
            try:
                found = self._lookup(pc.cast(trimmed, pa.int64()).to_numpy())
            except pa.ArrowInvalid:
                raise _Changed() from None
        else:
            # One hash table of the vocabulary per batch: the batch's distinct ids are looked
            # up in it (the vocabulary is sorted, so its index is the code).
            at = pc.index_in(trimmed, value_set=self._text_ids)
            if at.null_count:
                raise _Changed()
            found = at.to_numpy().astype(np.int32)
        table = np.full(len(dictionary), -1, np.int32)
        table[used] = found
        return table[indices]

    def _lookup(self, values: np.ndarray) -> np.ndarray:
        """int32 indices of `values` in the sorted integer `ids`."""
        at = np.searchsorted(self.ids, values)
        found = self.ids[np.minimum(at, len(self.ids) - 1)]
        if np.any(at >= len(self.ids)) or np.any(found != values):
            raise _Changed()
        return at.astype(np.int32)


class _TimeKindChanged(Exception):
    """A text timestamp column held integers until now, then a number: read it again as numbers."""

    def __init__(self, kind: int):
        super().__init__(kind)
        self.kind = kind


_TIMESTAMP_KINDS = (
    ("an integer", pa.int64()),
    ("a number", pa.float64()),
    ("an ISO-8601 time without a zone", pa.timestamp("ns")),
    ("an ISO-8601 time with a zone", pa.timestamp("ns", "UTC")),
)


_SECONDS_PER = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


class _Times:
    """A timestamp column, batch by batch, as one sortable kind: int64 or float64 values.

    Integers and floats as they are, times and dates as counts of their own unit, ISO-8601
    strings as nanoseconds: only the order within the column matters. Text takes the first kind
    of `_TIMESTAMP_KINDS` that fits the first batch; every later batch must fit it too, except
    that integers may turn into numbers (`_TimeKindChanged`), as when the column is read whole.
    """

    def __init__(self, column: str, text_kind: int | None = None):
        self.column = column
        self.text_kind = text_kind
        self._first: tuple[str, str, pa.DataType] | None = None  # value, its kind, its target
        # Seconds per unit of the values `convert` returns: numbers are taken as seconds (unix
        # time), times and dates by their unit, ISO text as nanoseconds. The order needs no
        # unit; the temporal split's dated cut-offs do (`read_sequences` scales by it).
        self.seconds_per_unit = 1.0

    def convert(self, batch: _Batch) -> np.ndarray:
        """int64 or float64 [rows]: the batch's timestamps.

        Raises:
          readers.DataFormatError: a missing or unparsable timestamp, naming its row.
          _TimeKindChanged: see the class.
        """
        column = batch.columns["time"]
        if column.null_count:
            raise batch.fail(_first_null(column), self.column, "missing timestamp")
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()  # a partition key: text
        kind = column.type
        if pa.types.is_integer(kind):
            return column.to_numpy().astype(np.int64, copy=False)
        if pa.types.is_floating(kind):
            values = column.to_numpy().astype(np.float64, copy=False)
            if np.isnan(values).any():
                raise batch.fail(_first_index(np.isnan(values)), self.column, "NaN timestamp")
            return values
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            # Counts of the column's own unit (days for date32): only the order within one
            # column matters, and no unit conversion can overflow.
            as_int = pa.int32() if pa.types.is_date32(kind) else pa.int64()
            if pa.types.is_date32(kind):
                self.seconds_per_unit = 86400.0
            elif pa.types.is_date64(kind):
                self.seconds_per_unit = 1e-3
            else:
                self.seconds_per_unit = _SECONDS_PER[kind.unit]
            return pc.cast(column, as_int).to_numpy().astype(np.int64, copy=False)
        if not _is_text(kind):
            raise readers.DataFormatError(
                batch.part.name,
                None,
                f"column {self.column!r} has type {kind}; timestamps must be integers, floats, "
                "ISO-8601 strings or times",
            )
        return self._from_text(column, batch)

    def _from_text(self, column: pa.Array, batch: _Batch) -> np.ndarray:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            try:
                column = column.cast(pa.string())
            except pa.ArrowInvalid:
                row = _first_failure(column, lambda part: part.cast(pa.string()))
                raise batch.fail(row, self.column, "timestamp is not valid UTF-8") from None
        text = pc.utf8_trim_whitespace(column)
        empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
        if empty.any():
            raise batch.fail(_first_index(empty), self.column, "missing timestamp")
        if self._first is None:
            self._first = self._kind_of_first(text, batch)
        if self.text_kind is None:
            for k, (_, target) in enumerate(_TIMESTAMP_KINDS):
                values = _cast_or_none(text, target)
                if values is not None:
                    self.text_kind = k
                    return self._checked(values, batch)
        else:
            values = _cast_or_none(text, _TIMESTAMP_KINDS[self.text_kind][1])
            if values is not None:
                return self._checked(values, batch)
            if self.text_kind == 0 and _cast_or_none(text, pa.float64()) is not None:
                raise _TimeKindChanged(1)
        # No kind fits: the first value decides the column's kind (or is itself bad), and the
        # first row that does not parse as that kind is the one to fix.
        first, label, target = self._first
        row = _first_failure(text, lambda part: pc.cast(part, target))
        raise batch.fail(
            row,
            self.column,
            f"cannot parse {text[row].as_py()!r} as a timestamp; the column's first value "
            f"{first!r} is {label}, and every value must be the same kind",
        )

    def _kind_of_first(self, text: pa.Array, batch: _Batch) -> tuple[str, str, pa.DataType]:
        first = text[0].as_py()
        for label, target in _TIMESTAMP_KINDS:
            if _cast_or_none(text.slice(0, 1), target) is None:
                continue
            if target == pa.int64():  # integers and numbers may mix: the column is numbers
                label, target = _TIMESTAMP_KINDS[1]
            return first, label, target
        raise batch.fail(
            0,
            self.column,
            f"cannot parse {first!r} as a timestamp (an integer, a number or an ISO-8601 time)",
        )

    def _checked(self, values: pa.Array, batch: _Batch) -> np.ndarray:
        if pa.types.is_timestamp(values.type):
            self.seconds_per_unit = _SECONDS_PER[values.type.unit]
            values = values.cast(pa.int64())
        values = values.to_numpy()
        if values.dtype.kind == "f" and np.isnan(values).any():
            raise batch.fail(_first_index(np.isnan(values)), self.column, "NaN timestamp")
        return values


def _cast_or_none(text: pa.Array, target: pa.DataType) -> pa.Array | None:
    try:
        return pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _first_failure(column: pa.ChunkedArray | pa.Array, cast: Callable) -> int:
    """The first row where `cast` raises, by bisection (about two casts of the column's cost)."""
    lo, hi = 0, len(column)  # the first failure lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            cast(column.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


# ---- Files ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _opened(path: epath.Path):
    """A local uncompressed path as a string (pyarrow's own, fastest reader), else an open file
    object, decompressed as it is read when the extension says the file is compressed."""
    text = os.fspath(path)
    codec = file_options.compression(text)
    if codec is None and "://" not in text and os.path.exists(text):
        yield text
        return
    with path.open("rb") as f:
        if codec is None:
            yield f
            return
        with pa.input_stream(f, compression=codec) as stream:
            yield stream


def _field_of(options: FileOptions, column: str) -> str:
    for field in ("user_column", "item_column", "timestamp_column"):
        if getattr(options, field) == column:
            return f"file.{field}"
    return "file.*"


def _csv_header(path: epath.Path, separator: str, quote) -> list[str]:
    """The column names in a CSV file's first non-blank line."""
    with _opened(path) as source, _binary(source) as f:
        head = f.read(1 << 20).removeprefix(b"\xef\xbb\xbf")
    for line in head.decode("utf-8", "replace").splitlines():
        if line.strip():
            if quote:
                import csv  # only for a header: pyarrow's reader splits the rows

                return next(csv.reader([line], delimiter=separator))
            return line.split(separator)
    return []


_ROW = re.compile(r"Row #(\d+): ")


def _csv_error_with_line(
    path: epath.Path,
    name: str,
    error: pa.ArrowInvalid,
    read_options: pacsv.ReadOptions,
    parse_options: pacsv.ParseOptions,
    convert_options: pacsv.ConvertOptions,
) -> readers.DataFormatError:
    """Turns a pyarrow CSV error into one naming the line.

    The multi-threaded reader does not know row numbers; reading again with one thread (only on
    this error path) makes pyarrow name the record, which `_physical_line` turns into a line.
    """
    serial = pacsv.ReadOptions(
        use_threads=False,
        block_size=read_options.block_size,
        column_names=read_options.column_names,
    )
    try:
        with _opened(path) as source:
            reader = pacsv.open_csv(
                source,
                read_options=serial,
                parse_options=parse_options,
                convert_options=convert_options,
            )
            for _ in reader:
                pass
    except pa.ArrowInvalid as e:
        error = e
    message = str(error)
    match = _ROW.search(message)
    problem = message[match.end() :] if match else message
    problem = problem.replace("CSV parse error: ", "").replace("Expected", "expected")
    column = re.search(r"In CSV column #(\d+): ", message)
    if column:
        problem = f"column #{column.group(1)}: {problem}"
    line = _physical_line(path, int(match.group(1))) if match else None
    return readers.DataFormatError(name, line, problem)


def _physical_line(path: epath.Path, record: int) -> int | None:
    """The 1-based line number of the `record`-th non-empty line (pyarrow skips empty ones).

    Only called on error paths; streams the file (decompressed) in blocks of whole lines with
    numpy.
    """
    seen, lines_before, carry = 0, 0, b""
    with _opened(path) as source, _binary(source) as f:
        first = True
        while True:
            chunk = f.read(16 << 20)
            if first:
                chunk, first = chunk.removeprefix(b"\xef\xbb\xbf"), False
            block = carry + chunk
            if not chunk:
                if not block:
                    return None
                block, carry = block + b"\n", b""
            else:
                cut = block.rfind(b"\n") + 1
                block, carry = block[:cut], block[cut:]
            data = np.frombuffer(block, dtype=np.uint8)
            ends = np.flatnonzero(data == ord("\n"))  # [lines in block]
            starts = np.concatenate([[0], ends[:-1] + 1])
            lengths = ends - starts
            # A line holding only "\r" (a CRLF file's blank line) is empty too.
            empty = (lengths == 0) | ((lengths == 1) & (data[starts] == ord("\r")))
            nonempty = np.flatnonzero(~empty)
            if seen + len(nonempty) >= record:
                return lines_before + int(nonempty[record - seen - 1]) + 1
            seen += len(nonempty)
            lines_before += len(ends)
            if not chunk:
                return None


@contextlib.contextmanager
def _binary(source):
    """`_opened`'s result as a binary file object."""
    if isinstance(source, str):
        with open(source, "rb") as f:
            yield f
    else:
        yield source
