"""Tests of reading your own interaction files (CSV, TSV, Parquet, paper format); no TFDS."""

import pathlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import write_file

from bert4rec_jax.datasets import file_options, interactions, readers


def _write(tmp_path, name, text):
    return str(write_file(tmp_path, name, text))  # the readers take str paths here


def _read(path, **fields):
    return interactions.read_sequences(
        file_options.FileOptions.from_mapping({"path": path, **fields})
    )


def _as_lists(encoded):
    """{raw user id: [raw item ids, oldest first]}."""
    seqs = encoded.sequences
    return {
        encoded.user_ids.tolist()[u]: encoded.item_ids[seqs.raw_items[start:end]].tolist()
        for u, start, end in zip(
            seqs.raw_user_ids, seqs.offsets[:-1], seqs.offsets[1:], strict=True
        )
    }


# Two users with string ids and ISO-8601 times, in no order. Bob's two views at 10:00 tie: they
# keep file order (tt2 before tt1). Each has 3 interactions, so min_user_interactions=3.
LOG = """user,item,time,rating
bob,tt3,2020-01-02T09:00:00,1
alice,tt1,2020-01-01T12:00:00,5
bob,tt2,2020-01-01T10:00:00,2
alice,tt9,2019-12-31T23:59:59,3
bob,tt1,2020-01-01T10:00:00,4
alice,tt2,2020-01-03T00:00:00,5
"""
COLUMNS = {"user_column": "user", "item_column": "item", "timestamp_column": "time"}
EXPECTED = {"alice": ["tt9", "tt1", "tt2"], "bob": ["tt2", "tt1", "tt3"]}


def test_csv_with_string_ids_and_iso_times(tmp_path):
    encoded = _read(_write(tmp_path, "log.csv", LOG), min_user_interactions=3, **COLUMNS)
    assert _as_lists(encoded) == EXPECTED
    # Sorted vocabularies, so dense order follows raw order.
    assert encoded.user_ids.tolist() == ["alice", "bob"]
    assert encoded.item_ids.tolist() == ["tt1", "tt2", "tt3", "tt9"]
    assert encoded.item_ids.dtype == object  # str objects, each as long as it is


def test_bom_blank_lines_and_crlf_are_tolerated(tmp_path):
    text = "\ufeff" + LOG.replace("\n", "\r\n").replace("\r\nbob,tt2", "\r\n\r\n\r\nbob,tt2")
    encoded = _read(_write(tmp_path, "excel.csv", text), min_user_interactions=3, **COLUMNS)
    assert _as_lists(encoded) == EXPECTED


def test_timestamp_kinds(tmp_path):
    # Unix seconds, floats, dates, ISO times with zones (compared in UTC): all order the same.
    times = {
        "ints": ["300", "100", "200"],
        "floats": ["3.5", "1e0", "2.25"],
        "dates": ["2021-03-01", "2021-01-01", "2021-02-01"],
        "zones": ["2021-01-01T02:00:00+00:00", "2021-01-01T03:00:00+02:00", "2021-01-01T01:30Z"],
    }
    for kind, values in times.items():
        rows = "".join(f"u,{item},{t}\n" for item, t in zip("abc", values, strict=True))
        path = _write(tmp_path, f"{kind}.csv", "user,item,t\n" + rows)
        encoded = _read(
            path,
            min_user_interactions=1,
            timestamp_column="t",
            user_column="user",
            item_column="item",
        )
        assert _as_lists(encoded) == {"u": ["b", "c", "a"]}, kind
        # Kept beside the items as seconds (numbers as unix seconds), for the temporal split.
        seconds = encoded.sequences.timestamps
        assert seconds.dtype == np.float64 and (np.diff(seconds) > 0).all(), kind
    assert seconds.tolist() == [1609462800.0, 1609464600.0, 1609466400.0]  # 01:00Z 01:30Z 02:00Z


def test_dates_and_parquet_times_become_unix_seconds(tmp_path):
    dates = "user,item,t\nu,a,2021-01-02\nu,b,2021-01-01\n"
    encoded = _read(_write(tmp_path, "dates.csv", dates), min_user_interactions=1, **_T)
    assert encoded.sequences.timestamps.tolist() == [1609459200.0, 1609545600.0]
    for kind in (pa.timestamp("ms"), pa.date32()):
        path = tmp_path / f"{str(kind).replace('[', '_').replace(']', '')}.parquet"
        at = pa.array([86_400_000, 0], pa.timestamp("ms")).cast(kind)
        pq.write_table(pa.table({"user": ["u", "u"], "item": ["a", "b"], "t": at}), path)
        encoded = _read(str(path), min_user_interactions=1, **_T)
        assert encoded.sequences.timestamps.tolist() == [0.0, 86_400.0], kind


