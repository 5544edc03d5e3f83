"""Your own interaction log's options (`config.file.*`), checked, and the key of its content.

The log is one file or a directory (or glob) of part files (`parts`). Kept apart from the
pyarrow reader (`interactions`): the data set's request and the TFDS builder's config name need
the options and the key, not the reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

from bert4rec_jax.datasets import hashes, parts, readers

FORMATS = ("csv", "tsv", "parquet", "paper")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "paper",
}
# Compressed text files (CSV, TSV, paper), by the extension after the format's: "x.csv.gz". They
# are read decompressed as a stream, and line numbers in errors count the decompressed text.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def compression(path: str | os.PathLike) -> str | None:
    """pyarrow's codec for a compressed file's extension, or None."""
    return COMPRESSIONS.get(os.path.splitext(os.fspath(path))[1].lower())


def format_of_name(name: str) -> str | None:
    """The format a file's name says (`_EXTENSIONS`, text formats also compressed), or None."""
    name = os.path.basename(name.rstrip("/")).lower()
    compressed = compression(name) is not None
    if compressed:
        name = os.path.splitext(name)[0]
    for extension, fmt in _EXTENSIONS.items():
        if compressed and fmt == "parquet":
            continue  # Parquet compresses inside the file
        if name.endswith(extension):
            return fmt
    return None


def format_of_parts(found: list[parts.Part]) -> str:
    """The one format that the names of a directory's part files say.

    Raises:
      readers.DataFormatError: naming a part whose name says no format or another format than
        the first part's.
    """
    first = format_of_name(found[0].name)
    for part in found:
        fmt = format_of_name(part.name)
        if fmt is None:
            problem = "cannot tell this part's format from its name"
        elif fmt != first:
            problem = f"this part's name says {fmt}, {found[0].relative}'s says {first}"
        else:
            continue
        raise readers.DataFormatError(
            part.name, None, f"{problem}; set file.format to one of {FORMATS}"
        )
    return first


