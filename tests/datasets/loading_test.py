"""Tests for bert4rec_jax.datasets.loading: preparing through TFDS into the corpus cache, hits,
rebuilds and failed writes."""

import logging

import numpy as np
import pytest
from helpers import SMALL_SYNTHETIC

from bert4rec_jax.datasets import (
    corpus_cache_path,
    load_corpus,
    loading,
    prepared,
)


def test_second_load_hits_the_cache(tmp_path, monkeypatch, caplog):
    data_dir = str(tmp_path)
    cache = corpus_cache_path("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC)
    assert not cache.exists()
    first = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC)
    assert cache.exists() and cache.parent.parent.name == "bert4rec_corpus"

    def no_tfds(*args, **kwargs):
        raise AssertionError("TFDS was invoked on a cache hit")

    monkeypatch.setattr(loading, "_prepare_with_tfds", no_tfds)
    with caplog.at_level(logging.INFO):
        second = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC)
    assert "Corpus cache hit for synthetic" in caplog.text
    for field in ("offsets", "items", "raw_item_ids", "raw_user_ids"):
        assert np.array_equal(getattr(first, field), getattr(second, field))
    assert second.name == "synthetic"


def test_unreadable_cache_is_rebuilt(tmp_path):
    data_dir = str(tmp_path)
    cache = corpus_cache_path("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC)
    first = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC)
    cache.write_bytes(b"not an npz")
    again = load_corpus("synthetic", data_dir=data_dir, synthetic=SMALL_SYNTHETIC)
    assert np.array_equal(first.items, again.items)
    assert prepared.read_cache(cache) is not None


def test_failed_cache_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_savez(f, **arrays):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(loading.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        load_corpus("synthetic", data_dir=str(tmp_path), synthetic=SMALL_SYNTHETIC)
    assert not (tmp_path / "bert4rec_corpus").exists()
