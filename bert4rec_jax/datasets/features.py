"""Categorical side features of items and users: parsing, alignment with the corpus, storage.

Sources: MovieLens-100K's `u.item` / `u.user` (`read_movielens_100k_items` / `_users`) and your
own item-features CSV (`read_item_features_csv`), keyed by raw ids (`RawFeatures`) and aligned
with the corpus's dense ids by `align_items` / `align_users` (the layout is `Features`'s).
Numpy and the standard library only: the corpus cache is read without TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import zipfile

import numpy as np
from etils import epath

from bert4rec_jax.datasets import readers

# Per feature name, int32 [rows, width] category ids 1..C, padded with 0 = none: width 1 for a
# single-valued feature (a user's gender), the most values any row has for a multi-valued one (a
# movie's genres); a row of zeros has no value (an unknown item or user, padding, [MASK]). The
# model embeds every id and pools each feature's non-zero ids, so one code path serves both.
# Aligned with the corpus: items [num_items + 2, width], row i = dense item i (rows 0 and
# num_items + 1, padding and [MASK], are zero); users [num_users + 1, width], row u + 1 = corpus
# user u, row 0 the unknown user (zero). Raw ids the corpus lacks are ignored, corpus ids the
# source lacks get zeros.
Features = dict[str, np.ndarray]

# u.genre's order: the 19 flags of u.item, columns 6..24. Category id = flag index + 1.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# Release-year buckets. Category 1 is "no date" (one film in ML-100K); 2 is "before 1940" (31
# films, too few for decades of their own); then decades 1940s..1980s; then single years 1990,
# 1991, ..., 1998 and later. 80% of ML-100K's films are from 1990-1998, so one "1990s" bucket
# would say almost nothing about them; a year of its own tells a new release from an older one.
YEAR_UNKNOWN = 1
_YEAR_EDGES = np.array([1940, 1950, 1960, 1970, 1980, *range(1990, 1999)])
NUM_YEAR_BUCKETS = len(_YEAR_EDGES) + 2  # ids 1..16: unknown, before 1940, one per edge
# MovieLens-1M's age groups (its README), used for ML-100K's exact ages too:
# under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+ -> category ids 1..7.
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
ML100K_GENDERS = ("M", "F")


@dataclasses.dataclass(frozen=True, eq=False)
class RawFeatures:
    """Features keyed by the source's raw ids (before the corpus remaps them).

    Attributes:
      raw_ids: [n], int64 or unicode; unique.
      features: name -> int32 [n, width], category ids, 0 = none; row j belongs to raw_ids[j].
    """

    raw_ids: np.ndarray
    features: Features


def year_bucket(years: np.ndarray) -> np.ndarray:
    """int32 [n]: the release-year category of each year (0 or negative = unknown date)."""
    years = np.asarray(years, dtype=np.int64)
    bucket = 2 + np.searchsorted(_YEAR_EDGES, years, side="right")
    return np.where(years > 0, bucket, YEAR_UNKNOWN).astype(np.int32)


def age_bucket(ages: np.ndarray) -> np.ndarray:
    """int32 [n]: MovieLens-1M's age group of each age, 1..7."""
    return (1 + np.searchsorted(_AGE_EDGES, np.asarray(ages), side="right")).astype(np.int32)


def _pad_lists(values: list[list[int]]) -> np.ndarray:
    """int32 [n, width]: lists of category ids padded with 0 (width >= 1)."""
    width = max([1, *(len(v) for v in values)])
    out = np.zeros((len(values), width), np.int32)
    for row, ids in enumerate(values):
        out[row, : len(ids)] = ids
    return out


def _member_text(source: epath.Path, name: str, missing_ok: bool) -> tuple[str, str] | None:
    """(text, where) of `ml-100k/<name>` in a release zip, folder or the folder's parent.

    None when it is missing and `missing_ok`; else a missing file raises DataFormatError.
    """
    if source.is_file() and zipfile.is_zipfile(io.BytesIO(source.read_bytes())):
        member = f"ml-100k/{name}"
        with zipfile.ZipFile(io.BytesIO(source.read_bytes())) as archive:
            if member in archive.namelist():
                return archive.read(member).decode("latin-1"), f"{source}:{member}"
        if missing_ok:
            return None
        raise readers.DataFormatError(str(source), None, f"archive has no {member!r}")
    folder = source.parent if source.is_file() else source
    for candidate in (folder / name, folder / "ml-100k" / name):
        if candidate.is_file():
            # The release is latin-1 (titles such as "Misérables").
            return candidate.read_bytes().decode("latin-1"), str(candidate)
    if missing_ok:
        return None
    raise readers.DataFormatError(str(folder / name), None, "file not found")


