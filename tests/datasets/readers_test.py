"""Tests of the raw-file readers: the paper's files and MovieLens ratings (no TFDS involved)."""

import zipfile

import numpy as np
import pytest
from helpers import BEAUTY_BLOB_ID, write_file

from bert4rec_jax.datasets import hashes, readers


def _as_lists(seqs: readers.Sequences):
    return {
        int(u): seqs.raw_items[seqs.offsets[k] : seqs.offsets[k + 1]].tolist()
        for k, u in enumerate(seqs.raw_user_ids)
    }


def test_paper_file_keeps_line_order_and_sorts_users(tmp_path):
    path = write_file(tmp_path, "toy.txt", "7 30\n7 10\n7 20\n2 5\n2 6\r\n2 99\n")
    seqs = readers.read_paper_file(path)
    assert seqs.raw_user_ids.tolist() == [2, 7]
    assert _as_lists(seqs) == {2: [5, 6, 99], 7: [30, 10, 20]}
    assert seqs.offsets.dtype == np.int64 and seqs.raw_items.dtype == np.int64


def test_paper_file_without_final_newline_and_tabs(tmp_path):
    path = write_file(tmp_path, "toy.txt", "1\t2\n1   3\n1 4")
    assert _as_lists(readers.read_paper_file(path)) == {1: [2, 3, 4]}


def test_blocks_are_stitched_at_line_boundaries(tmp_path, monkeypatch):
    # Tiny blocks force lines to straddle block ends; results and line numbers must not change.
    monkeypatch.setattr(readers, "_BLOCK_BYTES", 7)
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 41), 5)
    items = rng.integers(1, 100_000, size=len(users))
    text = "".join(f"{u} {i}\n" for u, i in zip(users, items, strict=True))
    seqs = readers.read_paper_file(write_file(tmp_path, "big.txt", text))
    assert seqs.raw_items.tolist() == items.tolist()
    bad = write_file(tmp_path, "bad.txt", text + "41 1 2\n")
    with pytest.raises(readers.DataFormatError, match=r"bad\.txt:201: expected 2 columns, found 3"):
        readers.read_paper_file(bad)
    # Blank lines are skipped, also when they straddle blocks, and line numbers stay physical.
    blank_first = write_file(tmp_path, "blank.txt", "\n" * 20 + text + "\n  \n" + "41 1 2\n")
    with pytest.raises(readers.DataFormatError, match=r"blank\.txt:223: expected 2 columns"):
        readers.read_paper_file(blank_first)
    blank_lines = write_file(tmp_path, "blanks_inside.txt", "\n" * 20 + text.replace("\n", "\n\n"))
    assert readers.read_paper_file(blank_lines).raw_items.tolist() == items.tolist()
    blank_only = write_file(tmp_path, "blanks.txt", "\n  \n" * 20)
    with pytest.raises(readers.DataFormatError, match=r"blanks\.txt: file is empty"):
        readers.read_paper_file(blank_only)


@pytest.mark.parametrize(
    "content, line, problem",
    [
        ("1 2\n1 3\n1 4 5\n", 3, "expected 2 columns, found 3"),
        ("1 2\n1\n", 2, "expected 2 columns, found 1"),
        ("1 2\n\n1 3 4\n", 3, "expected 2 columns, found 3"),
        ("\ufeff1 2\n1 \ufeff3\n", 2, "non-integer value (unexpected byte 0xef)"),
        ("1 2\n1 x3\n", 2, "non-integer value (unexpected character 'x')"),
        ("1 2\n1 3.5\n", 2, "non-integer value (unexpected character '.')"),
        ("1 2\n1 -3\n", 2, "non-integer value (unexpected character '-')"),
        ("1 2\n1 1234567890123456789\n", 2, "id longer than 18 digits"),
        ("1 2\n2 3\n1 4\n", 3, "user 1 reappears after other users"),
    ],
)
def test_paper_file_errors_name_file_line_and_problem(tmp_path, content, line, problem):
    path = write_file(tmp_path, "broken.txt", content)
    with pytest.raises(readers.DataFormatError) as info:
        readers.read_paper_file(path)
    err = info.value
    assert str(path) in str(err) and f"broken.txt:{line}:" in str(err)
    assert problem in str(err)
    assert (err.line, err.path) == (line, str(path))


def test_byte_order_mark_and_blank_lines_are_tolerated(tmp_path):
    # Editors and spreadsheet exports add a UTF-8 BOM and blank (or whitespace-only) lines.
    text = "\ufeff7 30\n\n7 10\r\n   \n\t\n7 20\n\n\n2 5\n2 6\n\n"
    seqs = readers.read_paper_file(write_file(tmp_path, "bom.txt", text))
    assert _as_lists(seqs) == {2: [5, 6], 7: [30, 10, 20]}
    # A BOM-only or blank-only file is still empty.
    with pytest.raises(readers.DataFormatError, match=r"bom_only\.txt: file is empty"):
        readers.read_paper_file(write_file(tmp_path, "bom_only.txt", "\ufeff\n \n"))
    # MovieLens 20M's CSV: the header is the first non-blank line, after a BOM.
    rows = [(u, i, f"{r}.5", t) for u, i, r, t in RATINGS]
    body = _ratings(rows, ",").replace("\n", "\n\n", 3)
    write_file(tmp_path, "ml-20m/ratings.csv", "\ufeff\n" + HEADER + body)
    assert _as_lists(readers.read_movielens_ratings(tmp_path, "20m")) == EXPECTED