_T = {"timestamp_column": "t", "user_column": "user", "item_column": "item"}


def test_integer_ids_and_file_order_without_timestamps(tmp_path):
    # Canonical integers are integer ids; no timestamp column: the file order is the order.
    path = _write(tmp_path, "ints.csv", "user_id,item_id\n10,7\n2,30\n10, 5\n2,7\n10,100\n")
    encoded = _read(path, min_user_interactions=1)
    assert _as_lists(encoded) == {2: [30, 7], 10: [7, 5, 100]}
    assert encoded.user_ids.dtype == np.int64 and encoded.item_ids.dtype == np.int64
    # One id with a leading zero makes the column string ids: "007" and "7" stay two ids.
    path = _write(tmp_path, "zeros.csv", "user_id,item_id\n1,007\n1,7\n1,7\n")
    encoded = _read(path, min_user_interactions=1)
    assert _as_lists(encoded) == {1: ["007", "7", "7"]}


def test_tsv_without_header_names_columns(tmp_path, shared_data):
    # MovieLens 100K's u.data: tab separated, no header, user item rating timestamp.
    encoded = _read(
        str(shared_data / "ml-100k" / "u.data"),
        format="tsv",
        columns="user_id,item_id,rating,timestamp",
        timestamp_column="timestamp",
    )
    seqs = encoded.sequences
    assert (seqs.num_users, len(seqs.raw_items), len(encoded.item_ids)) == (943, 100_000, 1682)
    # The same interactions as the MovieLens reader, which breaks time ties by item id instead
    # of file order: per user, the same multiset, and the same order where times differ.
    reference = readers.read_movielens_ratings(shared_data / "ml-100k" / "u.data", "100k")
    assert np.array_equal(encoded.user_ids[seqs.raw_user_ids], reference.raw_user_ids)
    ours = encoded.item_ids[seqs.raw_items]
    for u in range(0, 943, 97):
        a, b = slice(*seqs.offsets[u : u + 2]), slice(*reference.offsets[u : u + 2])
        assert sorted(ours[a].tolist()) == sorted(reference.raw_items[b].tolist())


def test_filters_apply_in_the_documented_order(tmp_path):
    # u1: a a b c (a repeats); u2: a b; u3: c d d.
    rows = ["u1,a", "u1,a", "u1,b", "u1,c", "u2,a", "u2,b", "u3,c", "u3,d", "u3,d"]
    path = _write(tmp_path, "f.csv", "user_id,item_id\n" + "\n".join(rows) + "\n")
    assert _as_lists(_read(path, min_user_interactions=1)) == {
        "u1": ["a", "a", "b", "c"],
        "u2": ["a", "b"],
        "u3": ["c", "d", "d"],
    }
    # Repeats first: then "a" has 2 interactions and "d" 1, so min_item=2 drops only "d"; then
    # u3 (c) has 1 interaction and min_user=2 drops it.
    encoded = _read(path, drop_repeats=True, min_item_interactions=2, min_user_interactions=2)
    assert _as_lists(encoded) == {"u1": ["a", "b", "c"], "u2": ["a", "b"]}
    # Without dropping repeats, "d" has 2 interactions and survives.
    encoded = _read(path, min_item_interactions=2, min_user_interactions=2)
    assert _as_lists(encoded) == {
        "u1": ["a", "a", "b", "c"],
        "u2": ["a", "b"],
        "u3": ["c", "d", "d"],
    }


def test_parquet_with_typed_columns(tmp_path):
    times = pa.array(np.array([3, 1, 2, 5, 4], dtype="datetime64[s]"))
    table = pa.table(
        {
            "user": pa.array(["x", "x", "x", "y", "y"]),
            "item": pa.array([30, 10, 20, 10, 40], pa.int32()),
            "at": times,
        }
    )
    path = str(tmp_path / "log.parquet")
    pq.write_table(table, path, row_group_size=2)
    encoded = _read(
        path, user_column="user", item_column="item", timestamp_column="at", min_user_interactions=1
    )
    assert _as_lists(encoded) == {"x": [10, 20, 30], "y": [40, 10]}
    assert encoded.item_ids.dtype == np.int64


def test_paper_format_through_the_file_reader(tmp_path):
    # Users need not be contiguous here: each user's lines keep their order.
    path = _write(tmp_path, "p.txt", "\ufeff5 1\n6 9\n\n5 2\n6 8\n5 3\n")
    assert _as_lists(_read(path, min_user_interactions=1)) == {5: [1, 2, 3], 6: [9, 8]}


