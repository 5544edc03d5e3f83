"""Tests of reading your own interaction files (CSV, TSV, Parquet, paper format); no TFDS."""

import re

import numpy as np
import pyarrow as pa
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