@dataclasses.dataclass(frozen=True)
class FileOptions:
    """What to read from an interaction file and how to filter it (`config.file.*`).

    Attributes:
      path: the file, a directory of part files or a glob (`parts.list_parts`: hidden and
        `_`-files skipped, hive partition values readable as columns, parts read in the order of
        their paths); local or any file system `etils.epath` reads (gs://...).
      format: "csv", "tsv", "parquet" or "paper" (`<user> <item>` lines); "" = from the
        file's extension (.csv, .tsv/.tab, .parquet/.pq, .txt = paper), also when the text
        formats' files are compressed (.csv.gz, .tsv.bz2, .txt.zst, ...: `COMPRESSIONS`); for
        a directory or glob without one, from its parts' names (which must agree).
      columns: for a CSV/TSV file without a header line: its column names, comma-separated
        (e.g. "user_id,item_id,rating,timestamp"); "" = the first line is the header.
      delimiter: CSV/TSV field separator, one character ("\\t" for a tab); "" = "," for csv,
        tab for tsv.
      user_column: the column of user ids.
      item_column: the column of item ids.
      timestamp_column: the column that orders each user's interactions; "" = file order.
      min_user_interactions: users with fewer interactions are dropped (the paper's 5).
      min_item_interactions: items with fewer interactions are dropped; 0 = keep all.
      drop_repeats: drop an interaction with the same item as the user's previous one.
      drop_duplicates: drop exact duplicate rows (same user, item and timestamp), keeping the
        first; they are counted and warned about either way.
      item_features_path: optional CSV of categorical item features, one row per item, with a
        header naming `item_column` and one column per feature (`|` between the values of a
        multi-valued cell); "" = none. Read at every load (`features.read_item_features_csv`),
        not part of the prepared data, so it may change without preparing the file anew.
    """

    path: str
    format: str = ""
    columns: str = ""
    delimiter: str = ""
    user_column: str = "user_id"
    item_column: str = "item_id"
    timestamp_column: str = ""
    min_user_interactions: int = readers.MIN_USER_INTERACTIONS
    min_item_interactions: int = 0
    drop_repeats: bool = False
    item_features_path: str = ""
    drop_duplicates: bool = False

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Any]) -> FileOptions:
        """Builds and checks the options from `config.file` (a dict or ConfigDict).

        Raises:
          ValueError: naming the `file.*` field that is unknown, missing or invalid.
        """
        fields = dict(fields)
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(valid))
        if unknown:
            raise ValueError(f"unknown file.* fields {unknown}; valid: {', '.join(valid)}")
        if not fields.get("path"):
            raise ValueError(
                "file.path is empty: name the interaction file with --config.file.path=PATH"
            )
        options = cls(**fields)
        if not options.format and format_of_name(options.path) is None:
            # A directory (or glob) of parts, named like Spark's and BigQuery's output folders
            # ("events/"), says its format through its parts' names. Only files are refused
            # here, by `resolved_format` below, as before.
            path = options.path
            if parts.is_glob(path) or epath.Path(path).is_dir():
                fmt = format_of_parts(parts.list_parts(path))
                options = dataclasses.replace(options, format=fmt)
        options.check()
        return options

    @property
    def resolved_format(self) -> str:
        if self.format:
            return self.format
        fmt = format_of_name(self.path)
        if fmt is not None:
            return fmt
        raise ValueError(
            f"file.format is empty and {self.path!r} has no known extension "
            f"({', '.join(_EXTENSIONS)}, the text ones also followed by one of "
            f"{', '.join(COMPRESSIONS)}); set file.format to one of {FORMATS}"
        )

    @property
    def column_names(self) -> list[str] | None:
        """The names of a headerless file's columns, or None when the file has a header."""
        if not self.columns:
            return None
        return [c.strip() for c in self.columns.split(",")]

    @property
    def wanted_columns(self) -> list[str]:
        """The columns read: user, item and (when set) timestamp."""
        return [self.user_column, self.item_column] + (
            [self.timestamp_column] if self.timestamp_column else []
        )

    @property
    def separator(self) -> str:
        if self.delimiter in ("\\t", "tab"):
            return "\t"
        return self.delimiter or ("\t" if self.resolved_format == "tsv" else ",")

    def check(self) -> None:
        """Raises `ValueError`, naming the field, on options that cannot work."""
        fmt = self.resolved_format
        if fmt not in FORMATS:
            raise ValueError(f"file.format={self.format!r}: must be one of {FORMATS} or ''")
        if self.min_user_interactions < 1:
            raise ValueError(
                f"file.min_user_interactions={self.min_user_interactions}: must be >= 1"
            )
        if self.min_item_interactions < 0:
            raise ValueError(
                f"file.min_item_interactions={self.min_item_interactions}: must be >= 0"
            )
        if fmt == "paper":
            if self.timestamp_column or self.columns:
                raise ValueError(
                    "file.format='paper' has two unnamed columns <user> <item> in time order: "
                    "leave file.timestamp_column and file.columns empty"
                )
            return
        if not self.user_column or not self.item_column:
            raise ValueError("file.user_column and file.item_column must name columns")
        wanted = self.wanted_columns
        if len(set(wanted)) != len(wanted):
            raise ValueError(
                f"file.user_column, file.item_column and file.timestamp_column must differ, "
                f"got {wanted}"
            )
        if fmt == "parquet" and compression(self.path):
            raise ValueError(
                f"file.path={self.path!r}: a Parquet file compresses inside itself; it cannot be "
                f"read through {os.path.splitext(self.path)[1]}"
            )
        if fmt != "parquet" and len(self.separator) != 1:
            raise ValueError(f"file.delimiter={self.delimiter!r}: must be one character")
        names = self.column_names
        if names is not None:
            if fmt == "parquet":
                raise ValueError("file.columns is for headerless CSV/TSV files, not Parquet")
            if len(set(names)) != len(names) or "" in names:
                raise ValueError(f"file.columns={self.columns!r}: names must be unique, non-empty")
            for field, column in zip(
                ("user_column", "item_column", "timestamp_column"), wanted, strict=False
            ):
                if column not in names:
                    raise ValueError(
                        f"file.{field}={column!r} is not one of file.columns ({', '.join(names)})"
                    )

    def key(self) -> dict[str, Any]:
        """Every option that changes the result, i.e. all but the path (the content counts)."""
        fields = dataclasses.asdict(self)
        del fields["path"]
        # Not read by read_sequences (features are joined at load time); leaving it out keeps
        # the keys of files prepared before the field existed.
        del fields["item_features_path"]
        if not self.drop_duplicates:
            del fields["drop_duplicates"]  # likewise: the keys of files prepared before it
        fields["format"] = self.resolved_format
        if self.resolved_format != "parquet":
            fields["delimiter"] = self.separator
        return fields


def source_key(options: FileOptions) -> str:
    """16 hex digits identifying what `read_sequences` would produce: content + options.

    A file's content is hashed whole (`hashes.content_fingerprint`), so an edited file gets a
    new key; its path and modification time are not part of it. A directory's (or glob's) key
    covers every part's name below it, size and whole content (`hashes.parts_fingerprint`):
    an added, removed, renamed or edited part is noticed, while an identical copy elsewhere (on
    each host, in another bucket) shares the key. Hashing reads the parts once more per load
    (a few seconds for 200M rows of Parquet, several parts at once); sizes and times alone
    would be cheaper but would miss a same-size edit and split identical copies.
    """
    found = parts.list_parts(options.path)
    if len(found) == 1 and not found[0].relative:
        content = hashes.content_fingerprint(options.path)  # one file: the key as before
    else:
        content = hashes.parts_fingerprint([(p.relative, p.path) for p in found])
    text = json.dumps({"content": content, **options.key()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
