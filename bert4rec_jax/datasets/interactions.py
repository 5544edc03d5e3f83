"""Reads your own interaction log (CSV, TSV, Parquet or the paper's format) into sequences.

One row per interaction; `file_options.FileOptions` names the user, item and optional timestamp
columns. The result, `EncodedSequences`, holds each user's items in order as indices into two
sorted vocabularies of raw ids, so a string id is stored once, not once per interaction. The
rules (ids, timestamps, order, duplicates, filters, errors) are in `read_sequences`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from absl import logging
from etils import epath

from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets import file_options, readers
from bert4rec_jax.datasets.file_options import FileOptions

# Canonical non-negative integers that fit int64 with room to spare (as readers._MAX_DIGITS).
_INTEGER_ID = r"^(0|[1-9][0-9]{0,17})$"
# pyarrow's CSV block size: each block is parsed by one thread; 16 MiB keeps both cores busy on
# a few-hundred-MB file while the per-block dictionaries stay small.
_CSV_BLOCK_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSequences:
    """Per-user sequences whose ids are indices into sorted vocabularies of raw ids.

    Attributes:
      sequences: `raw_user_ids` index `user_ids`, `raw_items` index `item_ids`; users in
        ascending order (= ascending raw id), each user's items oldest first.
      user_ids: [num_user_ids], int64 or object (str), sorted and unique.
      item_ids: [num_item_ids], int64 or object (str), sorted and unique. Items that the filters
        removed stay in the vocabulary (no sequence uses them).
    """

    sequences: readers.Sequences
    user_ids: np.ndarray
    item_ids: np.ndarray


# Where a row is, for messages: row index (0-based, in file order) -> (line or None, prefix).
_Locate = Callable[[int], tuple[int | None, str]]


@dataclasses.dataclass(frozen=True, eq=False)
class _Columns:
    """The columns read from a file, ids already encoded."""

    users: np.ndarray  # int32 [rows]: indices into user_ids
    items: np.ndarray  # int32 [rows]: indices into item_ids
    timestamps: np.ndarray | None  # int64 or float64 [rows], or None (file order)
    user_ids: np.ndarray
    item_ids: np.ndarray
    locate: _Locate | None = None  # row -> where, for messages


def read_sequences(options: FileOptions) -> EncodedSequences:
    """Reads, orders and filters an interaction file.

    Ids: a column whose values are all non-negative decimal integers without leading zeros (up
    to 18 digits) holds integer ids; any other column holds string ids (surrounding whitespace
    is stripped, so "7" and " 7" are one id; "007" and "7" are two), of at most
    `corpus.MAX_RAW_ID_BYTES` (64 KiB) of UTF-8 each: a longer one is refused, naming its line.
    Parquet integer columns are integer ids, Parquet string columns string ids. An empty or
    missing id is an error, as is a negative integer id (-1 stands for padding in
    `Corpus.raw_item_ids`). (`_encode_ids`.)

    Timestamps: integers or floats (e.g. unix seconds), ISO-8601 strings ("2015-03-31",
    "2015-03-31T06:40:02", with or without a zone such as "Z" or "+02:00", but the same kind in
    the whole column), or Parquet timestamp/date columns; only their order matters
    (`_timestamps`). Each user's interactions are sorted by timestamp, ties kept in file order
    (one stable sort, pyarrow's); without a timestamp column the file order is the order.

    Exact duplicates: rows with the same user, item and timestamp are counted in the loading
    summary, and a warning names their count and the first one's line; they usually come from a
    log exported or concatenated twice, and they double sequences and let users pass
    `min_user_interactions`. Without a timestamp column a duplicate cannot be told from a
    repeated interaction, so none is counted (`_duplicates`).

    Filters, in this order, once each (not repeated until nothing changes): `drop_duplicates`
    keeps the first of each; `drop_repeats` drops an interaction with the same item as the
    user's previous one ("A A B A" -> "A B A"); `min_item_interactions` drops items with fewer
    interactions (counted after the step before) from every sequence; `min_user_interactions`
    drops users with fewer (counted after both), so every kept user has at least this many, while
    an item may end up with fewer than `min_item_interactions` once short users are gone.

    Reading: CSV/TSV by pyarrow's multi-threaded reader, the id columns dictionary-encoded as
    they are parsed; Parquet by `pyarrow.parquet` (string ids read as dictionaries); the paper's
    format by `readers.read_int_table`.

    Args:
      options: the file and how to read it.

    Returns:
      The sequences with their vocabularies.

    Raises:
      readers.DataFormatError: a missing, empty or malformed file, a missing column, an
        unparsable id or timestamp, or no user left after filtering; naming the file, the line
        (CSV/TSV/paper: physical lines, blank lines included; a quoted value that spans lines
        shifts the count) or the row group (Parquet) and the column.
      ValueError: a configuration mistake (an unknown format, a column that is not in
        `columns`), naming the `file.*` field.
    """
    path = epath.Path(options.path)
    name = options.path
    if not path.is_file():
        raise readers.DataFormatError(name, None, "file not found")
    fmt = options.resolved_format
    if fmt == "paper":
        columns = _read_paper(path, name)
    elif fmt == "parquet":
        columns = _read_parquet(path, name, options)
    else:
        columns = _read_csv(path, name, options)
    sequences = _order_and_filter(columns, options, name)
    return EncodedSequences(sequences, columns.user_ids, columns.item_ids)


# ---- Ids and timestamps -----------------------------------------------------------------------


def _fail(locate: _Locate, name: str, row: int, column: str, problem: str):
    line, where = locate(row)
    return readers.DataFormatError(name, line, f"{where}column {column!r}: {problem}")


def _first_index(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _encode_ids(
    column: pa.ChunkedArray, column_name: str, name: str, locate: _Locate
) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes of an id column and its vocabulary.

    Args:
      column: integers, strings, or a dictionary of either (all chunks sharing one dictionary).
      column_name: for messages.
      name: the file, for messages.
      locate: row -> where, for messages.

    Returns:
      int32 [rows] codes and the sorted unique raw ids they index (int64 or str objects).
    """
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_integer(kind) or _is_text(kind)):
        raise readers.DataFormatError(
            name, None, f"column {column_name!r} has type {kind}; ids must be integers or strings"
        )
    if column.null_count:
        row = _first_index(pc.is_null(column).to_numpy(zero_copy_only=False))
        raise _fail(locate, name, row, column_name, "missing id")
    if not pa.types.is_dictionary(column.type):
        # A hash table, not a sort: ~10x faster than np.unique on 20M ids.
        column = pc.dictionary_encode(column)
    if column.num_chunks == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    dictionary = column.chunk(0).dictionary
    indices = np.concatenate(
        [c.indices.to_numpy(zero_copy_only=False) for c in column.chunks]
    ).astype(np.int32, copy=False)  # [rows]

    def first_row_of(codes: np.ndarray) -> int:
        return _first_index(np.isin(indices, codes))

    if pa.types.is_integer(kind):
        values = dictionary.to_numpy(zero_copy_only=False).astype(np.int64)
        negative = np.flatnonzero(values < 0)
        if len(negative):
            row = first_row_of(negative)
            raise _fail(
                locate,
                name,
                row,
                column_name,
                f"negative id {values[indices[row]]}; integer ids must be >= 0",
            )
    else:
        if not pa.types.is_string(dictionary.type):
            # CSV ids are read as bytes (the reader's fastest type) and only the distinct ids are
            # decoded here; the cast validates UTF-8.
            try:
                dictionary = dictionary.cast(pa.string())
            except pa.ArrowInvalid:
                bad = _first_failure(dictionary, lambda part: part.cast(pa.string()))
                raise _fail(
                    locate, name, first_row_of([bad]), column_name, "id is not valid UTF-8"
                ) from None
        trimmed = pc.utf8_trim_whitespace(dictionary)
        empty = np.flatnonzero(pc.equal(trimmed, "").to_numpy(zero_copy_only=False))
        if len(empty):
            raise _fail(locate, name, first_row_of(empty), column_name, "empty id")
        sizes = pc.binary_length(trimmed).to_numpy(zero_copy_only=False)
        too_long = np.flatnonzero(sizes > corpus_lib.MAX_RAW_ID_BYTES)
        if len(too_long):
            row = first_row_of(too_long)
            raise _fail(
                locate,
                name,
                row,
                column_name,
                f"id of {int(sizes[indices[row]]):,} bytes; ids may be at most "
                f"{corpus_lib.MAX_RAW_ID_BYTES:,} bytes (UTF-8)",
            )
        if pc.all(pc.match_substring_regex(trimmed, _INTEGER_ID)).as_py():
            values = pc.cast(trimmed, pa.int64()).to_numpy()
        else:
            # Python strings, each as long as it is (see corpus.py: never fixed-width unicode).
            values = corpus_lib.string_ids(trimmed.to_pylist())
    # Sorting only the vocabulary (small) orders the codes like the raw ids; np.unique also
    # merges ids that became equal once trimmed.
    vocab, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int32)[indices], vocab


