"""Tests of the TFDS builders and `load_corpus`: cache, errors, cleanup, the download path."""

import contextlib
import functools
import hashlib
import http.server
import logging
import os
import socket
import threading
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bert4rec_jax.datasets import (
    DATASETS,
    corpus_cache_path,
    hashes,
    load_corpus,
    loading,
    movielens,
    paper,
    prepared,
    readers,
)

BEAUTY_BLOB_ID = "16718a33ebdb33504f257421b18ae8bf3ddfe327"
SMALL = {"num_users": 50, "num_items": 40, "seed": 0}


def _files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def _serve(directory):
    """An HTTP server on 127.0.0.1 (ephemeral port) serving `directory`; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            del args

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_dataset_names():
    assert DATASETS == (
        "synthetic",
        "beauty",
        "steam",
        "ml-1m",
        "ml-20m",
        "ml-100k-raw",
        "ml-1m-raw",
        "ml-20m-raw",
        "file",
    )
    with pytest.raises(ValueError, match="unknown dataset 'beuty'.*synthetic, beauty, steam"):
        load_corpus("beuty")
    with pytest.raises(ValueError, match=r"unknown synthetic\.\* fields \['users'\]"):
        load_corpus("synthetic", synthetic={"users": 10})


def test_builders_work_through_tfds_load(tmp_path):
    # The registered builders and the schema: one example per user, raw ids.
    assert {"bert4rec_paper", "movielens_sequences", "synthetic_sequences"} <= set(
        tfds.list_builders(with_community_datasets=False)
    )
    assert set(paper.Bert4recPaper.builder_configs) == {"beauty", "steam", "ml-1m", "ml-20m"}
    assert set(movielens.MovielensSequences.builder_configs) == {"100k", "1m", "20m"}
    ds = tfds.load("synthetic_sequences", split="train", data_dir=str(tmp_path))
    examples = list(tfds.as_numpy(ds))
    assert len(examples) == 2000
    assert examples[0]["user_id"].dtype == np.int64 and examples[0]["items"].dtype == np.int64
    assert all(5 <= len(e["items"]) <= 50 for e in examples)


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


def test_second_load_hits_the_cache(tmp_path, monkeypatch, caplog):
    data_dir = str(tmp_path)
    cache = corpus_cache_path("synthetic", data_dir=data_dir, synthetic=SMALL)
    assert not cache.exists()
    first = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL)
    assert cache.exists() and cache.parent.parent.name == "bert4rec_corpus"

    def no_tfds(*args, **kwargs):
        raise AssertionError("TFDS was invoked on a cache hit")

    monkeypatch.setattr(loading, "_prepare_with_tfds", no_tfds)
    with caplog.at_level(logging.INFO):
        second = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL)
    assert "Corpus cache hit for synthetic" in caplog.text
    for field in ("offsets", "items", "raw_item_ids", "raw_user_ids"):
        assert np.array_equal(getattr(first, field), getattr(second, field))
    assert second.name == "synthetic"


def test_unreadable_cache_is_rebuilt(tmp_path):
    data_dir = str(tmp_path)
    cache = corpus_cache_path("synthetic", data_dir=data_dir, synthetic=SMALL)
    first = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL)
    cache.write_bytes(b"not an npz")
    again = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL)
    assert np.array_equal(first.items, again.items)
    assert prepared.read_cache(cache) is not None


def test_failed_cache_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_savez(f, **arrays):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(loading.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        load_corpus("synthetic", data_dir=str(tmp_path), synthetic=SMALL)
    assert not (tmp_path / "bert4rec_corpus").exists()


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
    assert _files_under(data) == []


def test_bad_movielens_input_fails_clearly_and_leaves_nothing(tmp_path):
    manual = tmp_path / "manual"
    (manual / "ml-100k").mkdir(parents=True)
    (manual / "ml-100k" / "u.data").write_text("1\t2\t5\t100\n1\tx\t5\t101\n")
    data = tmp_path / "data"
    with pytest.raises(readers.DataFormatError, match=r"u\.data:2: non-integer"):
        load_corpus("ml-100k-raw", data_dir=str(data), manual_dir=str(manual))
    assert not data.exists() or _files_under(data) == []


def test_missing_manual_dir(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="manual_dir .*nowhere.* does not exist or is empty"
    ):
        load_corpus("beauty", data_dir=str(tmp_path), manual_dir=str(tmp_path / "nowhere"))


def test_beauty_downloads_verifies_and_prepares(tmp_path, shared_data, monkeypatch, caplog):
    data = tmp_path / "data"
    with _serve(shared_data) as base:
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
    assert not any("downloads" in f for f in _files_under(data))


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
    with _serve(served) as base:
        monkeypatch.setenv(paper.BASE_URL_ENV, base)
        with pytest.raises(readers.ChecksumError) as info:
            load_corpus("beauty", data_dir=str(data))
    message = str(info.value)
    assert "beauty.txt" in message and BEAUTY_BLOB_ID in message and actual in message
    assert _files_under(data) == []


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
    with _serve(served) as base:
        monkeypatch.setenv(movielens.BASE_URL_ENV, base)
        with pytest.raises(readers.ChecksumError, match=r"ml-100k\.zip: expected size 4924029"):
            load_corpus("ml-100k-raw", data_dir=str(data))
        assert _files_under(data) == []

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
    assert _files_under(data) == []


def test_http_error_fails_fast(tmp_path, monkeypatch):
    empty = tmp_path / "served"
    empty.mkdir()
    with _serve(empty) as base:
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
