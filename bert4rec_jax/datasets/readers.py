"""Parsers for the raw interaction files, vectorised and strict.

Two source formats: the paper's preprocessed files (`<user> <item>` per line, a user's lines
contiguous and oldest first: `read_paper_file`) and MovieLens ratings (one rating per line with a
timestamp, in no order: `read_movielens_ratings`); both parse through `read_int_table`. Every
problem raises `DataFormatError` naming the file and the line, e.g. `beauty.txt:17: expected 2
columns, found 3`. Paths go through `etils.epath`, so `gs://...` works as well as local files.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from collections.abc import Sequence

import numpy as np
from etils import epath

# Lines are read in blocks of about this many bytes: large enough for numpy to amortise its calls,
# small enough that the per-byte temporaries (a few bytes per input byte) stay far below the output.
_BLOCK_BYTES = 16 << 20
# int64 holds every 18-digit number; np.fromstring silently saturates longer ones, so refuse them.
_MAX_DIGITS = 18
# Users with fewer interactions are dropped from the MovieLens raw files (the paper's rule).
MIN_USER_INTERACTIONS = 5

_UTF8_BOM = b"\xef\xbb\xbf"

# Byte classes of the validator.
_BAD, _DIGIT, _SPACE, _NEWLINE, _DOT = 0, 1, 2, 3, 4


class DataFormatError(ValueError):
    """A source file is missing, empty or malformed.

    Attributes:
      path: the file (for a member of an archive, `archive.zip:member`).
      line: the 1-based line of the problem, or None when it concerns the whole file.
      problem: what is wrong, in words.
    """

    def __init__(self, path: str, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


class SourceUnavailableError(ConnectionError):
    """A data set's source cannot be downloaded (no network, a wrong mirror, an HTTP error).

    Attributes:
      url: the address that failed.
      needed_file: the file the data set needs, as it would be named in a manual directory.
    """

    def __init__(self, url: str, needed_file: str, reason: str, advice: str):
        super().__init__(f"cannot download {url} ({reason}). {advice}")
        # Not `filename`: OSError would then print itself as "[Errno None] None: <filename>".
        self.url = url
        self.needed_file = needed_file


class ChecksumError(OSError):
    """A downloaded or manually supplied file does not have the expected checksum."""

    def __init__(self, path: str, kind: str, expected: str, actual: str):
        self.path = str(path)
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"checksum mismatch for {self.path}: expected {kind} {expected}, got {actual}. "
            "The file is corrupt or is not the expected release; it was not used."
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Sequences:
    """Per-user item sequences with raw ids, in CSR form (the input of `corpus_from_sequences`).

    Attributes:
      raw_user_ids: int64 [num_users], the source's user ids.
      offsets: int64 [num_users + 1]; user u's items are `raw_items[offsets[u]:offsets[u + 1]]`.
      raw_items: int64 (or int32) [num_interactions], the source's item ids, each user's oldest
        first.
      timestamps: int64 or float64 [num_interactions] seconds aligned with `raw_items`, or None
        when the source has no times (`corpus.Corpus.timestamps`).
    """

    raw_user_ids: np.ndarray
    offsets: np.ndarray
    raw_items: np.ndarray
    timestamps: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.raw_user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sorted_by_user(self) -> Sequences:
        """Returns the same sequences with users in ascending raw-id order (a canonical order)."""
        order = np.argsort(self.raw_user_ids, kind="stable")
        if np.all(order == np.arange(len(order))):
            return self
        lengths = self.lengths[order]
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # Item k of the new layout comes from old start of its user + its position in the user.
        shift = np.repeat(self.offsets[:-1][order] - offsets[:-1], lengths)
        source = np.arange(len(self.raw_items), dtype=np.int64) + shift
        times = None if self.timestamps is None else self.timestamps[source]
        return Sequences(self.raw_user_ids[order], offsets, self.raw_items[source], times)


def _byte_classes(separators: bytes, decimal: bool) -> np.ndarray:
    table = np.full(256, _BAD, dtype=np.uint8)
    table[ord("0") : ord("9") + 1] = _DIGIT
    for ch in b" \t\r" + separators:
        table[ch] = _SPACE
    table[ord("\n")] = _NEWLINE
    if decimal:
        table[ord(".")] = _DOT
    return table


def _line_text(block: bytes, position: int) -> str:
    start = block.rfind(b"\n", 0, position) + 1
    end = block.find(b"\n", position)
    text = block[start : end if end >= 0 else len(block)].decode("utf-8", "replace").rstrip("\r")
    return text if len(text) <= 80 else text[:77] + "..."


def _parse_block(
    block: bytes,
    *,
    name: str,
    first_line: int,
    num_columns: int,
    separators: bytes,
    decimal_columns: Sequence[int],
) -> tuple[np.ndarray, int]:
    """Validates and parses whole lines (`block` ends with "\\n").

    Returns:
      int64 [non-blank lines, columns] and the number of lines in the block, blank ones included
      (so that the caller's line numbers stay physical).
    """
    data = np.frombuffer(block, dtype=np.uint8)
    classes = _byte_classes(separators, bool(decimal_columns))[data]

    def fail(position: int, problem: str) -> DataFormatError:
        line = first_line + int(np.count_nonzero(data[:position] == ord("\n")))
        return DataFormatError(name, line, f"{problem} in line {_line_text(block, position)!r}")

    bad = np.flatnonzero(classes == _BAD)
    if len(bad):
        byte = int(data[bad[0]])
        what = f"character {chr(byte)!r}" if byte < 128 else f"byte 0x{byte:02x}"
        raise fail(int(bad[0]), f"non-integer value (unexpected {what})")

    is_token = (classes == _DIGIT) | (classes == _DOT)
    is_newline = classes == _NEWLINE
    starts = is_token.copy()
    starts[1:] &= ~is_token[:-1]
    # A well-formed block without blank lines is the event sequence (token * num_columns,
    # newline) repeated; checking that is the fast path.
    events = np.flatnonzero(starts | is_newline)
    event_is_newline = is_newline[events]
    num_lines = int(np.count_nonzero(event_is_newline))
    pattern = np.zeros(num_columns + 1, dtype=bool)
    pattern[-1] = True
    expected = np.tile(pattern, num_lines)
    num_rows = num_lines
    if len(events) != len(expected) or not np.array_equal(event_is_newline, expected):
        newline_events = np.flatnonzero(event_is_newline)
        tokens_per_line = np.diff(np.concatenate([[-1], newline_events])) - 1
        wrong = np.flatnonzero((tokens_per_line != num_columns) & (tokens_per_line != 0))
        if len(wrong):  # blank lines (no token) are skipped; any other count is an error
            line = int(wrong[0])
            line_end = int(events[newline_events[line]])
            line_start = block.rfind(b"\n", 0, line_end) + 1
            found = int(tokens_per_line[line])
            raise fail(line_start, f"expected {num_columns} columns, found {found}")
        num_rows = int(np.count_nonzero(tokens_per_line))
        if num_rows == 0:
            return np.zeros((0, num_columns), dtype=np.int64), num_lines

    token_starts = events[~event_is_newline]  # [num_rows * num_columns]
    ends = np.flatnonzero(is_token[:-1] & ~is_token[1:]) + 1
    lengths = ends - token_starts
    too_long = np.flatnonzero(lengths > _MAX_DIGITS)
    if len(too_long):
        raise fail(int(token_starts[too_long[0]]), f"id longer than {_MAX_DIGITS} digits")

    if decimal_columns:
        dots = np.flatnonzero(classes == _DOT)
        if len(dots):
            # The column of the token holding each dot; a dot is allowed only in a decimal column.
            token = np.searchsorted(token_starts, dots, side="right") - 1
            allowed = np.isin(token % num_columns, np.asarray(decimal_columns))
            if not allowed.all():
                raise fail(int(dots[np.argmin(allowed)]), "non-integer id")
            # Dropping the dots turns "3.5" into 35: decimal columns are validated, never used.
            block = block.replace(b".", b"")
    for separator in separators:
        if separator not in b" \t\r":
            block = block.replace(bytes([separator]), b" ")
    # Blank lines are only whitespace, which the separator-based parse skips.
    values = np.fromstring(block, dtype=np.int64, sep=" ")
    if len(values) != num_rows * num_columns:  # unreachable after the checks above; be loud.
        raise DataFormatError(name, first_line, "could not parse block")
    return values.reshape(num_rows, num_columns), num_lines


def _open(path: epath.PathLike, name: str):
    """Opens a file for binary reading, or raises `DataFormatError` when there is none."""
    path = epath.Path(path)
    if not path.is_file():
        raise DataFormatError(name, None, "file not found")
    return path.open("rb")


def read_int_table(
    source: str | os.PathLike | io.BufferedIOBase,
    *,
    num_columns: int,
    name: str | None = None,
    separator: bytes = b" ",
    skip_header: bool = False,
    decimal_columns: Sequence[int] = (),
) -> np.ndarray:
    """Reads a text table of non-negative integers, validating every line.

    The file is streamed in blocks of whole lines; each block is checked byte by byte with numpy
    (allowed characters, columns per line, id lengths) and then converted with `np.fromstring`
    in C. No Python loop runs per line, so 20M interactions parse in seconds, and the memory
    held is the output arrays plus one block. A UTF-8 byte order mark at the start and blank
    lines anywhere are skipped (editors and spreadsheet exports add them, and they carry no
    interaction); line numbers in errors still count every physical line.

    Args:
      source: a path (local or any `etils.epath` file system) or a binary file object (e.g. a
        zip member).
      num_columns: columns every non-blank line must have.
      name: the name used in errors; defaults to the path.
      separator: the column separator; runs of spaces, tabs and this separator all separate.
        A multi-byte separator (MovieLens' "::") is replaced by a tab before validation.
      skip_header: drop the first non-blank line (a CSV header).
      decimal_columns: columns that may hold decimals (MovieLens 20M ratings); they are
        checked for shape but their values are not meaningful in the result.

    Returns:
      int64 [num_rows, num_columns].

    Raises:
      DataFormatError: missing or empty file, a line with the wrong column count, a non-integer
        value.
    """
    if isinstance(source, str | os.PathLike):
        name = name or os.fspath(source)
        with _open(source, name) as f:
            return read_int_table(
                f,
                num_columns=num_columns,
                name=name,
                separator=separator,
                skip_header=skip_header,
                decimal_columns=decimal_columns,
            )
    name = name or getattr(source, "name", "<stream>")
    single = separator if len(separator) == 1 else b"\t"
    line_number = 1
    parts: list[np.ndarray] = []
    carry = b""
    header_pending = skip_header
    first = True
    while True:
        chunk = source.read(_BLOCK_BYTES)
        if first:
            chunk = chunk.removeprefix(_UTF8_BOM)
            first = False
        last = not chunk
        block = carry + chunk
        if last:
            # Whitespace at the end of the file (a missing or extra final newline) is harmless.
            block = block.rstrip(b" \t\r\n")
            if not block:
                break
            block += b"\n"
            carry = b""
        else:
            cut = block.rfind(b"\n") + 1
            block, carry = block[:cut], block[cut:]
        if len(separator) > 1:
            block = block.replace(separator, single)
        if header_pending:
            # The header is the first non-blank line; until it is seen, blank lines are skipped.
            stripped = block.lstrip(b" \t\r\n")
            skipped = block[: len(block) - len(stripped)]
            if not stripped:
                line_number += skipped.count(b"\n")
                if last:
                    break
                continue
            skipped = skipped[: skipped.rfind(b"\n") + 1]  # whole blank lines only
            line_number += skipped.count(b"\n")
            block = block[len(skipped) :]
            end = block.find(b"\n") + 1
            block = block[end:]
            line_number += 1
            header_pending = False
        if block:
            table, num_lines = _parse_block(
                block,
                name=name,
                first_line=line_number,
                num_columns=num_columns,
                separators=single,
                decimal_columns=decimal_columns,
            )
            if len(table):
                parts.append(table)
            line_number += num_lines
        if last:
            break
    if not parts:
        raise DataFormatError(name, None, "file is empty (no interactions)")
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _open_text_member(archive: zipfile.ZipFile, suffix: str, archive_name: str) -> tuple[str, str]:
    """Finds the single member whose name ends with `suffix` (ignoring macOS metadata)."""
    members = [
        m
        for m in archive.namelist()
        if m.endswith(suffix) and not m.startswith("__MACOSX/") and "/._" not in f"/{m}"
    ]
    if len(members) != 1:
        raise DataFormatError(
            archive_name,
            None,
            f"expected exactly one '*{suffix}' file in the archive, found {sorted(members)}",
        )
    return members[0], f"{archive_name}:{members[0]}"


def read_paper_file(path: str | os.PathLike) -> Sequences:
    """Reads one of the BERT4Rec paper's files (`<user> <item>` lines) into sequences.

    The order of lines is the order of interactions; a user's lines must be contiguous, or the
    file is not what the paper produced. `.zip` archives (ml-20m.zip) are read from the single
    `.txt` file inside.

    Args:
      path: the `.txt` file or a `.zip` holding one.

    Returns:
      The sequences, users in ascending raw-id order, each user's items in file order.

    Raises:
      DataFormatError: on a missing, empty or malformed file, or non-contiguous user lines.
    """
    name = os.fspath(path)
    with _open(path, name) as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as archive:
                member, name = _open_text_member(archive, ".txt", name)
                with archive.open(member) as m:
                    table = read_int_table(m, num_columns=2, name=name)
        else:
            f.seek(0)
            table = read_int_table(f, num_columns=2, name=name)
    users, items = table[:, 0], table[:, 1]
    # Runs of equal user ids; each user must form exactly one run.
    run_starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
    run_users = users[run_starts]
    order = np.argsort(run_users, kind="stable")
    repeated = np.flatnonzero(run_users[order][1:] == run_users[order][:-1])
    if len(repeated):
        # Report the earliest line that starts a second run of some user.
        second_runs = order[repeated + 1]
        first_runs = order[repeated]
        k = int(np.argmin(run_starts[second_runs]))
        raise DataFormatError(
            name,
            int(run_starts[second_runs[k]]) + 1,
            f"user {int(run_users[second_runs[k]])} reappears after other users (its lines "
            f"start at line {int(run_starts[first_runs[k]]) + 1}); a user's lines must be "
            "contiguous in a paper-format file",
        )
    offsets = np.append(run_starts, len(users)).astype(np.int64)
    return Sequences(run_users.astype(np.int64), offsets, items.astype(np.int64)).sorted_by_user()


# MovieLens ratings files: (member path inside the release, separator, header, decimal columns).
MOVIELENS_FILES = {
    "100k": ("ml-100k/u.data", b"\t", False, ()),
    "1m": ("ml-1m/ratings.dat", b"::", False, ()),
    "20m": ("ml-20m/ratings.csv", b",", True, (2,)),
}


def sequences_from_ratings(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    min_interactions: int = MIN_USER_INTERACTIONS,
) -> Sequences:
    """Orders each user's ratings by time and drops users with few ratings (the paper's recipe).

    Ties: ratings of one user with the same timestamp are ordered by raw item id, so the result
    does not depend on the file's line order.

    Args:
      users: int64 [n] raw user ids.
      items: int64 [n] raw item ids.
      timestamps: int64 [n] times of the ratings.
      min_interactions: users with fewer ratings are dropped.

    Returns:
      The sequences, users in ascending raw-id order, with their timestamps.
    """
    order = np.lexsort((items, timestamps, users))  # last key is the primary one
    users, items, timestamps = users[order], items[order], timestamps[order]
    run_starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
    bounds = np.append(run_starts, len(users))
    lengths = np.diff(bounds)
    keep = lengths >= min_interactions
    run_users = users[run_starts]
    if not keep.all():
        kept = np.repeat(keep, lengths)
        items, timestamps = items[kept], timestamps[kept]
        lengths = lengths[keep]
        run_users = run_users[keep]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(
        run_users.astype(np.int64), offsets, items.astype(np.int64), timestamps.astype(np.int64)
    )


def read_movielens_ratings(path: str | os.PathLike, variant: str) -> Sequences:
    """Reads a MovieLens ratings file into time-ordered sequences.

    Each user's ratings are sorted by (timestamp, raw item id): the timestamp is the paper's
    order, the raw item id is our fixed, stated rule for ties. Users with fewer than
    `MIN_USER_INTERACTIONS` ratings are dropped; every rating counts as an interaction.

    Args:
      path: the release zip (`ml-100k.zip`), the extracted release folder's parent (holding
        `ml-100k/u.data`), the release folder itself, or the ratings file.
      variant: "100k", "1m" or "20m".

    Returns:
      The sequences, users in ascending raw-id order.

    Raises:
      DataFormatError: on a missing, empty or malformed file.
      ValueError: on an unknown variant.
    """
    if variant not in MOVIELENS_FILES:
        raise ValueError(f"MovieLens variant must be one of {tuple(MOVIELENS_FILES)}: {variant!r}")
    member, separator, header, decimal = MOVIELENS_FILES[variant]
    path = epath.Path(path)
    options = dict(num_columns=4, separator=separator, skip_header=header, decimal_columns=decimal)
    if path.is_file() and _is_zip(path):
        with path.open("rb") as f, zipfile.ZipFile(f) as archive:
            if member not in archive.namelist():
                raise DataFormatError(str(path), None, f"archive has no member {member!r}")
            with archive.open(member) as m:
                table = read_int_table(m, name=f"{path}:{member}", **options)
    else:
        candidates = [path / member, path / member.rsplit("/", 1)[-1], path]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataFormatError(str(path / member), None, "file not found")
        table = read_int_table(found, **options)
    sequences = sequences_from_ratings(table[:, 0], table[:, 1], table[:, 3])
    if sequences.num_users == 0:
        raise DataFormatError(
            str(path), None, f"no user has at least {MIN_USER_INTERACTIONS} ratings"
        )
    return sequences


def _is_zip(path: epath.Path) -> bool:
    with path.open("rb") as f:
        return zipfile.is_zipfile(f)
