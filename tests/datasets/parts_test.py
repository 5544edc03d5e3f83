"""Tests of finding a log's part files: directories, globs, hive partitions, bookkeeping files."""

import pytest

from bert4rec_jax.datasets import file_options, parts, readers


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_a_directory_lists_its_parts_in_path_order_without_bookkeeping(tmp_path):
    # As Spark writes a partitioned table: partitions, _SUCCESS, .crc files, a _temporary dir.
    _touch(
        tmp_path,
        "date=2026-11-30/part-00001.parquet",
        "date=2026-11-29/part-00010.parquet",
        "date=2026-11-29/part-00002.parquet",
        "date=2026-11-30/.part-00001.parquet.crc",
        "_temporary/0/part-00003.parquet",
        "_SUCCESS",
        "city=S%C3%A3o%20Paulo/day=__HIVE_DEFAULT_PARTITION__/part-0.parquet",
    )
    found = parts.list_parts(str(tmp_path))
    assert [p.relative for p in found] == [
        "city=S%C3%A3o%20Paulo/day=__HIVE_DEFAULT_PARTITION__/part-0.parquet",
        "date=2026-11-29/part-00002.parquet",
        "date=2026-11-29/part-00010.parquet",
        "date=2026-11-30/part-00001.parquet",
    ]
    # Values unquoted as Hive escapes them; Hive's null partition is None.
    assert found[0].partition == {"city": "São Paulo", "day": None}
    assert found[1].partition == {"date": "2026-11-29"}
    assert found[1].name == str(tmp_path / "date=2026-11-29/part-00002.parquet")
    assert file_options.format_of_parts(found) == "parquet"


def test_a_glob_and_a_single_file(tmp_path):
    _touch(tmp_path, "a/part-1.csv", "a/part-2.csv.gz", "a/notes.txt", "b/part-3.csv")
    found = parts.list_parts(str(tmp_path / "a" / "part-*"))
    assert [p.relative for p in found] == ["part-1.csv", "part-2.csv.gz"]
    found = parts.list_parts(str(tmp_path / "*" / "part-*.csv"))
    assert [p.relative for p in found] == ["a/part-1.csv", "b/part-3.csv"]
    [single] = parts.list_parts(str(tmp_path / "a" / "notes.txt"))
    assert single.relative == "" and single.name == str(tmp_path / "a" / "notes.txt")


def test_nothing_to_read_is_one_line_naming_the_path(tmp_path):
    empty = tmp_path / "export"
    empty.mkdir()
    _touch(empty, "_SUCCESS")
    for path, problem in [
        (empty, "no part files in this directory (1 skipped: names starting with _ or .)"),
        (tmp_path / "nowhere", "file not found"),
        (tmp_path / "*.parquet", "no file matches the glob"),
        (tmp_path / "**" / "*.parquet", "a glob cannot hold ** (etils.epath refuses it)"),
    ]:
        with pytest.raises(readers.DataFormatError) as info:
            parts.list_parts(str(path))
        assert str(info.value).startswith(f"{path}: {problem}")
        assert len(str(info.value).splitlines()) == 1


def test_parts_must_agree_on_their_format(tmp_path):
    _touch(tmp_path, "part-1.parquet", "part-2.csv", "part-3")
    with pytest.raises(readers.DataFormatError, match=r"part-2\.csv: this part's name says csv"):
        file_options.format_of_parts(parts.list_parts(str(tmp_path)))
    (tmp_path / "part-2.csv").unlink()
    with pytest.raises(readers.DataFormatError, match=r"part-3: cannot tell this part's format"):
        file_options.FileOptions.from_mapping({"path": str(tmp_path)})
    # Named by file.format, every part is read as that format.
    options = file_options.FileOptions.from_mapping({"path": str(tmp_path), "format": "parquet"})
    assert options.resolved_format == "parquet"
