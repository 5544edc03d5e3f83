"""Your own data in (`dataset="file"`): through TFDS and the cache, edits noticed, bad input
refused without leftovers, and a custom CSV that trains end to end."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
from helpers import files_under

from bert4rec_jax import experiment, train_lib
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets import (
    corpus_cache_path,
    custom,
    file_options,
    load_corpus,
    load_prepared,
    loading,
    readers,
)
from configs import tiny

# A log with string ids and ISO-8601 times, rows in no order, a BOM and a blank line (as
# spreadsheet exports write them). By time: ann watches m-101, m-205, m-307, m-101, m-412 and
# m-523; bea m-205, m-307 and m-412 with two at the same time (they keep file order: m-307 first);
# cid m-101, m-523, m-205, m-307, m-412; dan only four times, fewer than 5: dropped.
LOG = """\ufeffuser,movie,watched_at,device
ann,m-307,2024-01-03T10:00:00,tv
bea,m-205,2024-02-01T08:00:00,phone
cid,m-101,2024-01-01T00:00:00,tv
ann,m-101,2024-01-01T09:00:00,tv
dan,m-101,2024-01-05T00:00:00,tv

bea,m-307,2024-02-02T08:00:00,tv
ann,m-205,2024-01-02T10:00:00,phone
cid,m-523,2024-01-02T00:00:00,tv
bea,m-412,2024-02-02T08:00:00,tv
dan,m-205,2024-01-06T00:00:00,tv
ann,m-101,2024-01-04T10:00:00,tv
cid,m-205,2024-01-03T00:00:00,tv
ann,m-412,2024-01-05T10:00:00,tv
dan,m-307,2024-01-07T00:00:00,tv
cid,m-307,2024-01-04T00:00:00,tv
ann,m-523,2024-01-06T10:00:00,tv
cid,m-412,2024-01-05T00:00:00,tv
dan,m-412,2024-01-08T00:00:00,tv
bea,m-101,2024-02-03T08:00:00,tv
bea,m-523,2024-02-04T08:00:00,tv
"""
FILE = {"user_column": "user", "item_column": "movie", "timestamp_column": "watched_at"}
# Written out by hand: raw ids sorted, dense ids 1..5 in that order, users sorted.
RAW_ITEMS = ["", "m-101", "m-205", "m-307", "m-412", "m-523"]
RAW_USERS = ["ann", "bea", "cid"]
DENSE = [
    [1, 2, 3, 1, 4, 5],  # ann
    [2, 3, 4, 1, 5],  # bea
    [1, 5, 2, 3, 4],  # cid
]


def _write_log(tmp_path, text=LOG, name="log.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _assert_expected(corpus):
    assert corpus.raw_item_ids.tolist() == RAW_ITEMS
    assert corpus.raw_user_ids.tolist() == RAW_USERS
    assert [corpus.sequence(u).tolist() for u in range(corpus.num_users)] == DENSE
    assert corpus.raw_item_ids.dtype == object and corpus.name == "file"


def test_custom_csv_goes_through_tfds_and_the_cache(tmp_path, monkeypatch):
    path = _write_log(tmp_path)
    data = tmp_path / "data"
    file = {"path": str(path), **FILE}
    corpus = load_corpus("file", data_dir=str(data), file=file)
    _assert_expected(corpus)
    # TFDS records (indices) with the vocabularies beside them, and the corpus cache.
    cache = corpus_cache_path("file", data_dir=str(data), file=file)
    assert cache.exists() and cache.name.startswith("custom_interactions-log-")
    options = file_options.FileOptions.from_mapping(file)
    builder = custom.CustomInteractions(config=custom.file_config(options), data_dir=str(data))
    assert builder.is_prepared() and (builder.data_path / custom.RAW_IDS_FILE).exists()
    assert builder.info.metadata["item_ids"].tolist() == RAW_ITEMS[1:]
    # One block of users (custom.blocks_of_users), ids as indices into the vocabularies.
    [block] = [
        {k: v.tolist() for k, v in e.items()}
        for e in tfds.as_numpy(builder.as_dataset(split="train"))
    ]
    # 2.1.0: the log's times beside the items, in seconds, for the temporal split.
    assert len(block.pop("timestamps")) == sum(block["lengths"])
    assert block == {
        "user_ids": [0, 1, 2],
        "lengths": [6, 5, 5],
        "items": [0, 1, 2, 0, 3, 4] + [1, 2, 3, 0, 4] + [0, 4, 1, 2, 3],
    }

    # Without the cache, the prepared records and their vocabularies are read back.
    cache.unlink()
    _assert_expected(load_corpus("file", data_dir=str(data), file=file))
    assert cache.exists()

    def no_tfds(*args, **kwargs):
        raise AssertionError("TFDS was invoked on a cache hit")

    monkeypatch.setattr(loading, "_prepare_with_tfds", no_tfds)
    _assert_expected(load_corpus("file", data_dir=str(data), file=file))


def test_parquet_gives_the_same_corpus(tmp_path):
    table = pacsv.read_csv(_write_log(tmp_path))
    path = tmp_path / "log.parquet"
    pq.write_table(table, path, row_group_size=7)
    _assert_expected(
        load_corpus("file", data_dir=str(tmp_path / "data"), file={"path": str(path), **FILE})
    )


def test_edited_file_is_noticed_even_with_same_size_and_mtime(tmp_path):
    path = _write_log(tmp_path)
    data = str(tmp_path / "data")
    file = {"path": str(path), **FILE}
    first = load_corpus("file", data_dir=data, file=file)
    key = corpus_cache_path("file", data_dir=data, file=file)
    stat = path.stat()
    # ann's last movie becomes m-999: one byte-for-byte same-length edit.
    path.write_bytes(path.read_bytes().replace(b"ann,m-523", b"ann,m-999"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load_corpus("file", data_dir=data, file=file)
    assert corpus_cache_path("file", data_dir=data, file=file) != key
    assert first.raw_item_ids.tolist() == RAW_ITEMS
    assert second.raw_item_ids.tolist() == RAW_ITEMS + ["m-999"]
    assert second.raw_item_ids[second.sequence(0)].tolist()[-1] == "m-999"
    # Options are part of the key too.
    third = load_corpus("file", data_dir=data, file={**file, "min_user_interactions": 4})
    assert third.num_users == 4


@pytest.mark.parametrize(
    "text, fields, expected",
    [
        (
            LOG,
            {"item_column": "film"},
            r"log\.csv:1: no column 'film' \(file\.item_column\); the "
            r"header's columns are: user, movie, watched_at, device",
        ),
        (
            LOG.replace("2024-01-06T10:00:00", "2024-01-06 kind of late"),
            {},
            r"log\.csv:18: column 'watched_at': cannot parse '2024-01-06 kind of late' as a "
            r"timestamp",
        ),
        ("", {}, r"log\.csv: file is empty"),
        (
            LOG,
            {"min_user_interactions": 7},
            r"log\.csv: no user left after filtering: no user has "
            r"at least 7 interactions",
        ),
        (
            "user,movie,watched_at\nu,a,1\nu,b,2\nv,a,3\n",
            {"min_user_interactions": 1},
            r"log\.csv: no evaluable user",
        ),
    ],
)
def test_bad_file_fails_clearly_and_leaves_nothing(tmp_path, text, fields, expected):
    path = _write_log(tmp_path, text)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(readers.DataFormatError, match=expected):
        load_corpus("file", data_dir=str(data), file={"path": str(path), **FILE, **fields})
    assert files_under(data) == []


def _export(tmp_path, name="export"):
    """LOG as a Spark-style export: hive partitions by device, parts, a _SUCCESS file."""
    table = pacsv.read_csv(_write_log(tmp_path))
    root = tmp_path / name
    for k, device in enumerate(["phone", "tv"]):
        rows = table.filter(pc.equal(table["device"], device)).drop_columns(["device"])
        for j, start in enumerate(range(0, rows.num_rows, 7)):
            part = root / f"device={device}" / f"part-{k:02d}{j:03d}.snappy.parquet"
            part.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(rows.slice(start, 7), part)
    (root / "_SUCCESS").write_text("")
    return root


def test_a_directory_of_parts_gives_the_same_corpus_and_key_rules(tmp_path):
    root = _export(tmp_path)
    data = str(tmp_path / "data")
    file = {"path": str(root), **FILE}
    # The same rows split by device: ties (bea's two at one time) are both tv, in order.
    _assert_expected(load_corpus("file", data_dir=data, file=file))
    key = corpus_cache_path("file", data_dir=data, file=file)
    assert key.name.startswith("custom_interactions-export-")
    # An identical copy elsewhere shares the key; an edited, added or renamed part does not.
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert corpus_cache_path("file", data_dir=data, file={**file, "path": str(copy)}).name == (
        key.name.replace("export", "copy")
    )
    part = next((copy / "device=tv").iterdir())
    stat = part.stat()
    part.write_bytes(part.read_bytes().replace(b"m-", b"n-"))  # same size, same time
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    keys = {corpus_cache_path("file", data_dir=data, file={**file, "path": str(copy)}).name}
    part.rename(part.with_name("part-99.parquet"))
    keys.add(corpus_cache_path("file", data_dir=data, file={**file, "path": str(copy)}).name)
    shutil.copy(part.with_name("part-99.parquet"), part)
    keys.add(corpus_cache_path("file", data_dir=data, file={**file, "path": str(copy)}).name)
    assert len(keys | {key.name.replace("export", "copy")}) == 4
    # Without TensorFlow, the index trusts the prepared corpus until a part changes.
    _assert_expected(load_prepared("file", data_dir=data, file=file))
    (root / "device=tv" / "part-new.parquet").write_bytes(part.read_bytes())
    assert load_prepared("file", data_dir=data, file=file) is None


@pytest.mark.parametrize("damage", ["empty", "schema", "corrupt"])
def test_a_bad_directory_fails_clearly_and_leaves_nothing(tmp_path, damage):
    root = _export(tmp_path)
    part = sorted((root / "device=tv").iterdir())[-1]
    if damage == "empty":
        shutil.rmtree(root / "device=tv")
        shutil.rmtree(root / "device=phone")
        part = root
    elif damage == "schema":
        table = pq.read_table(part)
        pq.write_table(table.set_column(2, "watched_at", pa.array(range(table.num_rows))), part)
    else:
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(readers.DataFormatError) as info:
        load_corpus("file", data_dir=str(data), file={"path": str(root), **FILE})
    assert str(info.value).startswith(f"{part}: ") and len(str(info.value).splitlines()) <= 3
    assert files_under(data) == []


@pytest.mark.slow
def test_custom_csv_trains_end_to_end(tmp_path):
    path = _write_log(tmp_path)
    config = tiny.get_config()
    config.dataset = "file"
    config.data_dir = str(tmp_path / "data")
    config.file.path = str(path)
    config.file.user_column = "user"
    config.file.item_column = "movie"
    config.file.timestamp_column = "watched_at"
    config.model.max_len = 8
    config.input.max_predictions = 3
    config.input.sliding_step = 4
    config.batch_size = 8
    config.num_train_steps = 4
    config.warmup_steps = 1
    config.log_every_steps = 2
    config.checkpoint_every_steps = 0
    config.eval.every_steps = 2
    config.eval.batch_size = 8
    config.eval.item_chunk = 8
    config.eval.num_negatives = 3  # only 5 items: 100 negatives cannot be drawn
    config.eval.protocols = ("full",)
    config.eval.metric = "full/ndcg@10"
    _assert_expected(experiment.load_data(RunConfig.from_config_dict(config).data))
    results = train_lib.train_and_evaluate(config, str(tmp_path / "work"))
    assert results["num_users"] == 3
    assert all(np.isfinite(v) for v in results.values())
    assert 0.0 < results["full/hr@5"] <= 1.0