def test_large_file_in_many_blocks_with_mixed_timestamp_blocks(tmp_path, monkeypatch):
    # Small blocks make pyarrow infer the timestamp type from the first block (integers) and
    # meet floats later: the reader falls back to parsing the column itself.
    monkeypatch.setattr(interactions, "_CSV_BLOCK_BYTES", 1 << 10)
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, size=2000)
    items = rng.integers(0, 300, size=2000)
    times = [str(t) for t in rng.permutation(2000)]
    times[1900] = "1900.5"
    body = "".join(f"u{u},i{i},{t}\n" for u, i, t in zip(users, items, times, strict=True))
    path = _write(tmp_path, "big.csv", "u,i,t\n" + body)
    encoded = _read(
        path, user_column="u", item_column="i", timestamp_column="t", min_user_interactions=1
    )
    order = np.lexsort((np.array(times, dtype=float), users))
    expected = {}
    for k in order:
        expected.setdefault(f"u{users[k]}", []).append(f"i{items[k]}")
    assert _as_lists(encoded) == expected


# ---- Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fields, line, problem",
    [
        (
            "user,itm,time\nbob,tt1,5\n",
            {},
            1,
            "no column 'item' (file.item_column); the header's columns are: user, itm, time",
        ),
        (
            "user,item,time\nbob,tt1,5\n\nbob,tt2,x5\n",
            {},
            4,
            "column 'time': cannot parse 'x5' as a timestamp; the column's first value '5' is a "
            "number",
        ),
        (
            "user,item,time\nbob,tt1,2020-01-01T00:00:00\nbob,tt1,2020-01-02T00:00:00Z\n",
            {},
            3,
            "is an ISO-8601 time without a zone, and every value must be the same kind",
        ),
        ("user,item,time\nbob,tt1,5\n,tt2,6\n", {}, 3, "column 'user': empty id"),
        ("user,item,time\nbob,tt1,5\nbob,tt2,\n", {}, 3, "column 'time': missing timestamp"),
        ("user,item,time\nbob,tt1,5\nbob,tt2\n", {}, 3, "expected 3 columns, got 2"),
        (
            "user,item\n1,2\n1,3\n1,4\n",
            {"min_user_interactions": 4, "timestamp_column": ""},
            None,
            "no user left after filtering: no user has at least 4 interactions",
        ),
        (
            "user,item,time\nbob,tt1,5\nbob,tt\udcff2,6\n",
            {},
            3,
            "column 'item': id is not valid UTF-8",
        ),
        ("", {}, None, "file is empty"),
        ("\ufeffuser,item,time\n\n", {}, None, "file is empty"),
    ],
)
def test_csv_errors_name_file_line_and_column(tmp_path, text, fields, line, problem):
    path = _write(tmp_path, "bad.csv", text.encode("utf-8", "surrogateescape"))
    options = {**COLUMNS, "min_user_interactions": 1, **fields}
    with pytest.raises(readers.DataFormatError) as info:
        _read(path, **options)
    err = info.value
    assert err.path == path and err.line == line
    assert problem in str(err)
    assert str(err).startswith(path if line is None else f"{path}:{line}:")


def test_error_line_counts_blank_lines_in_a_large_file(tmp_path, monkeypatch):
    monkeypatch.setattr(interactions, "_CSV_BLOCK_BYTES", 1 << 10)
    body = "".join(f"u{k % 7},i{k},{k}\n" + ("\n" if k % 10 == 0 else "") for k in range(1000))
    body = body.replace("u6,i503,503\n", "u6,i503,oops\n")
    path = _write(tmp_path, "big.csv", "u,i,t\n" + body)
    with pytest.raises(readers.DataFormatError) as info:
        _read(path, user_column="u", item_column="i", timestamp_column="t")
    # Line = 1 (header) + 504 data lines + 51 blank ones (after k = 0, 10, ..., 500).
    assert info.value.line == 1 + 504 + 51
    assert "'oops'" in str(info.value)


def test_headerless_column_names_are_checked(tmp_path):
    path = _write(tmp_path, "u.data", "1\t2\t5\t100\n")
    with pytest.raises(
        ValueError, match=r"file\.timestamp_column='ts' is not one of file\.columns"
    ):
        _read(path, format="tsv", columns="user_id,item_id,rating,timestamp", timestamp_column="ts")
    with pytest.raises(
        ValueError, match=r"file\.format is empty and .*u\.data.* no known extension"
    ):
        _read(path)
    with pytest.raises(ValueError, match=r"unknown file\.\* fields \['colums'\]"):
        _read(path, colums="a,b")


