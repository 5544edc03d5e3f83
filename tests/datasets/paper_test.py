"""Tests for bert4rec_jax.datasets.paper: the paper's preprocessed files, offline, downloaded and
verified, and bad input refused."""

import hashlib
import logging
import zipfile

import pytest
import tensorflow_datasets as tfds
from helpers import BEAUTY_BLOB_ID, files_under, serve_directory

from bert4rec_jax.datasets import (
    load_corpus,
    paper,
    readers,
)


def test_paper_builder_offline(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "steam.txt").write_text("4 1\n4 2\n4 3\n9 7\n")
    builder = tfds.builder("bert4rec_paper/steam", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    examples = sorted(
        (int(e["user_id"]), e["items"].tolist())
        for e in tfds.as_numpy(builder.as_dataset(split="train"))
    )
    assert examples == [(4, [1, 2, 3]), (9, [7])]


def test_paper_ml20m_offline_as_zip_or_extracted(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "ml-20m.txt").write_text("2 5\n2 6\n2 7\n")
    extracted = load_corpus("ml-20m", data_dir=str(tmp_path / "a"), manual_dir=str(manual))
    with zipfile.ZipFile(manual / "ml-20m.zip", "w") as z:
        z.writestr("ml-20m.txt", "2 5\n2 6\n2 8\n")
    zipped = load_corpus("ml-20m", data_dir=str(tmp_path / "b"), manual_dir=str(manual))
    assert extracted.raw_item_ids.tolist() == [-1, 5, 6, 7]
    assert zipped.raw_item_ids.tolist() == [-1, 5, 6, 8]  # the zip is preferred when present


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, r"beauty\.txt: file not found"),
        ("", r"beauty\.txt: file is empty"),
        ("1 2\n1 3 4\n", r"beauty\.txt:2: expected 2 columns, found 3"),
        ("1 2\n1 b\n", r"beauty\.txt:2: non-integer value"),
        ("1 2\n2 3\n1 4\n", r"beauty\.txt:3: user 1 reappears after other users"),
        ("1 2\n1 3\n2 4\n", r"beauty\.txt: no evaluable user: all 2 users have fewer than 3"),
    ],
)
def test_bad_paper_input_fails_clearly_and_leaves_nothing(tmp_path, content, expected):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "README").write_text("a manual dir that lacks beauty.txt is not empty")
    if content is not None:
        (manual / "beauty.txt").write_text(content)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(readers.DataFormatError, match=expected) as info:
        load_corpus("beauty", data_dir=str(data), manual_dir=str(manual))
    assert str(manual / "beauty.txt") in str(info.value)
    assert files_under(data) == []


def test_beauty_downloads_verifies_and_prepares(tmp_path, shared_data, monkeypatch, caplog):
    data = tmp_path / "data"
    with serve_directory(shared_data) as base:
        monkeypatch.setenv(paper.BASE_URL_ENV, base)
        with caplog.at_level(logging.INFO):
            corpus = load_corpus("beauty", data_dir=str(data))
    assert (corpus.num_users, corpus.num_items, corpus.num_interactions) == (
        40_226,
        54_542,
        353_962,
    )
    assert f"Downloaded and verified {base}/beauty.txt" in caplog.text
    # The download directory is private to the call and is gone afterwards.
    assert not any("downloads" in f for f in files_under(data))


def test_corrupt_download_fails_with_checksum_error_and_leaves_nothing(
    tmp_path, shared_data, monkeypatch
):
    served = tmp_path / "served"
    served.mkdir()
    content = bytearray((shared_data / "beauty.txt").read_bytes())
    content[100] = ord("9") if content[100] != ord("9") else ord("8")
    (served / "beauty.txt").write_bytes(bytes(content))
    actual = hashlib.sha1(b"blob %d\0" % len(content) + bytes(content)).hexdigest()
    data = tmp_path / "data"
    data.mkdir()
    with serve_directory(served) as base:
        monkeypatch.setenv(paper.BASE_URL_ENV, base)
        with pytest.raises(readers.ChecksumError) as info:
            load_corpus("beauty", data_dir=str(data))
    message = str(info.value)
    assert "beauty.txt" in message and BEAUTY_BLOB_ID in message and actual in message
    assert files_under(data) == []
