"""Tests for bert4rec_jax.datasets.file_options: your own file's options, checked and named."""

import pytest

from bert4rec_jax.datasets import (
    load_corpus,
    readers,
)


def test_file_config_mistakes_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"file\.path is empty"):
        load_corpus("file", data_dir=str(tmp_path))
    with pytest.raises(
        readers.DataFormatError, match=r"nowhere\.csv: file not found \(file\.path\)"
    ):
        load_corpus("file", data_dir=str(tmp_path), file={"path": str(tmp_path / "nowhere.csv")})
    with pytest.raises(ValueError, match=r"file\.format='xlsx': must be one of"):
        load_corpus("file", data_dir=str(tmp_path), file={"path": "x.csv", "format": "xlsx"})
    assert not (tmp_path / "bert4rec_corpus").exists()
