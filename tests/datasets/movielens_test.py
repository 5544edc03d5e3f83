"""Tests for bert4rec_jax.datasets.movielens: GroupLens ratings offline (zip or folder), downloaded
and verified by sha256, and bad input refused."""

import zipfile

import pytest
import tensorflow_datasets as tfds
from helpers import files_under, serve_directory

from bert4rec_jax.datasets import (
    hashes,
    load_corpus,
    movielens,
    readers,
)


def test_bad_movielens_input_fails_clearly_and_leaves_nothing(tmp_path):
    manual = tmp_path / "manual"
    (manual / "ml-100k").mkdir(parents=True)
    (manual / "ml-100k" / "u.data").write_text("1\t2\t5\t100\n1\tx\t5\t101\n")
    data = tmp_path / "data"
    with pytest.raises(readers.DataFormatError, match=r"u\.data:2: non-integer"):
        load_corpus("ml-100k-raw", data_dir=str(data), manual_dir=str(manual))
    assert not data.exists() or files_under(data) == []


def _ml100k_zip(tmp_path, shared_data):
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(shared_data / "ml-100k" / "u.data", "ml-100k/u.data")
    return served, archive


def test_movielens_download_verifies_sha256(tmp_path, shared_data, monkeypatch):
    # We have no official ml-100k.zip here: serve a re-zipped u.data, which must be rejected
    # against the registered sha256, then accepted once its own checksum is registered.
    served, archive = _ml100k_zip(tmp_path, shared_data)
    data = tmp_path / "data"
    data.mkdir()
    with serve_directory(served) as base:
        monkeypatch.setenv(movielens.BASE_URL_ENV, base)
        with pytest.raises(readers.ChecksumError, match=r"ml-100k\.zip: expected size 4924029"):
            load_corpus("ml-100k-raw", data_dir=str(data))
        assert files_under(data) == []

        url = f"{movielens.DEFAULT_BASE_URL}/ml-100k.zip"
        info = tfds.download.checksums.UrlInfo(
            size=archive.stat().st_size,
            checksum=hashes.sha256_file(archive),
            filename="ml-100k.zip",
        )
        monkeypatch.setattr(movielens.MovielensSequences, "url_infos", {url: info})
        corpus = load_corpus("ml-100k-raw", data_dir=str(data))
    assert (corpus.num_users, corpus.num_items, corpus.num_interactions) == (943, 1682, 100_000)


def test_movielens_manual_zip(tmp_path, shared_data):
    served, _ = _ml100k_zip(tmp_path, shared_data)
    corpus = load_corpus("ml-100k-raw", data_dir=str(tmp_path / "data"), manual_dir=str(served))
    assert corpus.num_users == 943