def test_parquet_errors_name_row_group_and_column(tmp_path):
    table = pa.table(
        {
            "user_id": pa.array([1, 1, 2, 2, 3]),
            "item_id": pa.array(["a", "b", "c", None, "e"]),
            "ts": pa.array(["1", "2", "3", "4", "five"]),
        }
    )
    path = str(tmp_path / "bad.parquet")
    pq.write_table(table, path, row_group_size=2)
    with pytest.raises(readers.DataFormatError) as info:
        _read(path, min_user_interactions=1)
    assert str(info.value) == (
        f"{path}: row group 1, row 1 (0-based), column 'item_id': missing id"
    )
    no_null = _parquet(tmp_path, table.set_column(1, "item_id", pa.array(list("abcde"))))
    with pytest.raises(
        readers.DataFormatError,
        match=r"row group 2, row 0 \(0-based\), column 'ts': cannot parse 'five' as a timestamp",
    ):
        _read(str(no_null), timestamp_column="ts", min_user_interactions=1)
    with pytest.raises(
        readers.DataFormatError,
        match=r"no column 'time' \(file\.timestamp_"
        r"column\); the file's columns are: user_id, item_id, ts",
    ):
        _read(path, timestamp_column="time")
    negative = _parquet(tmp_path, table.set_column(0, "user_id", pa.array([1, 1, -2, 2, 3])))
    with pytest.raises(readers.DataFormatError, match=r"row group 1, row 0 .*negative id -2"):
        _read(str(negative), min_user_interactions=1)
    floats = _parquet(tmp_path, table.set_column(0, "user_id", pa.array([1.0, 1, 2, 2, 3])))
    with pytest.raises(
        readers.DataFormatError,
        match=r"column 'user_id' has type double; ids must be integers or strings",
    ):
        _read(str(floats), min_user_interactions=1)
    with pytest.raises(readers.DataFormatError, match=r"cannot read as Parquet"):
        _read(_write(tmp_path, "not.parquet", "user_id,item_id\n1,2\n"))


def _parquet(tmp_path, table, name="t.parquet"):
    path = tmp_path / name
    pq.write_table(table, path, row_group_size=2)
    return path


# ---- Compressed files ---------------------------------------------------------------------


def _compressed(tmp_path, name, text, codec):
    path = tmp_path / name
    with pa.output_stream(str(path), compression=codec) as f:
        f.write(text.encode())
    return str(path)


@pytest.mark.parametrize(
    "name, codec", [("log.csv.gz", "gzip"), ("log.csv.zst", "zstd"), ("log.tsv.bz2", "bz2")]
)
def test_compressed_files_are_read_by_their_extension(tmp_path, name, codec):
    text = LOG.replace(",", "\t") if ".tsv" in name else LOG
    encoded = _read(_compressed(tmp_path, name, text, codec), min_user_interactions=3, **COLUMNS)
    assert _as_lists(encoded) == EXPECTED


def test_compressed_paper_file(tmp_path):
    path = _compressed(tmp_path, "beauty.txt.gz", "1 10\n1 11\n2 12\n", "gzip")
    assert _as_lists(_read(path, min_user_interactions=1)) == {1: [10, 11], 2: [12]}


@pytest.mark.parametrize("fmt", ["", "csv"])
def test_error_line_in_a_gz_file_counts_decompressed_lines(tmp_path, fmt):
    lines = ["user,item,time"] + [f"u{i % 300},i{i % 50},{i}" for i in range(15_000)]
    lines.insert(15_001, "u7,i8")  # line 15,002: the header is line 1
    path = _compressed(tmp_path, "big.csv.gz", "\n".join(lines) + "\n", "gzip")
    with pytest.raises(readers.DataFormatError, match=r"big\.csv\.gz:15002: expected 3 columns"):
        _read(path, format=fmt, **COLUMNS)


def test_parquet_cannot_be_read_through_gz(tmp_path):
    path = str(tmp_path / "t.parquet.gz")
    with pytest.raises(ValueError, match=r"file.path=.*Parquet file compresses inside"):
        file_options.FileOptions.from_mapping({"path": path, "format": "parquet"})
    with pytest.raises(ValueError, match=r"file.format is empty .* no known extension"):
        file_options.FileOptions.from_mapping({"path": path})


# ---- Exact duplicates ---------------------------------------------------------------------