def _fields(text: str, where: str, count: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank `|`-separated line; checks the field count."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != count:
            raise readers.DataFormatError(
                where, number, f"expected {count} '|'-separated fields, got {len(fields)}"
            )
        rows.append((number, fields))
    if not rows:
        raise readers.DataFormatError(where, None, "file is empty")
    return rows


def _int(value: str, where: str, line: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise readers.DataFormatError(where, line, f"{what} {value!r} is not an integer") from None


def read_movielens_100k_items(
    source: epath.PathLike, *, missing_ok: bool = False
) -> RawFeatures | None:
    """MovieLens-100K's item features from `u.item`: "genre" (multi-valued) and "year".

    Args:
      source: the release zip, the `ml-100k` folder, its parent, or a file inside the folder
        (e.g. `u.data`).
      missing_ok: return None when there is no `u.item` (a copy holding only the ratings).

    Returns:
      Features by raw movie id: "genre" [n, max genres] (ids 1..19 in `ML100K_GENRES` order),
      "year" [n, 1] (`year_bucket` of the release date's year).

    Raises:
      readers.DataFormatError: a missing or malformed file, naming its line.
    """
    found = _member_text(epath.Path(source), "u.item", missing_ok)
    if found is None:
        return None
    text, where = found
    ids, genres, years = [], [], []
    for line, fields in _fields(text, where, 5 + len(ML100K_GENRES)):
        ids.append(_int(fields[0], where, line, "movie id"))
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise readers.DataFormatError(where, line, f"genre flags must be 0 or 1: {flags}")
        genres.append([g + 1 for g, f in enumerate(flags) if f == "1"])
        date = fields[2].strip()  # e.g. 01-Jan-1995, or empty
        year = date.rsplit("-", 1)[-1] if date else ""
        years.append(_int(year, where, line, "release year") if year else 0)
    return RawFeatures(
        raw_ids=np.asarray(ids, np.int64),
        features={"genre": _pad_lists(genres), "year": year_bucket(np.asarray(years))[:, None]},
    )


def read_movielens_100k_users(
    source: epath.PathLike, *, missing_ok: bool = False
) -> RawFeatures | None:
    """MovieLens-100K's user features from `u.user`: "age", "gender", "occupation".

    Args:
      source: as for `read_movielens_100k_items`.
      missing_ok: return None when there is no `u.user`.

    Returns:
      Features by raw user id, each [n, 1]: "age" (`age_bucket`, 1..7), "gender" (1 = M,
      2 = F), "occupation" (1.. in the sorted order of the occupations present).

    Raises:
      readers.DataFormatError: a missing or malformed file, naming its line.
    """
    found = _member_text(epath.Path(source), "u.user", missing_ok)
    if found is None:
        return None
    text, where = found
    rows = _fields(text, where, 5)
    occupations = sorted({fields[3].strip() for _, fields in rows})
    ids, ages, genders, jobs = [], [], [], []
    for line, fields in rows:
        ids.append(_int(fields[0], where, line, "user id"))
        ages.append(_int(fields[1], where, line, "age"))
        if fields[2] not in ML100K_GENDERS:
            raise readers.DataFormatError(where, line, f"gender {fields[2]!r} is not M or F")
        genders.append(ML100K_GENDERS.index(fields[2]) + 1)
        jobs.append(occupations.index(fields[3].strip()) + 1)
    return RawFeatures(
        raw_ids=np.asarray(ids, np.int64),
        features={
            "age": age_bucket(np.asarray(ages))[:, None],
            "gender": np.asarray(genders, np.int32)[:, None],
            "occupation": np.asarray(jobs, np.int32)[:, None],
        },
    )


def read_item_features_csv(path: epath.PathLike, item_column: str) -> RawFeatures:
    """Your own item features: a CSV with a header, one row per item.

    The column `item_column` holds raw item ids as in the interaction file; every other column
    is a categorical feature named after its header. A cell holds one value, several values
    separated by `|` (a multi-valued feature), or nothing (no value). Values are strings; each
    feature's distinct values get category ids 1.. in sorted order.

    Args:
      path: the CSV file (`file.item_features_path`).
      item_column: the column of item ids (`file.item_column`).

    Returns:
      The features by raw item id (strings; `align_items` matches them to integer ids too).

    Raises:
      readers.DataFormatError: a missing or empty file, no item column, no feature column, a row
        with the wrong number of cells, an empty or repeated item id; naming line and column.
    """
    name = str(path)
    path = epath.Path(path)
    if not path.is_file():
        raise readers.DataFormatError(name, None, "file not found (file.item_features_path)")
    text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise readers.DataFormatError(name, None, "file is empty (expected a header line)")
    header = [h.strip() for h in header]
    if item_column not in header:
        raise readers.DataFormatError(
            name,
            1,
            f"no column {item_column!r} (file.item_column); the header's columns are: "
            f"{', '.join(header)}",
        )
    key = header.index(item_column)
    names = [h for i, h in enumerate(header) if i != key]
    if not names or any(not n for n in names):
        raise readers.DataFormatError(
            name, 1, "every column besides the item column must name a feature (none is empty)"
        )
    ids: list[str] = []
    cells: list[list[list[str]]] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise readers.DataFormatError(
                name, line, f"expected {len(header)} comma-separated cells, got {len(row)}"
            )
        item = row[key].strip()
        if not item:
            raise readers.DataFormatError(name, line, f"column {item_column!r}: empty item id")
        if item in seen:
            raise readers.DataFormatError(
                name, line, f"column {item_column!r}: item {item!r} repeats line {seen[item]}"
            )
        seen[item] = line
        ids.append(item)
        values = [c for i, c in enumerate(row) if i != key]
        cells.append([[v.strip() for v in c.split("|") if v.strip()] for c in values])
    if not ids:
        raise readers.DataFormatError(name, None, "no item rows after the header")
    features = {}
    for f, feature in enumerate(names):
        vocab = sorted({v for row in cells for v in row[f]})
        index = {v: i + 1 for i, v in enumerate(vocab)}
        features[feature] = _pad_lists([[index[v] for v in row[f]] for row in cells])
    return RawFeatures(raw_ids=np.asarray(ids), features=features)


def _positions(target: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of `target`, rows of `source`) holding the same raw id.

    String source ids are matched to integer targets by their decimal value; a string that is
    not a canonical integer matches nothing.
    """
    # String ids are unicode or object (str) arrays (`corpus.raw_id_array`).
    if target.dtype.kind in "iu" and source.dtype.kind in "UO":
        ok = np.array([s.isdigit() and (s == "0" or not s.startswith("0")) for s in source], bool)
        rows = np.flatnonzero(ok)
        source = np.array([int(s) for s in source[rows]], np.int64)
    elif target.dtype.kind in "UO" and source.dtype.kind in "iu":
        rows, source = np.arange(len(source)), source.astype(str)
    else:
        rows = np.arange(len(source))
    order = np.argsort(target, kind="stable")
    found = np.searchsorted(target[order], source)
    found = np.minimum(found, len(target) - 1)
    hit = target[order][found] == source
    return order[found[hit]], rows[hit]


def _aligned(num_rows: int, offset: int, target: np.ndarray, raw: RawFeatures) -> Features:
    t_rows, s_rows = _positions(target, raw.raw_ids)
    out = {}
    for name, values in raw.features.items():
        table = np.zeros((num_rows, values.shape[1]), np.int32)
        table[t_rows + offset] = values[s_rows]
        out[name] = table
    return out


def align_items(raw_item_ids: np.ndarray, vocab_size: int, raw: RawFeatures) -> Features:
    """Item features by dense id: [vocab_size, width]; padding, [MASK], unknown items zero.

    Args:
      raw_item_ids: `Corpus.raw_item_ids` ([num_items + 1], entry 0 = padding).
      vocab_size: `Corpus.vocab_size` (num_items + 2).
      raw: features by raw item id; ids the corpus lacks are ignored.
    """
    # Entry 0 (padding, -1 or "") never matches a real raw id; skip it all the same.
    return _aligned(vocab_size, 1, raw_item_ids[1:], raw)


def align_users(raw_user_ids: np.ndarray, raw: RawFeatures) -> Features:
    """User features by corpus user: [num_users + 1, width], row u + 1 = user u, row 0 zero."""
    return _aligned(len(raw_user_ids) + 1, 1, raw_user_ids, raw)


def num_categories(features: Features) -> dict[str, int]:
    """Rows of each feature's embedding table: its largest category id + 1 (at least 2)."""
    return {name: max(2, int(v.max(initial=0)) + 1) for name, v in features.items()}


def check_features(features: Features, num_rows: int, what: str) -> None:
    """Raises ValueError unless every feature is int [num_rows, width >= 1] with ids >= 0."""
    for name, values in features.items():
        if values.ndim != 2 or values.shape[0] != num_rows or values.shape[1] < 1:
            raise ValueError(
                f"{what} feature {name!r} has shape {values.shape}; expected [{num_rows}, width]"
            )
        if values.dtype.kind not in "iu" or (values.size and values.min() < 0):
            raise ValueError(f"{what} feature {name!r} must hold category ids >= 0")
