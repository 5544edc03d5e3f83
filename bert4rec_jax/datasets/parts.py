"""The part files of `file.path`: one file, a directory of parts, or a glob, local or gs://.

What Spark, BigQuery (`EXPORT DATA`), Beam and Hive write: a directory of part files, often
hive-partitioned (`date=2026-11-30/part-00017.parquet`). `list_parts` finds them through
`etils.epath`, in the one order that defines "file order" for a directory (see `list_parts`),
with the partition values of each part's path. Needs no pyarrow, so the corpus cache's index
(`prepared`) and the content key (`file_options`) can list parts cheaply.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse

from etils import epath

from bert4rec_jax.datasets import readers

# Hive's name for the partition of rows whose partition column is null.
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class Part:
    """One part file.

    Attributes:
      name: the part as errors name it: its whole path (for a single file, as given).
      path: the file.
      relative: its path below the directory or the glob's fixed prefix, with "/" between the
        components; "" for a single file.
      partition: the hive partition values of its directories ("key=value"), as written in the
        path (unquoted); None for Hive's null partition.
    """

    name: str
    path: epath.Path
    relative: str = ""
    partition: dict[str, str | None] = dataclasses.field(default_factory=dict)


def is_glob(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


def _hidden(name: str) -> bool:
    # Hadoop's convention, followed by Spark, Hive and Beam: `_SUCCESS`, `_temporary/`,
    # `_committed_*`, `.part-00000.crc` and `.spark-staging/` are bookkeeping, not data.
    return name.startswith(("_", "."))


def _split_glob(path: str) -> tuple[epath.Path, str]:
    """The fixed directory before a glob's first wildcard, and the pattern below it."""
    scheme, sep, rest = path.rpartition("://")
    prefix = scheme + sep
    components = rest.split("/")
    fixed = next(i for i, c in enumerate(components) if is_glob(c))
    root = prefix + "/".join(components[:fixed])
    return epath.Path(root or "."), "/".join(components[fixed:])


def _partition(relative: str) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for component in relative.split("/")[:-1]:
        key, sep, value = component.partition("=")
        if sep and key:
            value = urllib.parse.unquote(value)  # Hive and Spark escape "/", "=", "%", ...
            values[urllib.parse.unquote(key)] = None if value == HIVE_NULL else value
    return values


def list_parts(path: str) -> list[Part]:
    """The part files of a file, a directory or a glob, in file order.

    A directory's parts are all its files at any depth, and a glob's are the files it matches,
    less those whose name or whose directory's name below the root starts with "_" or "."
    (`_SUCCESS`, `.crc` files, `_temporary/`: bookkeeping of the tools that write parts).
    They are sorted by their path below the root as strings (`date=2026-11-30/part-00017`), which
    is what "file order" means for them: part after part in that order, each from its start.
    Zero-padded names (Spark's `part-00017`, BigQuery's `000000000017`) sort as numbers do.

    Args:
      path: a file, a directory or a glob (`*`, `?` and `[...]` in any component, e.g.
        `gs://bucket/events/date=2026-11-*/part-*.parquet`; `etils.epath` refuses `**`, so give
        the directory instead), local or any file system `etils.epath` reads.

    Returns:
      The parts; one, with `relative` "", for a file.

    Raises:
      readers.DataFormatError: nothing at `path`, an empty directory, or a glob without a match.
    """
    if is_glob(path):
        root, pattern = _split_glob(path)
        if "**" in pattern:
            raise readers.DataFormatError(
                path,
                None,
                "a glob cannot hold ** (etils.epath refuses it); give the directory: "
                "every file below it is a part",
            )
        found = [p for p in root.glob(pattern) if p.is_file()]
        where = f"no file matches the glob (below {os.fspath(root)})"
    else:
        root = epath.Path(path)
        if root.is_file():
            return [Part(path, root)]
        if not root.is_dir():
            raise readers.DataFormatError(path, None, "file not found")
        found = []
        for directory, subdirectories, names in root.walk():
            subdirectories.sort()
            found.extend(epath.Path(directory) / name for name in names)
        where = "no part files in this directory"
    parts = []
    for p in found:
        relative = p.relative_to(root).as_posix()
        if not any(_hidden(c) for c in relative.split("/")):
            parts.append(Part(os.fspath(p), p, relative, _partition(relative)))
    if not parts:
        skipped = f" ({len(found)} skipped: names starting with _ or .)" if found else ""
        raise readers.DataFormatError(path, None, where + skipped)
    return sorted(parts, key=lambda part: part.relative)