def test_non_contiguous_user_names_both_runs(tmp_path):
    path = write_file(tmp_path, "p.txt", "5 1\n5 2\n6 1\n6 2\n5 3\n6 3\n")
    with pytest.raises(readers.DataFormatError, match=r"p\.txt:5: user 5 .*start at line 1"):
        readers.read_paper_file(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(readers.DataFormatError, match=r"nothere\.txt: file not found"):
        readers.read_paper_file(tmp_path / "nothere.txt")
    for content in ("", "\n\n  \n"):
        path = write_file(tmp_path, "empty.txt", content)
        with pytest.raises(readers.DataFormatError, match=r"empty\.txt: file is empty"):
            readers.read_paper_file(path)


def test_paper_zip_reads_the_single_text_member(tmp_path):
    archive = tmp_path / "ml-20m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ml-20m.txt", "3 1\n3 2\n1 9\n")
        z.writestr("__MACOSX/._ml-20m.txt", "junk")
    assert _as_lists(readers.read_paper_file(archive)) == {1: [9], 3: [1, 2]}
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("other.txt", "1 1\n")
    with pytest.raises(readers.DataFormatError, match="expected exactly one"):
        readers.read_paper_file(archive)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("data/ml-20m.txt", "3 1\n3 x\n")
    with pytest.raises(readers.DataFormatError, match=r"bad\.zip:data/ml-20m\.txt:2: non-integer"):
        readers.read_paper_file(bad)


def _ratings(rows, sep):
    return "".join(sep.join(str(v) for v in row) + "\n" for row in rows)


# User 1: six ratings, two at t=50 (items 40 and 4: the tie goes by item id).
# User 2: four ratings, so it is dropped.
RATINGS = [
    (1, 10, 5, 100),
    (2, 1, 3, 5),
    (1, 40, 4, 50),
    (1, 4, 3, 50),
    (2, 2, 3, 6),
    (1, 7, 1, 10),
    (1, 8, 2, 300),
    (2, 3, 3, 7),
    (1, 9, 2, 200),
    (2, 4, 3, 8),
]
EXPECTED = {1: [7, 4, 40, 10, 9, 8]}


def test_movielens_100k_extracted_folder(tmp_path):
    write_file(tmp_path, "ml-100k/u.data", _ratings(RATINGS, "\t"))
    assert _as_lists(readers.read_movielens_ratings(tmp_path, "100k")) == EXPECTED


def test_movielens_1m_zip(tmp_path):
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ml-1m/ratings.dat", _ratings(RATINGS, "::"))
    assert _as_lists(readers.read_movielens_ratings(archive, "1m")) == EXPECTED


HEADER = "userId,movieId,rating,timestamp\n"


def test_movielens_20m_csv_with_header_and_decimal_ratings(tmp_path):
    rows = [(u, i, f"{r}.5", t) for u, i, r, t in RATINGS]
    write_file(tmp_path, "ml-20m/ratings.csv", HEADER + _ratings(rows, ","))
    assert _as_lists(readers.read_movielens_ratings(tmp_path, "20m")) == EXPECTED
    rows[3] = (1, "4.5", "3.0", 50)
    write_file(tmp_path, "ml-20m/ratings.csv", HEADER + _ratings(rows, ","))
    with pytest.raises(readers.DataFormatError, match=r"ratings\.csv:5: non-integer id"):
        readers.read_movielens_ratings(tmp_path, "20m")


def test_movielens_errors(tmp_path):
    with pytest.raises(readers.DataFormatError, match=r"ml-100k/u\.data: file not found"):
        readers.read_movielens_ratings(tmp_path, "100k")
    write_file(tmp_path, "ml-100k/u.data", "1\t2\t3\t4\n1\t2\t3\n")
    with pytest.raises(readers.DataFormatError, match=r"u\.data:2: expected 4 columns, found 3"):
        readers.read_movielens_ratings(tmp_path, "100k")
    write_file(tmp_path, "ml-100k/u.data", _ratings(RATINGS[:4], "\t"))
    with pytest.raises(readers.DataFormatError, match="no user has at least 5 ratings"):
        readers.read_movielens_ratings(tmp_path, "100k")
    with pytest.raises(ValueError, match="variant"):
        readers.read_movielens_ratings(tmp_path, "25m")


def test_real_movielens_100k(shared_data):
    seqs = readers.read_movielens_ratings(shared_data, "100k")
    assert seqs.num_users == 943 and len(seqs.raw_items) == 100_000
    assert len(np.unique(seqs.raw_items)) == 1682


def test_real_beauty_and_its_blob_id(shared_data):
    assert hashes.git_blob_id(shared_data / "beauty.txt") == BEAUTY_BLOB_ID
    seqs = readers.read_paper_file(shared_data / "beauty.txt")
    assert (seqs.num_users, len(seqs.raw_items)) == (40_226, 353_962)
    assert len(np.unique(seqs.raw_items)) == 54_542
    assert seqs.lengths.min() == 5 and seqs.lengths.max() == 293


def test_sorted_by_user():
    seqs = readers.Sequences(
        np.array([9, 3, 5]), np.array([0, 2, 3, 6]), np.array([1, 2, 3, 4, 5, 6])
    ).sorted_by_user()
    assert _as_lists(seqs) == {3: [3], 5: [4, 5, 6], 9: [1, 2]}
    assert seqs.raw_user_ids.tolist() == [3, 5, 9]