def _is_text(kind: pa.DataType) -> bool:
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


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


_TIMESTAMP_KINDS = (
    ("an integer", pa.int64()),
    ("a number", pa.float64()),
    ("an ISO-8601 time without a zone", pa.timestamp("ns")),
    ("an ISO-8601 time with a zone", pa.timestamp("ns", "UTC")),
)


def _timestamps(column: pa.ChunkedArray, column_name: str, name: str, locate: _Locate):
    """A timestamp column as a sortable int64 or float64 array [rows].

    Integers and floats as they are, times and dates as counts of their own unit, ISO-8601
    strings as nanoseconds: only the order within the column matters.
    """
    kind = column.type
    if column.null_count:
        row = _first_index(pc.is_null(column).to_numpy(zero_copy_only=False))
        raise _fail(locate, name, row, column_name, "missing timestamp")
    if pa.types.is_integer(kind):
        return column.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(kind):
        values = column.to_numpy().astype(np.float64, copy=False)
        if np.isnan(values).any():
            raise _fail(locate, name, _first_index(np.isnan(values)), column_name, "NaN timestamp")
        return values
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        # Counts of the column's own unit (days for date32): only the order within one column
        # matters, and no unit conversion can overflow.
        as_int = pa.int32() if pa.types.is_date32(kind) else pa.int64()
        return pc.cast(column, as_int).to_numpy().astype(np.int64, copy=False)
    if not _is_text(kind):
        raise readers.DataFormatError(
            name,
            None,
            f"column {column_name!r} has type {kind}; timestamps must be integers, floats, "
            "ISO-8601 strings or times",
        )
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        try:
            column = column.cast(pa.string())
        except pa.ArrowInvalid:
            row = _first_failure(column, lambda part: part.cast(pa.string()))
            raise _fail(locate, name, row, column_name, "timestamp is not valid UTF-8") from None
    text = pc.utf8_trim_whitespace(column)
    for _, target in _TIMESTAMP_KINDS:
        try:
            values = pc.cast(text, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if pa.types.is_timestamp(target):
            values = values.cast(pa.int64())
        values = values.to_numpy()
        if values.dtype.kind == "f" and np.isnan(values).any():
            raise _fail(locate, name, _first_index(np.isnan(values)), column_name, "NaN timestamp")
        return values
    # No kind fits every value: the first value decides the column's kind (or is itself bad),
    # and the first row that does not parse as that kind is the one to fix.
    first = text[0].as_py()
    for label, target in _TIMESTAMP_KINDS:
        try:
            pc.cast(text.slice(0, 1), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if target == pa.int64():  # integers and numbers may mix: the column is numbers
            label, target = _TIMESTAMP_KINDS[1]
        row = _first_failure(text, lambda part, t=target: pc.cast(part, t))
        problem = (
            f"cannot parse {text[row].as_py()!r} as a timestamp; the column's first value "
            f"{first!r} is {label}, and every value must be the same kind"
        )
        raise _fail(locate, name, row, column_name, problem)
    raise _fail(
        locate,
        name,
        0,
        column_name,
        f"cannot parse {first!r} as a timestamp (an integer, a number or an ISO-8601 time)",
    )


# ---- Formats ----------------------------------------------------------------------------------


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


def _read_paper(path: epath.Path, name: str) -> _Columns:
    with _opened(path) as source, _binary(source) as f:
        table = readers.read_int_table(f, num_columns=2, name=name)  # [rows, 2]

    def locate(row: int) -> tuple[int | None, str]:
        return None, f"row {row + 1}: "

    users, user_ids = _encode_ids(pa.chunked_array([table[:, 0]]), "user", name, locate)
    items, item_ids = _encode_ids(pa.chunked_array([table[:, 1]]), "item", name, locate)
    return _Columns(users, items, None, user_ids, item_ids, locate)


def _read_parquet(path: epath.Path, name: str, options: FileOptions) -> _Columns:
    try:
        with epath.Path(path).open("rb") as f:
            schema = pq.read_schema(f)
        string_columns = [
            c
            for c in (options.user_column, options.item_column)
            if c in schema.names and _is_text(schema.field(c).type)
        ]
        missing = [c for c in options.wanted_columns if c not in schema.names]
        if missing:
            raise readers.DataFormatError(
                name,
                None,
                f"no column {missing[0]!r} ({_field_of(options, missing[0])}); the file's "
                f"columns are: {', '.join(schema.names)}",
            )
        with _opened(path) as source:
            parquet = pq.ParquetFile(source, read_dictionary=string_columns)
            metadata = parquet.metadata
            group_rows = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
            table = parquet.read(columns=options.wanted_columns, use_threads=True)
    except pa.ArrowException as e:
        raise readers.DataFormatError(name, None, f"cannot read as Parquet ({e})") from e
    if table.num_rows == 0:
        raise readers.DataFormatError(name, None, "file is empty (no interactions)")
    table = table.unify_dictionaries()
    group_starts = np.concatenate([[0], np.cumsum(group_rows)])

    def locate(row: int) -> tuple[int | None, str]:
        group = int(np.searchsorted(group_starts, row, side="right")) - 1
        return None, f"row group {group}, row {row - group_starts[group]} (0-based), "

    return _columns_from_table(table, name, options, locate)


def _field_of(options: FileOptions, column: str) -> str:
    for field in ("user_column", "item_column", "timestamp_column"):
        if getattr(options, field) == column:
            return f"file.{field}"
    return "file.*"


def _columns_from_table(
    table: pa.Table, name: str, options: FileOptions, locate: _Locate
) -> _Columns:
    users, user_ids = _encode_ids(table[options.user_column], options.user_column, name, locate)
    items, item_ids = _encode_ids(table[options.item_column], options.item_column, name, locate)
    timestamps = None
    if options.timestamp_column:
        column = options.timestamp_column
        timestamps = _timestamps(table[column], column, name, locate)
    return _Columns(users, items, timestamps, user_ids, item_ids, locate)


def _read_csv(path: epath.Path, name: str, options: FileOptions) -> _Columns:
    names = options.column_names
    has_header = names is None
    read_options = pacsv.ReadOptions(
        use_threads=True, block_size=_CSV_BLOCK_BYTES, column_names=names
    )
    # TSV has no quoting convention (a quote is just a character); CSV quotes with '"'.
    quote = '"' if options.resolved_format == "csv" else False
    parse_options = pacsv.ParseOptions(
        delimiter=options.separator, quote_char=quote, ignore_empty_lines=True
    )
    # Ids as bytes: the reader's cheapest conversion (no UTF-8 check, no number parsing; ~2x
    # faster than reading them as dictionaries); `_encode_ids` hashes them and decodes only the
    # distinct ones. Timestamps are left to the reader's type inference (native parsing).
    column_types = {options.user_column: pa.binary(), options.item_column: pa.binary()}
    convert_options = pacsv.ConvertOptions(
        include_columns=options.wanted_columns,
        column_types=column_types,
        strings_can_be_null=False,
    )

    def locate(row: int) -> tuple[int | None, str]:
        return _physical_line(path, row + 1 + has_header), ""

    def read() -> pa.Table:
        with _opened(path) as source:
            return pacsv.read_csv(
                source,
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )

    try:
        try:
            table = read()
        except pa.ArrowInvalid as e:
            if not (options.timestamp_column and "conversion error" in str(e)):
                raise
            # The timestamp column's type was inferred from the first block and a later block
            # does not fit it (e.g. integers, then a float or a typo): read it as text and parse
            # it here, which finds the row to report or the kind that fits every value.
            column_types[options.timestamp_column] = pa.string()
            convert_options = pacsv.ConvertOptions(
                include_columns=options.wanted_columns,
                column_types=column_types,
                strings_can_be_null=False,
            )
            table = read()
    except pa.ArrowKeyError as e:  # include_columns names a column the header lacks
        header = _csv_header(path, options.separator, quote)
        missing = [c for c in options.wanted_columns if c not in header]
        if not missing:
            raise readers.DataFormatError(name, 1, str(e)) from e
        raise readers.DataFormatError(
            name,
            1,
            f"no column {missing[0]!r} ({_field_of(options, missing[0])}); the header's "
            f"columns are: {', '.join(header)}",
        ) from e
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise readers.DataFormatError(name, None, "file is empty (no interactions)") from e
        raise _csv_error_with_line(
            path, name, e, read_options, parse_options, convert_options
        ) from e
    if table.num_rows == 0:
        raise readers.DataFormatError(name, None, "file is empty (no interactions)")
    return _columns_from_table(table, name, options, locate)


def _csv_header(path: epath.Path, separator: str, quote) -> list[str]:
    """The column names in a CSV file's first non-blank line."""
    with _opened(path) as source, _binary(source) as f:
        head = f.read(1 << 20).removeprefix(b"\xef\xbb\xbf")
    for line in head.decode("utf-8", "replace").splitlines():
        if line.strip():
            if quote:
                import csv  # only on this error path

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


# ---- Ordering and filters ---------------------------------------------------------------------


def _sorted_order(users: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray | None:
    """The stable order by (user, timestamp), or None when the rows are already in it."""
    same_user = users[1:] == users[:-1]
    in_order = users[1:] > users[:-1]
    if timestamps is not None:
        in_order |= same_user & (timestamps[1:] >= timestamps[:-1])
    else:
        in_order |= same_user
    if in_order.all():
        return None
    keys = {"user": users}
    sort_keys = [("user", "ascending")]
    if timestamps is not None:
        keys["time"] = timestamps
        sort_keys.append(("time", "ascending"))
    # pyarrow's sort_indices is stable (ties keep file order) and ~2x faster than np.lexsort.
    return pc.sort_indices(pa.table(keys), sort_keys=sort_keys).to_numpy()


def _duplicates(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None) -> np.ndarray:
    """bool [rows]: the rows (ordered by user and time, ties in file order) that repeat an
    earlier row's user, item and timestamp. None without timestamps (see `read_sequences`)."""
    duplicate = np.zeros(len(users), dtype=bool)
    if timestamps is None or len(users) < 2:
        return duplicate
    tie = (users[1:] == users[:-1]) & (timestamps[1:] == timestamps[:-1])  # [rows - 1]
    if not tie.any():
        return duplicate
    # Only rows that share their user and time with a neighbour can be duplicates: sort those
    # (usually few) by (user-and-time group, item); the stable sort keeps file order in a group.
    group = np.concatenate([[0], np.cumsum(~tie)])  # [rows]
    candidate = np.zeros(len(users), dtype=bool)
    candidate[1:] |= tie
    candidate[:-1] |= tie
    rows = np.flatnonzero(candidate)
    rows = rows[np.lexsort((items[rows], group[rows]))]  # stable: ties keep their order
    same = (group[rows][1:] == group[rows][:-1]) & (items[rows][1:] == items[rows][:-1])
    duplicate[rows[1:][same]] = True
    return duplicate


def _order_and_filter(columns: _Columns, options: FileOptions, name: str) -> readers.Sequences:
    users, items, timestamps = columns.users, columns.items, columns.timestamps
    num_rows = len(users)
    order = _sorted_order(users, timestamps)
    if order is not None:
        users, items = users[order], items[order]
        timestamps = None if timestamps is None else timestamps[order]
    counts = {"rows read": num_rows}
    duplicates = _duplicates(users, items, timestamps)
    if duplicates.any():
        first_row = int((duplicates.nonzero()[0] if order is None else order[duplicates]).min())
        line, where = columns.locate(first_row) if columns.locate else (None, "")
        counts["exact duplicates"] = int(duplicates.sum())
        logging.warning(
            "%s: %d exact duplicate rows (same user, item and timestamp), the first at %s; %s",
            name,
            counts["exact duplicates"],
            f"line {line}" if line is not None else (where.rstrip(", ") or f"row {first_row}"),
            "dropped (file.drop_duplicates)"
            if options.drop_duplicates
            else "kept; set file.drop_duplicates=True to drop them",
        )
        if options.drop_duplicates:
            users, items = users[~duplicates], items[~duplicates]
            counts["after dropping duplicates"] = len(users)
    del order, duplicates
    if options.drop_repeats:
        keep = np.ones(len(users), dtype=bool)
        keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[keep], items[keep]
        counts["after dropping repeats"] = len(users)
    if options.min_item_interactions > 0:
        per_item = np.bincount(items, minlength=len(columns.item_ids))
        keep = per_item[items] >= options.min_item_interactions
        users, items = users[keep], items[keep]
        counts[f"after dropping items with < {options.min_item_interactions}"] = len(users)
    run_starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
    lengths = np.diff(np.append(run_starts, len(users)))
    keep_users = lengths >= options.min_user_interactions
    if len(users) == 0 or not keep_users.any():
        steps = ", ".join(f"{n} {what}" for what, n in counts.items())
        raise readers.DataFormatError(
            name,
            None,
            f"no user left after filtering: no user has at least "
            f"{options.min_user_interactions} interactions (file.min_user_interactions; "
            f"{steps})",
        )
    run_users = users[run_starts]
    if not keep_users.all():
        items = items[np.repeat(keep_users, lengths)]
        lengths, run_users = lengths[keep_users], run_users[keep_users]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    logging.info(
        "Read %s: %s; kept %d users with >= %d interactions, %d interactions",
        name,
        ", ".join(f"{n} {what}" for what, n in counts.items()),
        len(lengths),
        options.min_user_interactions,
        offsets[-1],
    )
    return readers.Sequences(run_users.astype(np.int64), offsets, items.astype(np.int64))