# Alice's 12:00 view of tt1 is in the file twice (lines 3 and 9), with another item of the same
# time between; bob's tt2 and tt1 share a time but differ, so they are no duplicates.
DUPLICATED = LOG + "alice,tt7,2020-01-01T12:00:00,1\nalice,tt1,2020-01-01T12:00:00,5\n"


def test_exact_duplicates_are_counted_and_warned_about(tmp_path, caplog):
    path = _write(tmp_path, "dup.csv", DUPLICATED)
    with caplog.at_level("INFO"):
        encoded = _read(path, min_user_interactions=3, **COLUMNS)
    assert _as_lists(encoded)["alice"] == ["tt9", "tt1", "tt7", "tt1", "tt2"]  # kept by default
    assert re.search(r"dup\.csv: 1 exact duplicate rows .*the first at line 9; kept", caplog.text)
    assert re.search(r"Read .*dup\.csv: 8 rows read, 1 exact duplicates;", caplog.text)


def test_drop_duplicates_keeps_the_first_of_each(tmp_path, caplog):
    path = _write(tmp_path, "dup.csv", DUPLICATED + DUPLICATED.split("\n", 1)[1])
    with caplog.at_level("INFO"):
        encoded = _read(path, min_user_interactions=3, drop_duplicates=True, **COLUMNS)
    assert _as_lists(encoded) == {
        "alice": ["tt9", "tt1", "tt7", "tt2"],
        "bob": ["tt2", "tt1", "tt3"],
    }
    # The whole log twice, plus the one repeated row: 9 of 16 rows are later copies.
    assert "9 exact duplicates, 7 after dropping duplicates" in caplog.text


def test_files_without_timestamps_count_no_duplicates(tmp_path, caplog):
    path = _write(tmp_path, "plain.csv", "u,i\n1,2\n1,2\n1,3\n")
    with caplog.at_level("INFO"):
        encoded = _read(path, user_column="u", item_column="i", min_user_interactions=1)
    assert _as_lists(encoded) == {1: [2, 2, 3]}  # a repeat, not a duplicate
    assert "duplicate" not in caplog.text


def test_an_id_over_the_limit_is_refused_naming_its_line(tmp_path):
    long_id = "https://example.com/" + "x" * 200_000
    text = "user,item\n" + "u1,a\n" * 5 + f"u2,{long_id}\n" + "u2,b\n"
    path = _write(tmp_path, "long.csv", text)
    with pytest.raises(readers.DataFormatError, match=r"long\.csv:7: column 'item': id of 200,020"):
        _read(path, user_column="user", item_column="item", min_user_interactions=1)
    # Up to the limit, long ids are ids like any other.
    ok = "u1,a\n" * 4 + "u1," + "y" * 10_000 + "\n"
    encoded = _read(
        _write(tmp_path, "ok.csv", "user,item\n" + ok),
        user_column="user",
        item_column="item",
        min_user_interactions=1,
    )
    assert [len(s) for s in encoded.item_ids] == [1, 10_000]


# ---- Directories of part files ------------------------------------------------------------


def _arrays(encoded):
    seqs = encoded.sequences
    return (
        seqs.raw_user_ids.tolist(),
        seqs.offsets.tolist(),
        seqs.raw_items.tolist(),
        encoded.user_ids.tolist(),
        encoded.item_ids.tolist(),
    )


def _write_parts(root, table, cuts, fmt="parquet", names=None, **write_options):
    """Writes `table`'s rows [cuts[k], cuts[k + 1]) as part k, the last part first (creation
    order is not file order)."""
    root.mkdir(parents=True, exist_ok=True)
    bounds = list(zip(cuts[:-1], cuts[1:], strict=True))
    for k in reversed(range(len(bounds))):
        a, b = bounds[k]
        name = names[k] if names else f"part-{k:05d}.{fmt}"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        part = table.slice(a, b - a)
        if fmt == "parquet":
            pq.write_table(part, path, **write_options)
        else:
            pacsv.write_csv(part, path)
    return str(root)


def test_a_directory_of_parts_reads_as_the_one_file(tmp_path):
    table = pacsv.read_csv(_write(tmp_path, "log.csv", LOG))
    single = _read(_write(tmp_path, "log.csv", LOG), min_user_interactions=3, **COLUMNS)
    for fmt in ("csv", "parquet"):
        root = _write_parts(tmp_path / fmt, table, [0, 1, 1, 4, 6], fmt)  # one part empty
        assert _arrays(_read(root, min_user_interactions=3, **COLUMNS)) == _arrays(single)
        (tmp_path / fmt / "_SUCCESS").write_text("")
        glob = str(tmp_path / fmt / f"part-*.{fmt}")
        assert _arrays(_read(glob, min_user_interactions=3, **COLUMNS)) == _arrays(single)


