"""Tests for bert4rec_jax.datasets (the package): the data sets it names and `load_corpus` through
TFDS."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bert4rec_jax.datasets import (
    DATASETS,
    load_corpus,
    movielens,
    paper,
)


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
