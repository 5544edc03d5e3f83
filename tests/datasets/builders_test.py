"""Tests for bert4rec_jax.datasets.builders: what every builder shares: the packaged checksums,
offline copies, downloads that fail fast."""

import os
import socket

import pytest
import tensorflow_datasets as tfds
from helpers import files_under, serve_directory

from bert4rec_jax.datasets import (
    corpus_cache_path,
    load_corpus,
    movielens,
    paper,
    readers,
)


def test_missing_manual_dir(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="manual_dir .*nowhere.* does not exist or is empty"
    ):
        load_corpus("beauty", data_dir=str(tmp_path), manual_dir=str(tmp_path / "nowhere"))


def test_checksums_file_is_packaged():
    path = os.path.join(os.path.dirname(paper.__file__), "checksums.tsv")
    infos = tfds.download.checksums.load_url_infos(path)
    assert infos[f"{movielens.DEFAULT_BASE_URL}/ml-20m.zip"].size == 198_702_078
    assert movielens.MovielensSequences.url_infos == infos


# ---- Offline: an unreachable source fails at once -----------------------------------------------


def _closed_port() -> int:
    """A localhost port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "dataset, env, filename",
    [
        ("steam", paper.BASE_URL_ENV, "steam.txt"),
        ("ml-100k-raw", movielens.BASE_URL_ENV, "ml-100k.zip"),
    ],
)
def test_unreachable_source_fails_fast_with_what_to_do(
    tmp_path, monkeypatch, dataset, env, filename
):
    # TFDS alone retries a refused connection with back-off for minutes; this test would hang
    # that long if the reachability check were gone.
    base = f"http://127.0.0.1:{_closed_port()}/mirror"
    monkeypatch.setenv(env, base)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(readers.SourceUnavailableError) as info:
        load_corpus(dataset, data_dir=str(data))
    message = str(info.value)
    assert f"cannot download {base}/{filename} (" in message
    assert "refused" in message.lower()
    assert f"The {dataset!r} data set needs {filename}." in message
    assert "--config.manual_dir=<that folder>" in message and env in message
    assert info.value.url == f"{base}/{filename}" and info.value.needed_file == filename
    assert files_under(data) == []


def test_http_error_fails_fast(tmp_path, monkeypatch):
    empty = tmp_path / "served"
    empty.mkdir()
    with serve_directory(empty) as base:
        monkeypatch.setenv(paper.BASE_URL_ENV, base)
        with pytest.raises(readers.SourceUnavailableError, match=r"beauty\.txt \(HTTP 404"):
            load_corpus("beauty", data_dir=str(tmp_path / "data"))


# ---- Manual copies are keyed by their content ---------------------------------------------------


def _replace_keeping_size_and_mtime(path, old: bytes, new: bytes):
    """Edits a file in place without changing its size or modification time."""
    assert len(old) == len(new)
    stat = path.stat()
    content = path.read_bytes()
    assert old in content
    path.write_bytes(content.replace(old, new, 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_replaced_manual_copy_is_noticed(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "beauty.txt").write_text("1 10\n1 11\n1 12\n2 10\n2 13\n2 14\n")
    data = str(tmp_path / "data")
    first = load_corpus("beauty", data_dir=data, manual_dir=str(manual))
    path = corpus_cache_path("beauty", data_dir=data, manual_dir=str(manual))
    assert path.exists() and "bert4rec_paper-beauty-manual-" in path.name
    _replace_keeping_size_and_mtime(manual / "beauty.txt", b"2 14", b"2 15")
    second = load_corpus("beauty", data_dir=data, manual_dir=str(manual))
    assert first.raw_item_ids.tolist() == [-1, 10, 11, 12, 13, 14]
    assert second.raw_item_ids.tolist() == [-1, 10, 11, 12, 13, 15]
    assert corpus_cache_path("beauty", data_dir=data, manual_dir=str(manual)) != path