def _random_log(rng, n, string_ids):
    users = rng.integers(0, 40, n)
    items = rng.integers(0, 25, n)
    return pa.table(
        {
            "user": pa.array([f"u{u}" for u in users]) if string_ids else pa.array(users),
            "item": pa.array([f"i{i}" for i in items]) if string_ids else pa.array(items),
            "time": pa.array(rng.integers(0, 12, n)),  # many ties, a few exact duplicates
        }
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_logs_split_any_way_give_the_same_sequences(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 3000
    table = _random_log(rng, n, string_ids=seed % 2 == 1)
    fields = {
        "user_column": "user",
        "item_column": "item",
        "timestamp_column": "time",
        "min_user_interactions": 1 + seed,
        "drop_duplicates": seed >= 2,
        "drop_repeats": seed in (1, 2),
        "min_item_interactions": 100 * (seed == 3),
    }
    pq.write_table(table, tmp_path / "log.parquet")
    expected = _arrays(_read(str(tmp_path / "log.parquet"), **fields))
    # Consecutive ranges, in CSV and in Parquet with small row groups.
    cuts = [0, *sorted(rng.integers(0, n, 5).tolist()), n]
    for fmt in ("csv", "parquet"):
        root = _write_parts(tmp_path / f"ranges-{fmt}", table, cuts, fmt, row_group_size=100)
        assert _arrays(_read(root, **fields)) == expected, fmt
    # Hive partitions by user and by time, each keeping its rows' order: the rows that tie
    # (same user and time) stay in one part, in order. The key column stays in the files too.
    for key in ("user", "time"):
        codes = np.asarray(pc.cast(pc.dictionary_encode(table[key]).chunk(0).indices, pa.int64()))
        order = np.argsort(codes % 3, kind="stable")
        bounds = np.searchsorted((codes % 3)[order], [0, 1, 2, 3]).tolist()
        names = [f"{key}_bucket={b}/data.parquet" for b in range(3)]
        root = _write_parts(tmp_path / f"by-{key}", table.take(order), bounds, names=names)
        assert _arrays(_read(root, **fields)) == expected, key


def test_partition_values_are_columns(tmp_path):
    # A BigQuery-style export by day: the day only in the path, the order within a day by
    # file order; the user id only in the path of a second layout.
    rows = {"2026-11-30": [("u1", "a"), ("u2", "b")], "2026-11-29": [("u1", "c"), ("u1", "d")]}
    for day, pairs in rows.items():
        part = tmp_path / "by_day" / f"day={day}" / "000000000000.parquet"
        part.parent.mkdir(parents=True)
        users, items = zip(*pairs, strict=True)
        pq.write_table(pa.table({"user": list(users), "item": list(items)}), part)
    encoded = _read(
        str(tmp_path / "by_day"),
        user_column="user",
        item_column="item",
        timestamp_column="day",
        min_user_interactions=1,
    )
    assert _as_lists(encoded) == {"u1": ["c", "d", "a"], "u2": ["b"]}
    for user in (7, 12):
        part = tmp_path / "by_user" / f"user_id={user}" / "part-0.csv"
        part.parent.mkdir(parents=True)
        # A key that is also a column of the file: the path's value counts, as in Hive.
        part.write_text("item_id,ts,user_id\n5,2,99\n6,1,99\n")
    encoded = _read(str(tmp_path / "by_user"), timestamp_column="ts", min_user_interactions=1)
    assert _as_lists(encoded) == {7: [6, 5], 12: [6, 5]}
    assert encoded.user_ids.dtype == np.int64  # canonical integers in the paths: integer ids


def test_mixed_compression_across_parts(tmp_path):
    table = pacsv.read_csv(_write(tmp_path, "log.csv", LOG))
    expected = _arrays(_read(str(tmp_path / "log.csv"), min_user_interactions=3, **COLUMNS))
    root = tmp_path / "parquet"
    root.mkdir()
    for k, codec in enumerate(["snappy", "zstd", "gzip", "none"]):
        pq.write_table(table.slice(k * 2, 2), root / f"part-{k}.parquet", compression=codec)
    assert _arrays(_read(str(root), min_user_interactions=3, **COLUMNS)) == expected
    lines = LOG.splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    (csv_root / "part-0.csv").write_text(header + "".join(body[:2]))
    for k, (name, codec) in enumerate([("part-1.csv.gz", "gzip"), ("part-2.csv.zst", "zstd")]):
        _compressed(csv_root, name, header + "".join(body[2 + 2 * k : 4 + 2 * k]), codec)
    assert _arrays(_read(str(csv_root), min_user_interactions=3, **COLUMNS)) == expected


def test_gs_paths_go_through_epath(tmp_path, monkeypatch):
    # A local directory stands in for the bucket: every epath call on gs://bucket/... is sent
    # there, so the reader reaches the parts through etils.epath alone (not os or pyarrow's).
    from etils.epath import gpath
    from etils.epath import testing as epath_testing

    # mock_epath replaces the backends by prefix, which epath skips when TensorFlow is there.
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)

    local = str(tmp_path / "bucket")

    def to_local(path):
        return str(path).replace("gs://bucket", local)

    def to_gs(path):
        return str(path).replace(local, "gs://bucket")

    def walk(fn, top, **kwargs):
        for root, dirs, files in fn(to_local(top), **kwargs):
            yield to_gs(root), dirs, files

    table = pacsv.read_csv(_write(tmp_path, "log.csv", LOG))
    _write_parts(tmp_path / "bucket" / "events", table, [0, 3, 6], "parquet")
    _write_parts(tmp_path / "bucket" / "csv", table, [0, 3, 6], "csv")
    expected = _arrays(_read(str(tmp_path / "log.csv"), min_user_interactions=3, **COLUMNS))
    with epath_testing.mock_epath(
        open=lambda fn, path, mode: fn(to_local(path), mode),
        exists=lambda fn, path: fn(to_local(path)),
        isdir=lambda fn, path: fn(to_local(path)),
        glob=lambda fn, path: [to_gs(p) for p in fn(to_local(path))],
        stat=lambda fn, path: fn(to_local(path)),
        walk=walk,
    ):
        for path in ("gs://bucket/events", "gs://bucket/csv/part-*.csv"):
            encoded = _read(path, min_user_interactions=3, **COLUMNS)
            assert _arrays(encoded) == expected, path
        with pytest.raises(readers.DataFormatError, match=r"^gs://bucket/nothing: file not"):
            _read("gs://bucket/nothing", format="parquet", **COLUMNS)


def _one_to_three_lines(error, part):
    text = str(error)
    assert text.startswith(str(part)), text
    assert 1 <= len(text.splitlines()) <= 3, text


def test_bad_parts_are_named_in_a_short_error(tmp_path):
    table = pacsv.read_csv(_write(tmp_path, "log.csv", LOG))
    root = tmp_path / "export"
    _write_parts(root, table, [0, 2, 4, 6])
    # A part with another schema: the item column as integers...
    other = root / "part-00001.parquet"
    pq.write_table(table.slice(2, 2).set_column(1, "item", pa.array([1, 2])), other)
    with pytest.raises(readers.DataFormatError) as info:
        _read(str(root), **COLUMNS)
    _one_to_three_lines(info.value, other)
    assert "column 'item' is integer here but text in the first part, part-00000.parquet" in str(
        info.value
    )
    # ...or without the timestamp column.
    pq.write_table(table.slice(2, 2).drop_columns(["time"]), other)
    with pytest.raises(readers.DataFormatError, match=r"no column 'time' \(file.timestamp_col"):
        _read(str(root), **COLUMNS)
    # A corrupt part: not Parquet at all, or cut short.
    other.write_bytes(b"not parquet at all")
    with pytest.raises(readers.DataFormatError, match="cannot read as Parquet") as info:
        _read(str(root), **COLUMNS)
    _one_to_three_lines(info.value, other)
    pq.write_table(table.slice(2, 2), other)
    other.write_bytes(other.read_bytes()[:-30])
    with pytest.raises(readers.DataFormatError, match="cannot read as Parquet") as info:
        _read(str(root), **COLUMNS)
    _one_to_three_lines(info.value, other)
    # Empty: only bookkeeping files, or parts without rows.
    for part in root.iterdir():
        part.unlink()
    (root / "_SUCCESS").write_text("")
    with pytest.raises(readers.DataFormatError) as info:
        _read(str(root), **COLUMNS)
    _one_to_three_lines(info.value, root)
    pq.write_table(table.slice(0, 0), root / "part-0.parquet")
    with pytest.raises(readers.DataFormatError, match="no interactions in any of its 1 part"):
        _read(str(root), **COLUMNS)
    # A compressed CSV part cut short.
    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    (csv_root / "part-0.csv").write_text(LOG)
    cut = pathlib.Path(_compressed(csv_root, "part-1.csv.gz", LOG, "gzip"))
    cut.write_bytes(cut.read_bytes()[:40])
    with pytest.raises(readers.DataFormatError, match="cannot read") as info:
        _read(str(csv_root), **COLUMNS)
    _one_to_three_lines(info.value, cut)


def test_errors_in_a_part_name_the_part_and_its_row(tmp_path):
    table = pacsv.read_csv(_write(tmp_path, "log.csv", LOG))
    nulls = table.set_column(1, "item", pa.array(["a", "b", "c", None, "e", "f"]))
    root = _write_parts(tmp_path / "pq", nulls, [0, 2, 6], row_group_size=3)
    with pytest.raises(readers.DataFormatError) as info:
        _read(root, **COLUMNS)
    part = tmp_path / "pq" / "part-00001.parquet"
    assert str(info.value) == f"{part}: row group 0, row 1 (0-based), column 'item': missing id"
    csv_root = tmp_path / "csv"
    csv_root.mkdir()
    (csv_root / "part-0.csv").write_text(LOG)
    (csv_root / "part-1.csv").write_text(LOG.replace("bob,tt2,2020", "bob,tt2,20x20"))
    with pytest.raises(readers.DataFormatError) as info:
        _read(str(csv_root), **COLUMNS)
    assert info.value.path == str(csv_root / "part-1.csv") and info.value.line == 4
    assert "cannot parse '20x20-01-01T10:00:00' as a timestamp" in str(info.value)


def test_integers_then_numbers_across_parts_are_numbers(tmp_path):
    # The first part's timestamps are whole, the second's are not: one kind, numbers, as when
    # the two parts are one file.
    root = tmp_path / "parts"
    root.mkdir()
    (root / "part-0.csv").write_text("u,i,t\n1,a,3\n1,b,1\n")
    (root / "part-1.csv").write_text("u,i,t\n1,c,2.5\n1,d,1\n")
    one = _write(tmp_path, "one.csv", "u,i,t\n1,a,3\n1,b,1\n1,c,2.5\n1,d,1\n")
    fields = dict(user_column="u", item_column="i", timestamp_column="t", min_user_interactions=1)
    assert _as_lists(_read(str(root), **fields)) == {1: ["b", "d", "c", "a"]}
    assert _arrays(_read(str(root), **fields)) == _arrays(_read(one, **fields))


def test_duplicates_and_progress_name_the_parts(tmp_path, caplog, capsys, monkeypatch):
    root = tmp_path / "parts"
    root.mkdir()
    (root / "part-0.csv").write_text(LOG)
    (root / "part-1.csv").write_text(
        DUPLICATED.split("\n", 1)[0] + "\n" + "alice,tt1,2020-01-01T12:00:00,5\n"
    )
    monkeypatch.setattr(interactions, "_PROGRESS_EVERY_S", 0.0)
    with caplog.at_level("INFO"):
        _read(str(root), min_user_interactions=3, **COLUMNS)
    assert re.search(r"1 exact duplicate rows .*the first at line 2 of part-1\.csv", caplog.text)
    progress = capsys.readouterr().err.splitlines()
    assert any(
        re.search(r"pass 1 of 2, ids\): \[#+ *\] +100% 2/2 parts, 7 rows, [\d,]+ rows/s", line)
        for line in progress
    ), progress
    assert any("pass 2 of 2, interactions" in line for line in progress)


def test_paper_format_parts_follow_each_other(tmp_path):
    root = tmp_path / "paper"
    root.mkdir()
    (root / "part-0.txt").write_text("5 1\n6 9\n")
    (root / "part-1.txt").write_text("5 2\n6 8\n5 3\n")
    assert _as_lists(_read(str(root), min_user_interactions=1)) == {5: [1, 2, 3], 6: [9, 8]}


def test_integer_text_ids_become_text_at_any_later_block(tmp_path, monkeypatch):
    # Blocks of integers are counted as integers; a "007" in a later block makes the column
    # string ids from its first block on, a padded " 7" keeps it integers (as for one block).
    monkeypatch.setattr(interactions, "_CSV_BLOCK_BYTES", 1 << 10)
    rows = [(k % 50, k % 7) for k in range(1200)]
    for late, kind in (("007", object), (" 7", np.int64)):
        body = "".join(f"{u},{late if k == 1100 else i}\n" for k, (u, i) in enumerate(rows))
        encoded = _read(_write(tmp_path, "ids.csv", "user_id,item_id\n" + body))
        assert encoded.item_ids.dtype == kind and encoded.user_ids.dtype == np.int64
        expected = {}
        for k, (u, i) in enumerate(rows):
            item = late.strip() if k == 1100 else i
            expected.setdefault(u, []).append(str(item) if kind is object else int(item))
        assert _as_lists(encoded) == expected
